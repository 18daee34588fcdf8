"""Memory against input size: runner's peak RSS over 10,000, 100,000 and 1,000,000 rows, as users run
it (the response cache and dedup on) and with ``--no-cache --no-dedup``.

    .venv/bin/python -m bench.memory [--repeat 3] [--rows 10000 100000 1000000] [--send 10000] [--quick]

Sending a million rows through litellm at ~300 requests/s takes the best part of an hour, so every
size is made to do the same work and differs only in what it has to hold:

(a) the smallest ``--rows``: a fresh input, all sent (server latency 0, concurrency 64);
(b) each larger size N: an input of N rows of which N - ``--send`` are already journaled (records
    shaped and sized like a classify run's, ~845 bytes, with the manifest checkpoint a killed run
    leaves) and the other ``--send`` sent. With the defaults the response cache also holds the
    journaled rows' answers, keyed as a run keys them (``bench.cache.fill``): the state a fresh run
    over the N rows is in near its end (a ~760 MiB cache file at a million rows). Each run gets a
    fresh copy of that cache, so every repeat sends the same ``--send`` rows and stores them.

So runner scans the journal, holds the finished ids, reads and checks every input line, and looks up
and stores the rows it sends in a cache file of the input's size. Peak RSS is the runner process's
own (``wait4``'s ru_maxrss); the part of it that is the cache file's SQLite memory map is sampled from
/proc/<pid>/smaps. (c) checks the other axis, rows processed: a fresh run over the largest input
(with the defaults, a fresh cache), stopped with SIGINT once the server has answered ``--leak``
rows; VmRSS is read from /proc when a fifth and when all of them were answered.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

from bench.common import NO_REUSE, ROOT, Server, machine, runner_command, server, spread
from bench.resume import BODY
from runner.records import result_record
from runner.run.journal import Journal
from runner.run.manifest import Totals, write_manifest

CONCURRENCY = 64
CONFIGS = {"defaults": (), "no-reuse": NO_REUSE}  # as users run it; without the cache and dedup


def command(config: str, input_path: Path, url: str, *extra: str) -> list[str]:
    """``runner run classify`` with ``config``'s reuse flags (bench.common's command always has NO_REUSE)."""
    base = [a for a in runner_command(input_path, url, CONCURRENCY, *extra) if a not in NO_REUSE]
    return [*base, *CONFIGS[config]]


def input_row(i: int) -> dict[str, str]:
    return {"id": f"r-{i:07d}", "channel": "email", "text": f"I was charged twice for order {i}, please refund"}


def write_input(path: Path, rows: int) -> None:
    with path.open("wb") as f:
        for i in range(rows):
            f.write(orjson.dumps(input_row(i)) + b"\n")


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


@dataclass
class Peak:
    """One run's peak RSS, and the most of it that was the cache file's memory map (MiB)."""

    rss: float
    mapped: float


def _mapped_mib(pid: int) -> float:
    """Resident KiB of the process's mappings of the cache's SQLite files, in MiB (0 if it has none)."""
    total, inside = 0, False
    try:
        with open(f"/proc/{pid}/smaps", "rb") as f:
            for line in f:
                if b"-" in line.split(b" ", 1)[0]:  # a mapping's header line
                    inside = b"cache.db" in line
                elif inside and line.startswith(b"Rss:"):
                    total += int(line.split()[1])
    except OSError:
        return 0.0
    return total / 1024


def run(cmd: list[str], cwd: Path) -> Peak:
    """Run ``cmd`` to the end (failing loudly if it exits non-zero), sampling its cache mapping."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        mapped = 0.0
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            mapped = max(mapped, _mapped_mib(proc.pid))
            time.sleep(0.1)
        if os.waitstatus_to_exitcode(status) != 0:
            err.seek(0)
            raise SystemExit(f"runner exited {os.waitstatus_to_exitcode(status)}: {err.read().decode()[-3000:]}")
    return Peak(usage.ru_maxrss / 1024, mapped)


def peak(srv: Server, cmd: list[str], cwd: Path, expect: int) -> Peak:
    """One runner run to completion, checking it sent exactly ``expect`` requests."""
    srv.reset()
    got = run(cmd, cwd)
    sent = srv.stats()["total"]
    if sent != expect:
        raise SystemExit(f"expected {expect} requests, the server saw {sent}")
    return got


