"""Resume start-up: time from `runner run` to its first new provider request, and peak memory,
with N rows already journaled (N = 10,000 and 1,000,000 by default).

    .venv/bin/python -m bench.resume [--rows 10000 1000000] [--repeat 3]

The journal is written the way runner writes it (same record shape and size as a classify run);
the input has N + 10 rows, so exactly 10 are left to send, and the manifest holds the checkpoint a
killed run leaves behind. The fake provider runs in this process,
the runner in a child process, and "first request" is when the server sees it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

from runner.records import result_record
from runner.run.journal import Journal
from runner.run.manifest import Totals, write_manifest
from tests.doubles.provider import FakeProvider

ROOT = Path(__file__).resolve().parent.parent
BODY = {
    "id": "chatcmpl-abc123def456", "created": 1764000000, "model": "gpt-4o-mini", "object": "chat.completion",
    "system_fingerprint": "fp_1",
    "choices": [{"finish_reason": "stop", "index": 0, "logprobs": None, "provider_specific_fields": {},
                 "message": {"content": "billing", "role": "assistant", "tool_calls": None, "function_call": None}}],
    "usage": {"completion_tokens": 1, "prompt_tokens": 187, "total_tokens": 188,
              "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
              "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0}},
}  # fmt: skip


def prepare(workdir: Path, journaled: int) -> None:
    """An input of journaled + 10 tickets and a run directory holding the first ``journaled``."""
    run_dir = workdir / "runs" / "classify" / "in"
    run_dir.mkdir(parents=True)
    totals = Totals()
    with (workdir / "in.jsonl").open("wb") as inp, (run_dir / "results.jsonl").open("wb") as out:
        for i in range(journaled + 10):
            row = {"id": f"r-{i:07d}", "channel": "email", "text": f"I was charged twice for order {i}, please refund"}
            inp.write(orjson.dumps(row) + b"\n")
            if i < journaled:
                meta = {"line": i + 1, "model": "openai/gpt-4o-mini", "attempts": 1, "latency_s": 0.41,
                        "rate_limited": 0, "cost_usd": 2.865e-05, "finished_at": "2026-11-25T16:15:51Z"}  # fmt: skip
                record = result_record(row["id"], BODY, "req_0123456789abcdef", "billing", meta).line
                out.write(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))
                totals.add(record, ok=True)
    asyncio.run(_write_checkpoint(run_dir, totals))


async def _write_checkpoint(run_dir: Path, totals: Totals) -> None:
    """The manifest a killed run leaves: a checkpoint at the journal's end (as runner writes each second)."""
    book = Journal(run_dir)
    await book.open()
    write_manifest(run_dir / "manifest.json", {"status": "in_progress", "checkpoint": book.checkpoint(totals)})
    await book.close()


def measure(workdir: Path, provider: FakeProvider) -> tuple[float, float, float]:
    """Seconds from spawn to the first request the server sees, the child's peak RSS in MiB, and
    seconds for the same command, run again once the run is complete, to exit."""
    provider.reset()
    command = [sys.executable, "-m", "runner", "run", "classify", "--jobs-dir", str(ROOT / "jobs"),
               "--input", "in.jsonl", "--model", "openai/gpt-4o-mini", "--api-base", provider.url, "-q",
               "--no-cache", "--no-dedup"]  # fmt: skip
    started = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(command, cwd=workdir, stdin=subprocess.DEVNULL, stderr=err)
        while provider.stats().total == 0:
            if proc.poll() is not None:
                err.seek(0)
                raise SystemExit(f"runner exited {proc.returncode}: {err.read().decode()[-2000:]}")
            time.sleep(0.002)
        first = time.perf_counter() - started
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak RSS, not all children's
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"runner exited {proc.returncode}")
    # The run is complete now: starting it again must find nothing to do, quickly.
    started = time.perf_counter()
    subprocess.run(command, cwd=workdir, stdin=subprocess.DEVNULL, capture_output=True, check=True)
    again = time.perf_counter() - started
    if provider.stats().total != 10:
        raise SystemExit(f"expected 10 requests in all, the server saw {provider.stats().total}")
    return first, usage.ru_maxrss / 1024, again


def import_time() -> float:
    """Seconds for a bare `import litellm` the way runner does it, in a fresh process."""
    code = (
        "import time; t = time.perf_counter(); from runner.provider.setup import configure; configure(); "
        "import runner.provider.provider; print(time.perf_counter() - t)"
    )
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 1_000_000])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    imports = [import_time() for _ in range(args.repeat)]
    print(f"import runner.provider.provider (litellm): median {statistics.median(imports):.2f}s "
          f"(min {min(imports):.2f}, max {max(imports):.2f})")  # fmt: skip
    rows: dict[int, tuple[list[float], float]] = {}
    with FakeProvider() as provider:
        for n in sorted(args.rows):
            firsts, peaks, agains = [], [], []
            for _ in range(args.repeat):
                with tempfile.TemporaryDirectory() as tmp:
                    prepare(Path(tmp), n)
                    first, peak, again = measure(Path(tmp), provider)
                firsts.append(first)
                peaks.append(peak)
                agains.append(again)
            rows[n] = (firsts, max(peaks))
            print(f"{n:>9,} journaled: first new request after median {statistics.median(firsts):.2f}s "
                  f"(min {min(firsts):.2f}, max {max(firsts):.2f}); peak RSS {max(peaks):.0f} MiB; "
                  f"completed run started again exits after median {statistics.median(agains):.2f}s "
                  f"(min {min(agains):.2f}, max {max(agains):.2f})")  # fmt: skip
    if len(rows) >= 2:
        (small, (_, low)), (big, (_, high)) = min(rows.items()), max(rows.items())
        per_id = (high - low) * 1024 * 1024 / (big - small)
        print(f"memory growth: {per_id:.0f} bytes per journaled id ({low:.0f} -> {high:.0f} MiB); "
              f"RSS ratio {high / low:.2f}")  # fmt: skip
    print(f"cores: {os.cpu_count()}, python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
