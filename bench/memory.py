"""Memory against input size: runner's peak RSS over 10,000 rows and over 1,000,000 rows.

    .venv/bin/python -m bench.memory [--repeat 3] [--rows 10000 1000000] [--send 10000] [--quick]

Sending a million rows through litellm at ~300 requests/s takes the best part of an hour, so the
two sizes are made to do the same work and differ only in what they have to hold:

(a) ``--rows`` small: a fresh input of 10,000 rows, all sent (server latency 0, concurrency 64).
(b) ``--rows`` large: an input of 1,000,000 rows of which 990,000 are already journaled (records
    shaped and sized like a classify run's, ~845 bytes, with the manifest checkpoint a killed run
    leaves), so runner scans a 0.8 GB journal, holds 990,000 finished ids, reads every one of the
    million input lines and checks each for duplicates, and sends the other 10,000.

Everything that could grow with the input (finished ids, the duplicate check, the queue, totals,
counting lines) is exercised at full size in (b); peak RSS is the runner process's own
(``wait4``'s ru_maxrss). (c) checks the other axis, rows processed: a fresh run over the
million-row input, stopped with SIGINT once the server has answered ``--leak`` rows; VmRSS is read
from /proc when a fifth and when all of them were answered.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import orjson

from bench.common import Server, child, machine, runner_command, server, spread
from bench.resume import BODY
from runner.records import result_record
from runner.run.journal import Journal
from runner.run.manifest import Totals, write_manifest

CONCURRENCY = 64


def write_input(path: Path, rows: int) -> None:
    with path.open("wb") as f:
        for i in range(rows):
            row = {"id": f"r-{i:07d}", "channel": "email", "text": f"I was charged twice for order {i}, please refund"}
            f.write(orjson.dumps(row) + b"\n")


def journal(run_dir: Path, rows: int) -> None:
    """A run directory holding results for the first ``rows`` input rows, and its checkpoint."""
    run_dir.mkdir(parents=True)
    totals = Totals()
    meta = {"model": "openai/gpt-4o-mini", "attempts": 1, "latency_s": 0.41, "rate_limited": 0,
            "cost_usd": 2.865e-05, "finished_at": "2026-11-25T16:15:51Z"}  # fmt: skip
    with (run_dir / "results.jsonl").open("wb") as out:
        for i in range(rows):
            record = result_record(f"r-{i:07d}", BODY, "req_0123456789abcdef", "billing", {"line": i + 1, **meta}).line
            out.write(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))
            totals.add(record, ok=True)
    asyncio.run(_checkpoint(run_dir, totals))


async def _checkpoint(run_dir: Path, totals: Totals) -> None:
    book = Journal(run_dir)
    await book.open()
    write_manifest(run_dir / "manifest.json", {"status": "in_progress", "checkpoint": book.checkpoint(totals)})
    await book.close()


def snapshot(run_dir: Path) -> dict[str, bytes | int]:
    """What to put back after a run: the manifest's bytes, each journal file's size."""
    return {
        p.name: (p.read_bytes() if p.suffix == ".json" else p.stat().st_size) for p in run_dir.iterdir() if p.is_file()
    }


def restore(run_dir: Path, saved: dict[str, bytes | int]) -> None:
    for p in run_dir.iterdir():
        if p.name not in saved:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        elif isinstance(saved[p.name], bytes):
            p.write_bytes(saved[p.name])  # type: ignore[arg-type]
        else:
            os.truncate(p, saved[p.name])  # type: ignore[arg-type]


def peak(srv: Server, input_path: Path, cwd: Path, run_id: str, expect: int) -> float:
    """Peak RSS (MiB) of one runner run to completion, checking it sent exactly ``expect`` requests."""
    srv.reset()
    usage = child(runner_command(input_path, srv.url, CONCURRENCY, "--run-id", run_id), cwd=cwd, every=0.05)
    sent = srv.stats()["total"]
    if sent != expect:
        raise SystemExit(f"expected {expect} requests, the server saw {sent}")
    return usage.max_rss_mib


def rss_while_running(srv: Server, input_path: Path, cwd: Path, marks: list[int]) -> list[tuple[float, float]]:
    """(VmRSS, VmHWM) in MiB of a fresh run when the server has answered each of ``marks`` rows; then SIGINT."""
    srv.reset()
    proc = subprocess.Popen(runner_command(input_path, srv.url, CONCURRENCY, "--run-id", f"leak-{time.time_ns()}"),
                            cwd=cwd, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    seen: list[tuple[float, float]] = []
    try:
        for mark in marks:
            while srv.stats()["total"] < mark:
                if proc.poll() is not None:
                    raise SystemExit(f"runner exited {proc.returncode} before {mark} rows")
                time.sleep(0.05)
            status = dict(
                line.split(":", 1) for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines() if ":" in line
            )
            seen.append((int(status["VmRSS"].split()[0]) / 1024, int(status["VmHWM"].split()[0]) / 1024))
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rows", type=int, nargs=2, default=[10_000, 1_000_000], metavar=("SMALL", "LARGE"))
    parser.add_argument("--send", type=int, default=10_000, help="rows (b) leaves to send (default 10,000)")
    parser.add_argument("--leak", type=int, default=25_000, help="(c): rows answered before the stop (0: skip)")
    parser.add_argument("--quick", action="store_true", help="one repeat of 2,000 vs 200,000 rows; (c) to 5,000")
    args = parser.parse_args()
    if args.quick:
        args.repeat, args.rows, args.send, args.leak = 1, [2_000, 200_000], 2_000, 5_000
    small, large = args.rows
    print(f"bench.memory, median of {args.repeat} (min–max); {machine()}", flush=True)
    with server() as srv, tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        started = time.monotonic()
        write_input(work / "small.jsonl", small)
        write_input(work / "large.jsonl", large)
        run_dir = work / "runs" / "classify" / "large"
        journal(run_dir, large - args.send)
        saved = snapshot(run_dir)
        print(f"  prepared {large:,} input rows and {large - args.send:,} journaled "
              f"({(run_dir / 'results.jsonl').stat().st_size / 2**20:.0f} MiB) in {time.monotonic() - started:.0f}s",
              flush=True)  # fmt: skip
        peaks: dict[str, list[float]] = {"small": [], "large": []}
        for attempt in range(args.repeat):
            for which in ("small", "large") if attempt % 2 == 0 else ("large", "small"):
                if which == "small":
                    peaks["small"].append(peak(srv, work / "small.jsonl", work, f"small-{attempt}", small))
                else:
                    peaks["large"].append(peak(srv, work / "large.jsonl", work, "large", args.send))
                    restore(run_dir, saved)
            print(f"  repeat {attempt + 1}/{args.repeat}: small {peaks['small'][-1]:.0f} MiB, "
                  f"large {peaks['large'][-1]:.0f} MiB", flush=True)  # fmt: skip
        ratios = [b / a for a, b in zip(peaks["small"], peaks["large"], strict=True)]
        print(f"(a) {small:,} rows, all sent:                      peak RSS {spread(peaks['small'], '{:.0f}')} MiB")
        print(f"(b) {large:,} rows, {large - args.send:,} journaled, {args.send:,} sent: "
              f"peak RSS {spread(peaks['large'], '{:.0f}')} MiB")  # fmt: skip
        grow = [(b - a) * 2**20 / (large - small) for a, b in zip(peaks["small"], peaks["large"], strict=True)]
        verdict = "met" if statistics.median(ratios) <= 1.2 else "MISSED"
        print(f"    ratio (b)/(a), paired per repeat: {spread(ratios)} (target <= 1.2: {verdict}); "
              f"that is {spread(grow, '{:.1f}')} bytes per extra input row")  # fmt: skip
        if args.leak:
            marks = [args.leak // 5, args.leak]
            leaks = [rss_while_running(srv, work / "large.jsonl", work, marks) for _ in range(args.repeat)]
            at_first = [seen[0][0] for seen in leaks]
            at_last = [seen[1][0] for seen in leaks]
            per = [(b - a) * 2**20 / (marks[1] - marks[0]) for a, b in zip(at_first, at_last, strict=True)]
            print(f"(c) fresh run over the {large:,}-row input: VmRSS after {marks[0]:,} answers "
                  f"{spread(at_first, '{:.0f}')} MiB, after {marks[1]:,} {spread(at_last, '{:.0f}')} MiB: "
                  f"{spread(per, '{:.0f}')} bytes per row processed")  # fmt: skip


if __name__ == "__main__":
    main()