def rss_while_running(srv: Server, cmd: list[str], cwd: Path, marks: list[int]) -> list[tuple[float, float]]:
    """(VmRSS, VmHWM) in MiB of a fresh run when the server has answered each of ``marks`` rows; then SIGINT."""
    srv.reset()
    proc = subprocess.Popen(cmd, cwd=cwd, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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


class Sizes:
    """The inputs, journals and filled caches of every size, prepared once."""

    def __init__(self, work: Path, srv: Server, sizes: list[int], send: int) -> None:
        self.work, self.send, self.smallest = work, send, sizes[0]
        self.saved: dict[int, dict[str, bytes | int]] = {}
        for size in sizes:
            write_input(self.input(size), size)
            if size > self.smallest:
                journal(self.run_dir(size), size - send)
                self.saved[size] = snapshot(self.run_dir(size))
                _fill(self.filled(size), size - send, srv.url)

    def input(self, size: int) -> Path:
        return self.work / f"in-{size}.jsonl"

    def run_dir(self, size: int) -> Path:
        return self.work / "runs" / "classify" / f"n{size}"

    def filled(self, size: int) -> Path:
        return self.work / f"filled-{size}"

    def measure(self, srv: Server, config: str, size: int, attempt: int) -> Peak:
        cache = self.work / "cache"  # a fresh copy per run: each repeat stores the same rows again
        shutil.rmtree(cache, ignore_errors=True)
        if size > self.smallest:
            shutil.copytree(self.filled(size), cache)
        extra = ["--cache-dir", str(cache)] if config == "defaults" else []
        run_id = f"n{size}" if size > self.smallest else f"fresh-{config}-{attempt}"
        try:
            return peak(srv, command(config, self.input(size), srv.url, "--run-id", run_id, *extra), self.work,
                        self.send if size > self.smallest else size)  # fmt: skip
        finally:
            if size > self.smallest:
                restore(self.run_dir(size), self.saved[size])
            shutil.rmtree(cache, ignore_errors=True)


def _fill(cache_dir: Path, rows: int, url: str) -> None:
    """The response cache a run over the first ``rows`` input rows leaves (bench.cache's keys and bodies),
    filled in a child: a child's ru_maxrss starts at its parent's RSS when forked, so this process
    must stay small (no litellm, no million entries)."""
    script = (
        "import sys; from pathlib import Path; from bench.cache import fill; from bench.memory import input_row; "
        "fill(Path(sys.argv[1]), [input_row(i) for i in range(int(sys.argv[2]))], sys.argv[3])"
    )
    subprocess.run([sys.executable, "-c", script, str(cache_dir), str(rows), url], cwd=ROOT, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000, 1_000_000], metavar="N")
    parser.add_argument("--send", type=int, default=10_000, help="rows each larger size sends (default 10,000)")
    parser.add_argument("--leak", type=int, default=25_000, help="(c): rows answered before the stop (0: skip)")
    parser.add_argument("--config", choices=[*CONFIGS, "both"], default="both")
    parser.add_argument(
        "--quick", action="store_true", help="one repeat of 2,000 / 20,000 / 200,000 rows; (c) to 5,000"
    )
    args = parser.parse_args()
    if args.quick:
        args.repeat, args.rows, args.send, args.leak = 1, [2_000, 20_000, 200_000], 2_000, 5_000
    sizes = sorted(args.rows)
    if sizes[0] != args.send:
        raise SystemExit(f"the smallest --rows ({sizes[0]}) must equal --send ({args.send}): every size sends as many")
    configs = list(CONFIGS) if args.config == "both" else [args.config]
    print(f"bench.memory, median of {args.repeat} (min–max); {machine()}", flush=True)
    with server() as srv, tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        started = time.monotonic()
        prepared = Sizes(work, srv, sizes, args.send)
        print(f"  prepared inputs of {', '.join(f'{n:,}' for n in sizes)} rows, journals and filled caches "
              f"in {time.monotonic() - started:.0f}s", flush=True)  # fmt: skip
        peaks = {(c, n): list[Peak]() for c in configs for n in sizes}
        for attempt in range(args.repeat):
            order = [(c, n) for c in configs for n in sizes]
            for config, size in order if attempt % 2 == 0 else order[::-1]:
                peaks[config, size].append(prepared.measure(srv, config, size, attempt))
            print(f"  repeat {attempt + 1}/{args.repeat}: "
                  + ", ".join(f"{c} {n:,} {p[-1].rss:.0f} MiB" for (c, n), p in peaks.items()), flush=True)  # fmt: skip
        for config in configs:
            print(f"{config} ({' '.join(CONFIGS[config]) or 'the response cache and dedup on'}):")
            base = peaks[config, sizes[0]]
            for size in sizes:
                got = peaks[config, size]
                what = "all sent" if size == sizes[0] else f"{size - args.send:,} journaled, {args.send:,} sent"
                mapped = (
                    f"; cache.db mapped {spread([p.mapped for p in got], '{:.0f}')} MiB" if config == "defaults" else ""
                )
                line = f"  {size:>9,} rows ({what}): peak RSS {spread([p.rss for p in got], '{:.0f}')} MiB{mapped}"
                if size > sizes[0]:
                    ratios = [b.rss / a.rss for a, b in zip(base, got, strict=True)]
                    verdict = "met" if statistics.median(ratios) <= 1.2 else "MISSED"
                    line += f"; / {sizes[0]:,} rows: {spread(ratios)} (<= 1.2: {verdict})"
                print(line)
        if args.leak:
            marks = [args.leak // 5, args.leak]
            for config in configs:
                leaks = []
                for attempt in range(args.repeat):
                    cache = work / f"leak-cache-{attempt}"
                    extra = ["--cache-dir", str(cache)] if config == "defaults" else []
                    cmd = command(
                        config, prepared.input(sizes[-1]), srv.url, "--run-id", f"leak-{config}-{attempt}", *extra
                    )
                    leaks.append(rss_while_running(srv, cmd, work, marks))
                    shutil.rmtree(cache, ignore_errors=True)
                at_first = [seen[0][0] for seen in leaks]
                at_last = [seen[1][0] for seen in leaks]
                per = [(b - a) * 2**20 / (marks[1] - marks[0]) for a, b in zip(at_first, at_last, strict=True)]
                print(f"(c) {config}, fresh run over the {sizes[-1]:,}-row input: VmRSS after {marks[0]:,} answers "
                      f"{spread(at_first, '{:.0f}')} MiB, after {marks[1]:,} {spread(at_last, '{:.0f}')} MiB: "
                      f"{spread(per, '{:.0f}')} bytes per row processed")  # fmt: skip


if __name__ == "__main__":
    main()
