"""Embeddings: runner's CPU per row and rows/s against a bare ``litellm.aembedding`` loop, side by side.

    .venv/bin/python -m bench.embed [--rows 2000] [--concurrency 64] [--repeat 3]

The fake provider (1,536-number vectors, latency 0) runs in its own process. Runner (``runner run
batch`` over a file of ``/v1/embeddings`` lines) and the bare loop (an asyncio.Semaphore around
``litellm.aembedding``, the same requests, no queue, retries, journal or manifest) each run in a
child process, alternating, per encoding: JSON floats and ``encoding_format: "base64"``. CPU is the
child's user+sys time minus a child that only imports litellm; rows/s likewise takes that import's
wall time off. Peak RSS is each child's own (``wait4``'s ru_maxrss), import included.
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
import warnings
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
MODEL = "openai/text-embedding-3-small"


def child(command: list[str], cwd: Path) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds (user + sys) and peak RSS (MiB) of one child process."""
    started = time.perf_counter()
    proc = subprocess.Popen(command, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{command[:5]} failed")
    return time.perf_counter() - started, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def write_input(path: Path, rows: int, encoding: str) -> None:
    """``rows`` OpenAI Batch lines for /v1/embeddings, one short ticket each."""
    extra = {"encoding_format": "base64"} if encoding == "base64" else {}
    with path.open("wb") as f:
        for i in range(rows):
            body = {"model": MODEL, "input": f"the export fails with an error, ticket {i}", **extra}
            f.write(orjson.dumps({"custom_id": f"r-{i}", "method": "POST", "url": "/v1/embeddings", "body": body}))
            f.write(b"\n")


async def bare(bodies: list[dict[str, Any]], api_base: str, concurrency: int) -> None:
    """The floor: a semaphore and ``litellm.aembedding`` over the same bodies (answers kept, not written)."""
    import litellm

    from runner.provider.provider import aclose

    gate = asyncio.Semaphore(concurrency)
    extra = {"api_base": api_base, "api_key": "sk-bench", "max_retries": 0, "timeout": 30}

    async def one(body: dict[str, Any]) -> Any:
        async with gate:
            return await litellm.aembedding(**body, **extra)

    await asyncio.gather(*(one(body) for body in bodies))
    await aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--bare-child", nargs=2, metavar=("INPUT", "API_BASE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_child:
        from runner.provider.setup import configure

        configure()
        # litellm warns on every base64 answer (runner.provider.endpoints filters it): printing thousands of
        # warnings would be the bare loop's CPU, not litellm's.
        warnings.filterwarnings("ignore", "Pydantic serializer warnings", UserWarning)
        lines = Path(args.bare_child[0]).read_bytes().splitlines()
        asyncio.run(bare([orjson.loads(line)["body"] for line in lines], args.bare_child[1], args.concurrency))
        return
    server = subprocess.Popen([PY, "-m", "tests.doubles", "--port", "0"], cwd=ROOT, stdout=subprocess.PIPE,
                              stdin=subprocess.DEVNULL, text=True)  # fmt: skip
    assert server.stdout is not None
    url = server.stdout.readline().strip()
    results: dict[str, list[tuple[float, float, float]]] = {}
    load = os.getloadavg()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            for encoding in ("float", "base64"):
                write_input(work / f"{encoding}.jsonl", args.rows, encoding)
            base = [
                PY,
                "-c",
                "from runner.provider.setup import configure; configure(); import runner.provider.endpoints",
            ]
            for attempt in range(args.repeat):
                import_wall, import_cpu, _ = child(base, ROOT)
                for encoding in ("float", "base64"):
                    given = work / f"{encoding}.jsonl"
                    runs = {
                        "runner": [PY, "-m", "runner", "run", "batch", "--input", str(given), "--api-base", url,
                                   "--runs-dir", str(work / "runs"), "--run-id", f"r{attempt}{encoding}",
                                   "--concurrency", str(args.concurrency), "-q", "--no-cache", "--no-dedup"],
                        "bare": [PY, "-m", "bench.embed", "--bare-child", str(given), url, "--concurrency",
                                 str(args.concurrency)],
                    }  # fmt: skip
                    order = ("runner", "bare") if attempt % 2 == 0 else ("bare", "runner")
                    for who in order:
                        wall, cpu, rss = child(runs[who], ROOT)
                        per_row_ms = (cpu - import_cpu) / args.rows * 1000
                        rate = args.rows / max(wall - import_wall, 0.1)  # a loaded machine can make it <= 0
                        results.setdefault(f"{encoding} {who}", []).append((per_row_ms, rate, rss))
    finally:
        server.terminate()
        server.wait()
    after = os.getloadavg()
    print(f"{args.rows} embedding rows (1,536 numbers each), concurrency {args.concurrency}, server latency 0, "
          f"median of {args.repeat} (min-max); load average {load[0]:.1f} before, {after[0]:.1f} after")  # fmt: skip
    for encoding in ("float", "base64"):
        for who in ("runner", "bare"):
            cpus, rates, rss = (list(x) for x in zip(*results[f"{encoding} {who}"], strict=True))
            cpu = f"CPU {statistics.median(cpus):5.2f} ms/row ({min(cpus):.2f}-{max(cpus):.2f})"
            rate = f"{statistics.median(rates):6.0f} rows/s ({min(rates):.0f}-{max(rates):.0f})"
            print(f"  {encoding:<6} {who:<6} {cpu}, {rate}, peak RSS {statistics.median(rss):.0f} MiB")
        pairs = zip(results[f"{encoding} runner"], results[f"{encoding} bare"], strict=True)
        ratios = [r[0] / b[0] for r, b in pairs]
        verdict = "met" if statistics.median(ratios) <= 1.25 else "missed"
        print(f"  {encoding:<6} runner CPU / bare CPU: median {statistics.median(ratios):.2f} "
              f"({min(ratios):.2f}-{max(ratios):.2f}), paired per repeat (target <= 1.25: {verdict})")  # fmt: skip


if __name__ == "__main__":
    main()
