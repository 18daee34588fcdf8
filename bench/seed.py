"""The seed scenario: how close runner comes to the ideal wall time for a given concurrency and latency.

    .venv/bin/python -m bench.seed [--repeat 3] [--quick]

(1) 100 classify tickets at concurrency 20. Each ticket carries a [[latency:MS]] directive drawn
    once from a fixed-seed lognormal distribution (mean 1.5 s, sigma 0.5), so every run (runner, the
    bare loop, the sequential loop) meets exactly the same latencies. The ideal wall time is the
    time a client with zero overhead would take: the draws scheduled in input order onto 20 slots,
    each slot taking the next ticket the moment it frees. Efficiency = ideal / actual, where
    actual is the server's window from the first request to the last answer (the client's start-up,
    mostly importing litellm, is reported apart as the process's wall time). The sequential run is
    the reference's synchronous loop: one ``litellm.completion`` after another.
(2) Concurrency 256 against 2 s of latency (128 requests/s at the ideal): runner and the bare loop
    over 256 x --waves tickets, (a) with every request taking exactly 2 s, which keeps all 256 in
    lockstep waves, and (b) with latencies drawn as in (1) but with a mean of 2 s.

The fake provider runs in its own process (``bench.server``); runner (the CLI), the bare loop
(``bench.bare``) and the sequential loop are child processes, alternating order from one repeat to
the next so that machine noise falls on each alike.
"""

from __future__ import annotations

import argparse
import heapq
import math
import random
import statistics
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench.common import Server, bare_command, child, machine, runner_command, server, spread, tickets, write_rows

SEED = 2026


def draws(n: int, mean_ms: float, sigma: float = 0.5, seed: int = SEED) -> list[float]:
    """``n`` latencies (ms) from a lognormal distribution whose mean is ``mean_ms``."""
    rng = random.Random(seed)
    mu = math.log(mean_ms) - sigma**2 / 2
    return [round(rng.lognormvariate(mu, sigma), 1) for _ in range(n)]


def ideal_seconds(latencies_ms: Sequence[float], concurrency: int) -> float:
    """Wall time of a zero-overhead client: in input order, each request starts when a slot frees."""
    slots = [0.0] * min(concurrency, len(latencies_ms))
    end = 0.0
    for latency in latencies_ms:
        start = heapq.heappop(slots)
        finish = start + latency / 1000
        end = max(end, finish)
        heapq.heappush(slots, finish)
    return end


def timed(srv: Server, command: list[str], cwd: Path) -> tuple[float, float]:
    """The server's busy window (first request to last answer) and the process's wall time."""
    srv.reset()
    usage = child(command, cwd=cwd)
    window = srv.window()
    return window.seconds, usage.wall


def scenario(
    srv: Server, rows: int, latencies: list[float], concurrency: int, repeat: int, sequential: bool
) -> dict[str, list[tuple[float, float]]]:
    out: dict[str, list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        path = write_rows(work / "in.jsonl", tickets(rows, latencies_ms=latencies))
        for attempt in range(repeat):
            runs = {
                "runner": runner_command(path, srv.url, concurrency, "--run-id", f"r{attempt}"),
                "bare": bare_command(path, srv.url, concurrency),
            }
            order = list(runs) if attempt % 2 == 0 else list(reversed(runs))
            for who in order:
                out.setdefault(who, []).append(timed(srv, runs[who], work))
            if sequential:
                one_by_one = bare_command(path, srv.url, 1, "--sequential")
                out.setdefault("sequential", []).append(timed(srv, one_by_one, work))
            print(f"  repeat {attempt + 1}/{repeat}: " + ", ".join(f"{k} {v[-1][0]:.2f}s" for k, v in out.items()),
                  flush=True)  # fmt: skip
    return out


def report(
    title: str, ideal: float, out: dict[str, list[tuple[float, float]]], target: float, one_by_one: float = 0.0
) -> dict[str, float]:
    print(title)
    print(f"  ideal (zero-overhead client, same latencies): {ideal:.2f}s" +
          (f"; one at a time: {one_by_one:.2f}s" if one_by_one else ""))  # fmt: skip
    medians: dict[str, float] = {}
    for who, results in out.items():
        windows, walls = [w for w, _ in results], [t for _, t in results]
        effs = [(one_by_one if who == "sequential" else ideal) / w for w in windows]
        medians[who] = statistics.median(effs)
        print(f"  {who:<10} first request -> last answer {spread(windows)}s; process wall {spread(walls)}s; "
              f"efficiency {spread(effs, '{:.3f}')}")  # fmt: skip
    if "runner" in out and "bare" in out:
        ratios = [b[0] / r[0] for r, b in zip(out["runner"], out["bare"], strict=True)]
        ok = medians["runner"] >= target and statistics.median(ratios) >= 0.97
        print(f"  runner efficiency / bare efficiency, paired per repeat: {spread(ratios, '{:.3f}')} "
              f"(target: runner >= {target}, and >= 0.97 of bare) -> {'met' if ok else 'MISSED'}")  # fmt: skip
    if "sequential" in out and "runner" in out:
        seq = statistics.median(w for _, w in out["sequential"])
        run = statistics.median(w for _, w in out["runner"])
        print(f"  sequential / runner process wall: {seq / run:.1f}x")
    return medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--waves", type=int, default=12, help="(2): rows = 256 x waves (default 12: 24 s ideal)")
    parser.add_argument("--no-sequential", action="store_true", help="skip the ~150 s sequential runs")
    parser.add_argument("--quick", action="store_true", help="one repeat, 3 waves, no sequential run")
    args = parser.parse_args()
    if args.quick:
        args.repeat, args.waves, args.no_sequential = 1, 3, True
    print(f"bench.seed, {machine()}", flush=True)
    with server() as srv:
        latencies = draws(100, 1500)
        ideal = ideal_seconds(latencies, 20)
        print(f"(1) 100 tickets, concurrency 20, latency lognormal mean {statistics.mean(latencies):.0f} ms "
              f"(median {statistics.median(latencies):.0f}, max {max(latencies):.0f}; seed {SEED}); "
              f"sum {sum(latencies) / 1000:.1f}s", flush=True)  # fmt: skip
        one = scenario(srv, 100, latencies, 20, args.repeat, sequential=not args.no_sequential)
        report("(1) seed scenario: 100 tickets at concurrency 20", ideal, one, 0.95, sum(latencies) / 1000)
        if args.no_sequential:
            print(f"  sequential: not run; its ideal is the sum of the latencies, {sum(latencies) / 1000:.1f}s")
        rows = 256 * args.waves
        shapes = {"(2a) flat 2000 ms": [2000.0] * rows, "(2b) lognormal mean 2000 ms": draws(rows, 2000)}
        for name, latencies in shapes.items():
            print(f"{name}: {rows} tickets, concurrency 256", flush=True)
            two = scenario(srv, rows, latencies, 256, args.repeat, sequential=False)
            report(f"{name}: concurrency 256, 2 s latency", ideal_seconds(latencies, 256), two, 0.95)


if __name__ == "__main__":
    main()
