"""Ray workers (``--workers N``): throughput, the coordinator's own cost per row, flat latency, start-up.

    .venv/bin/python -m bench.ray [--repeat 3] [--rows 3000] [--quick] [--only throughput coordinator flat]

- throughput: the CLI with ``--workers 1`` (in-process) and ``--workers 2`` side by side against the
  fake provider at zero latency (bench.server, its own process), calls/s counted at the server over
  the window from the first request to the last answer, so start-up is not counted. The CPU of the
  coordinator (the CLI process) and of the workers (the ``ray::Worker`` processes, sampled from
  /proc) inside the window, per row. Start-up: process start to the server's first request; memory:
  the workers' peak resident set. Beside them, the reference: two separate single-process runs, one
  per half of the input, at the same time (what any two processes reach on this machine).
- coordinator: the coordinator's own CPU per row (reading, dispatch, leases, journal, manifest) with
  workers that answer at once (``bench.instant``: no HTTP, no litellm call), from two run sizes in
  one process each (the difference cancels start-up), and what that predicts for N workers.
- flat: concurrency 256, every request exactly 2 s, ``--workers 1`` and ``--workers 2``: efficiency =
  ideal / span, ideal = ceil(rows / 256) x 2 s, span from the server's first arrival to its last answer.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.common import PY, ROOT, Server, Usage, Window, child, machine, runner_command, server, spread, write_rows
from bench.common import tickets as bench_tickets
from runner.executors.ray_cluster import _children

TICK = os.sysconf("SC_CLK_TCK")


class Workers:
    """Samples the CPU and resident memory of the ``ray::Worker`` processes under the run whose command
    line has ``marker`` (its run id), in a thread, every ``every`` seconds."""

    def __init__(self, marker: str, every: float = 0.1) -> None:
        self.marker, self.every = marker.encode(), every
        self.samples: list[tuple[float, float]] = []  # (monotonic, CPU seconds of every worker so far)
        self.peak_rss_mib: dict[int, float] = {}
        self._cpu: dict[int, float] = {}
        self._stop = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        workers: list[int] = []
        coordinator = 0
        while not self._stop.wait(self.every):
            if not coordinator:  # scanning /proc is not free: only until the processes are found
                procs = [p for p in os.listdir("/proc") if p.isdigit()]
                coordinator = min((int(p) for p in procs if self.marker in _read(f"/proc/{p}/cmdline")), default=0)
            if coordinator and len(workers) < 2:
                workers = [p for p in _children(coordinator) if b"ray::Worker" in _read(f"/proc/{p}/cmdline")]
            for pid in workers:
                stat = _read(f"/proc/{pid}/stat")
                if stat:
                    fields = stat[stat.rindex(b")") + 2 :].split()
                    self._cpu[pid] = (int(fields[11]) + int(fields[12])) / TICK
                for line in _read(f"/proc/{pid}/status").splitlines():
                    if line.startswith(b"VmRSS:"):
                        rss = int(line.split()[1]) / 1024
                        self.peak_rss_mib[pid] = max(self.peak_rss_mib.get(pid, 0.0), rss)
            self.samples.append((time.monotonic(), sum(self._cpu.values())))

    def cpu_between(self, window: Window) -> float:
        usage = Usage(0.0, self.samples[-1][1] if self.samples else 0.0, 0.0, self.samples)
        return usage.cpu_between(window)


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def cli_run(srv: Server, path: Path, work: Path, workers: int, concurrency: int, run_id: str) -> dict[str, float]:
    """One CLI run; what the server and the samplers saw."""
    srv.reset()
    marker = f"bench-ray-{run_id}-{time.monotonic_ns()}"
    sampler = Workers(marker)
    command = runner_command(path, srv.url, concurrency, "--run-id", marker, "--workers", str(workers))
    started = time.monotonic()
    try:
        usage = child(command, cwd=work)
    finally:
        sampler.stop()
    window = srv.window()
    if window.answered != srv.stats()["total"]:
        raise SystemExit("the server answered fewer requests than it was sent")
    rows = window.answered
    return {
        "rate": rows / window.seconds,
        "span": window.seconds,
        "startup": window.first - started,
        "coordinator_ms": 1000 * usage.cpu_between(window) / rows,
        "workers_ms": 1000 * sampler.cpu_between(window) / rows,
        "coordinator_busy": usage.cpu_between(window) / window.seconds,
        "worker_rss": statistics.fmean(sampler.peak_rss_mib.values()) if sampler.peak_rss_mib else 0.0,
        "coordinator_rss": usage.max_rss_mib,
    }


def pair_run(srv: Server, halves: list[Path], work: Path, concurrency: int, run_id: str) -> dict[str, float]:
    """Two independent single-process runs, one per half of the input, at the same time: what any two
    processes reach on this machine beside the server (the reference for ``--workers 2``)."""
    srv.reset()
    usage: list[Usage] = []

    def one(half: Path) -> None:
        usage.append(child(runner_command(half, srv.url, concurrency, "--run-id", f"{run_id}-{half.stem}"), cwd=work))

    threads = [threading.Thread(target=one, args=(half,)) for half in halves]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    window = srv.window()
    if len(usage) != 2 or window.answered != srv.stats()["total"]:
        raise SystemExit("a run of the pair failed, or the server answered fewer requests than it was sent")
    cpu = sum(u.cpu_between(window) for u in usage)
    return {"rate": window.answered / window.seconds, "cpu_ms": 1000 * cpu / window.answered}


def throughput(args: argparse.Namespace, work: Path) -> None:
    rows = bench_tickets(args.rows)
    path = write_rows(work / "tp.jsonl", rows)
    halves = [write_rows(work / f"half{i}.jsonl", rows[i::2]) for i in (0, 1)]
    got: dict[int, list[dict[str, float]]] = {1: [], 2: []}
    pair: list[dict[str, float]] = []
    with server(latency_ms=0) as srv:
        for attempt in range(args.repeat):
            for workers in (1, 2) if attempt % 2 == 0 else (2, 1):
                got[workers].append(cli_run(srv, path, work, workers, 64, f"tp{workers}-{attempt}"))
            pair.append(pair_run(srv, halves, work, 32, f"pair-{attempt}"))
            print(f"  repeat {attempt + 1}: " + ", ".join(f"workers {w} {g[-1]['rate']:.0f}/s" for w, g in got.items())
                  + f", two separate processes {pair[-1]['rate']:.0f}/s", flush=True)  # fmt: skip
    print(f"throughput at zero latency, {args.rows} rows, concurrency 64 (calls/s counted at the server):")
    for workers, runs in got.items():
        print(f"  --workers {workers}: {spread([r['rate'] for r in runs], '{:.0f}')} calls/s; coordinator CPU "
              f"{spread([r['coordinator_ms'] for r in runs], '{:.3f}')} ms/row (busy "
              f"{spread([100 * r['coordinator_busy'] for r in runs], '{:.0f}')}% of a core), workers' CPU "
              f"{spread([r['workers_ms'] for r in runs], '{:.3f}')} ms/row; start-up to the first request "
              f"{spread([r['startup'] for r in runs])} s; peak RSS: coordinator "
              f"{spread([r['coordinator_rss'] for r in runs], '{:.0f}')} MiB, each worker "
              f"{spread([r['worker_rss'] for r in runs], '{:.0f}')} MiB")  # fmt: skip
    rates, cpu = spread([p["rate"] for p in pair], "{:.0f}"), spread([p["cpu_ms"] for p in pair], "{:.3f}")
    print(f"  two separate single-process runs on halves of the input, side by side: {rates} calls/s; CPU {cpu} ms/row")
    ratio = [b["rate"] / a["rate"] for a, b in zip(got[1], got[2], strict=True)]
    verdict = "met" if statistics.median(ratio) >= 1.6 else "MISSED"
    print(f"  ratio workers 2 / workers 1: {spread(ratio)} (target >= 1.6) -> {verdict}", flush=True)
    ceiling = [p["rate"] / a["rate"] for a, p in zip(got[1], pair, strict=True)]
    print(f"  ratio two separate processes / workers 1: {spread(ceiling)} (what two processes reach here)", flush=True)
    extra = [b["startup"] - a["startup"] for a, b in zip(got[1], got[2], strict=True)]
    print(f"  start-up cost of --workers 2 over --workers 1: {spread(extra)} s", flush=True)


def coordinator(args: argparse.Namespace, work: Path) -> None:
    """The coordinator's marginal CPU per row with instant workers: (cpu(big) - cpu(small)) / (big - small),
    for two lease sizes side by side (a renewal is a round trip, so it sets how many rows share one)."""
    small, big = args.rows // 4, args.rows * 2
    per_row: dict[int, list[float]] = {8: [], 32: []}
    rates: dict[int, list[float]] = {8: [], 32: []}
    for attempt in range(args.repeat):
        for batch in (8, 32) if attempt % 2 == 0 else (32, 8):
            figures = {}
            for n in (small, big):
                command = [PY, "-m", "bench.ray_instant", "--rows", str(n), "--workers", "2", "--batch", str(batch),
                           "--dir", str(work / f"c{attempt}-{batch}-{n}")]  # fmt: skip
                out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False,
                                     env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
                if out.returncode != 0:
                    raise SystemExit(f"bench.ray_instant failed: {out.stderr[-3000:]}")
                figures[n] = [float(x) for x in out.stdout.split()]  # CPU seconds, wall seconds of the run
            (cpu_s, wall_s), (cpu_b, wall_b) = figures[small], figures[big]
            per_row[batch].append(1000 * (cpu_b - cpu_s) / (big - small))
            rates[batch].append((big - small) / max(wall_b - wall_s, 1e-9))
        print(f"  repeat {attempt + 1}: " + ", ".join(f"lease {b}: {v[-1]:.3f} ms/row" for b, v in per_row.items()),
              flush=True)  # fmt: skip
    print(f"coordinator's own CPU per row with instantly answering workers (2 workers, {small} vs {big} rows):")
    for batch in per_row:
        ms = statistics.median(per_row[batch])
        print(f"  lease of {batch} requests: {spread(per_row[batch], '{:.3f}')} ms/row (target <= 0.2: "
              f"{'met' if ms <= 0.2 else 'MISSED'}); {spread(rates[batch], '{:.0f}')} rows/s with instant workers "
              f"(sharing 2 cores); one coordinator could feed {1000 / ms:,.0f} calls/s")  # fmt: skip


def flat(args: argparse.Namespace, work: Path) -> None:
    concurrency, latency = 256, 2.0
    rows = concurrency * args.waves
    ideal = math.ceil(rows / concurrency) * latency
    path = write_rows(work / "flat.jsonl", bench_tickets(rows))
    spans: dict[int, list[float]] = {1: [], 2: []}
    with server(latency_ms=latency * 1000) as srv:
        for attempt in range(args.repeat):
            for workers in (1, 2) if attempt % 2 == 0 else (2, 1):
                got = cli_run(srv, path, work, workers, concurrency, f"flat{workers}-{attempt}")
                spans[workers].append(got["span"])
            print(f"  repeat {attempt + 1}: " + ", ".join(f"workers {w} {s[-1]:.2f}s" for w, s in spans.items()),
                  flush=True)  # fmt: skip
    print(f"flat 2 s latency, concurrency 256, {rows} rows; ideal {ideal:.1f}s:")
    for workers, spent in spans.items():
        eff = [ideal / s for s in spent]
        verdict = "met" if statistics.median(eff) >= 0.95 else "MISSED"
        target = f" (target >= 0.95: {verdict})" if workers == 2 else ""
        print(f"  --workers {workers}: span {spread(spent)} s, efficiency {spread(eff, '{:.3f}')}{target}", flush=True)


PARTS = {"throughput": throughput, "coordinator": coordinator, "flat": flat}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ray", description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--waves", type=int, default=10, help="flat: rows = 256 x waves")
    parser.add_argument("--only", nargs="+", choices=list(PARTS), default=list(PARTS))
    parser.add_argument("--quick", action="store_true", help="one repeat, 1000 rows, 3 waves")
    args = parser.parse_args()
    if args.quick:
        args.repeat, args.rows, args.waves = 1, 1000, 3
    print(f"bench.ray, median of {args.repeat} (min–max); {machine()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only:
            PARTS[name](args, Path(tmp))
    print(f"load average at the end: {os.getloadavg()[0]:.2f}", file=sys.stdout)


if __name__ == "__main__":
    main()
