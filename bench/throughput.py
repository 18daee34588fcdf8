"""Throughput and CPU per request: runner against a bare litellm loop and the raw aiohttp floor.

    .venv/bin/python -m bench.throughput [--rows 2000] [--repeat 3] [--concurrency 64 256] [--latency-ms 0 50]

For each concurrency and server latency, the same rows go through three clients, each in its own
process, in an order that rotates from one repeat to the next: runner (the CLI, journal and
manifest included), the bare ``asyncio.Semaphore`` + ``litellm.acompletion`` loop (bench/bare.py),
and raw aiohttp POSTs (bench/floor.py). The fake provider runs in its own process and times the
window from a client's first request to its last answer; throughput is answers / window. CPU per
request is the client process's CPU (user + system, every thread) less the median CPU of a child
that only imports what it imports (litellm: about 3 s), over the rows. It is not taken inside the
window alone: a client prepares many calls before the first one reaches the server (at
concurrency 256, a large share), so that would flatter whoever prepares most ahead. Runner's own
start-up (job, fingerprint, journal scan) and shut-down (final manifest) count against it.
Ratios are paired per repeat.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from bench.common import (
    PY,
    Server,
    bare_command,
    child,
    floor_command,
    machine,
    runner_command,
    server,
    spread,
    tickets,
    write_rows,
)

IMPORT = "from runner.provider.setup import configure; configure(); import runner.provider.provider"
CLIENTS = ("runner", "bare", "floor")
IMPORTS = {
    "runner": IMPORT,  # litellm; runner's own modules add nothing measurable
    "bare": IMPORT,
    "floor": "import aiohttp, orjson, runner.job.definition",
}


def once(srv: Server, command: list[str], cwd: Path) -> tuple[float, float, float]:
    """Requests/s in the window, the process's CPU seconds, and the share of one core it used in the window."""
    srv.reset()
    usage = child(command, cwd=cwd)
    window = srv.window()
    if window.answered != srv.stats()["total"]:
        raise SystemExit("the server answered fewer requests than it was sent")
    return window.answered / window.seconds, usage.cpu, usage.cpu_between(window) / window.seconds


def import_cpu(samples: dict[str, list[float]]) -> None:
    """One more sample of each client's import-only CPU."""
    for code in sorted(set(IMPORTS.values())):
        samples.setdefault(code, []).append(child([PY, "-c", code]).cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--latency-ms", type=float, nargs="+", default=[0.0, 50.0])
    parser.add_argument("--quick", action="store_true", help="1000 rows, one repeat")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.repeat = 1000, 1
    print(f"bench.throughput, {args.rows} rows, median of {args.repeat} (min–max); {machine()}", flush=True)
    ceiling: dict[str, float] = {}
    imports: dict[str, list[float]] = {}
    for _ in range(2):
        import_cpu(imports)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        path = write_rows(work / "in.jsonl", tickets(args.rows))
        for latency in args.latency_ms:
            with server(latency_ms=latency) as srv:
                for concurrency in args.concurrency:
                    got: dict[str, list[tuple[float, float, float]]] = {c: [] for c in CLIENTS}
                    for attempt in range(args.repeat):
                        commands = {
                            "runner": runner_command(path, srv.url, concurrency, "--run-id", f"c{concurrency}-"
                                                     f"l{latency:.0f}-{attempt}"),
                            "bare": bare_command(path, srv.url, concurrency),
                            "floor": floor_command(path, srv.url, concurrency),
                        }  # fmt: skip
                        shift = attempt % len(CLIENTS)
                        for who in CLIENTS[shift:] + CLIENTS[:shift]:
                            got[who].append(once(srv, commands[who], work))
                        import_cpu(imports)
                    base = {who: statistics.median(imports[IMPORTS[who]]) for who in CLIENTS}
                    got = {
                        who: [(rate, (cpu - base[who]) / args.rows * 1000, busy) for rate, cpu, busy in runs]
                        for who, runs in got.items()
                    }
                    print(f"concurrency {concurrency}, server latency {latency:.0f} ms:")
                    for who in CLIENTS:
                        rates, cpus, busy = zip(*got[who], strict=True)
                        print(f"  {who:<7} {spread(rates, '{:.0f}')} requests/s; CPU {spread(cpus)} ms/request; "
                              f"client busy {spread([b * 100 for b in busy], '{:.0f}')}% of a core")  # fmt: skip
                    cpu_ratio = [r[1] / b[1] for r, b in zip(got["runner"], got["bare"], strict=True)]
                    rate_ratio = [r[0] / b[0] for r, b in zip(got["runner"], got["bare"], strict=True)]
                    print(f"  runner / bare: CPU per request {spread(cpu_ratio)} (target <= 1.25: "
                          f"{'met' if statistics.median(cpu_ratio) <= 1.25 else 'MISSED'}), "
                          f"throughput {spread(rate_ratio)}", flush=True)  # fmt: skip
                    if latency == 0:
                        ceiling[f"concurrency {concurrency}"] = statistics.median(r[0] for r in got["runner"])
                        window = {who: statistics.median(b / r * 1000 for r, _, b in got[who]) for who in CLIENTS}
                        print(f"  CPU per request while answering (client busy / rate): runner {window['runner']:.2f} "
                              f"ms, bare litellm loop {window['bare']:.2f} ms, raw aiohttp + orjson "
                              f"{window['floor']:.2f} ms: runner's own on top of the raw loop "
                              f"{window['runner'] - window['floor']:.2f} ms")  # fmt: skip
    if ceiling:
        best = max(ceiling.values())
        print(f"runner's ceiling: {best:.0f} requests/s at server latency 0 "
              f"({', '.join(f'{k}: {v:.0f}' for k, v in ceiling.items())}); one process, one event loop: "
              "it is bound by the client's CPU (see 'client busy') or, on a small machine, "
              "by the bench server beside it")  # fmt: skip


if __name__ == "__main__":
    main()
