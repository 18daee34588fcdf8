"""``--batch-api`` against online calls: what the same rows cost, and the coordinator's CPU per row.

    .venv/bin/python -m bench.batchapi [--rows 10000] [--repeat 3]

The project's fake provider (chat, files and batches; a batch finishes as soon as it is created)
runs in its own process. This process imports runner once, then each repeat runs, over the same
rows: an online run (the classify job, concurrency 64) and a ``--batch-api`` run (build the
requests, upload, create, poll, download the output, settle each line through the job's parser,
journal it: the batches finish at once, so nearly all of it is the coordinator's own work). CPU is
this process's (every thread: litellm's too), read with ``time.process_time`` around each run, so
litellm's import is not counted. Reported side by side, median (min–max) over the repeats: cost
batch/online (expect 0.50: litellm's batch prices are half the online ones for OpenAI's models)
and CPU per row of the batch run and of the online run.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import orjson

from bench.overhead import PY, ROOT, free_port
from runner.provider.setup import configure

configure()

from runner.call.caller import Caller  # noqa: E402  (after configure(): litellm stays offline)
from runner.call.retry import RetryPolicy  # noqa: E402
from runner.executors.batch import BatchExecutor, BatchOptions  # noqa: E402
from runner.job.definition import load_job  # noqa: E402
from runner.permits.limits import Limits  # noqa: E402
from runner.provider.provider import aclose  # noqa: E402
from runner.run.coordinator import RunSettings, run  # noqa: E402
from runner.run.progress import LogProgress  # noqa: E402

MODEL = "openai/gpt-4o-mini"
JOB = load_job("classify", ROOT / "jobs")


def _spread(values: list[float], fmt: str) -> str:
    return f"{format(statistics.median(values), fmt)} ({format(min(values), fmt)}–{format(max(values), fmt)})"


def _run(url: str, input_path: Path, run_dir: Path, batch: bool) -> tuple[float, dict]:
    """One run in this process: its CPU seconds and its manifest."""
    concurrency = 64
    caller = Caller(job=JOB, policy=RetryPolicy(max_attempts=JOB.max_attempts), timeout=JOB.timeout, model=MODEL,
                    api_base=url, limits=Limits(concurrency))  # fmt: skip
    settings = RunSettings(input_path, run_dir, run_dir.name, concurrency)
    executor = BatchExecutor(caller, run_dir, concurrency, BatchOptions(poll_s=0.05)) if batch else None

    async def go() -> None:
        try:
            await run(caller, settings, LogProgress(interval=3600), executor=executor)
        finally:
            await aclose()

    gc.collect()
    started = time.process_time()
    asyncio.run(go())
    return time.process_time() - started, orjson.loads((run_dir / "manifest.json").read_bytes())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    port = free_port()
    server = subprocess.Popen([PY, "-m", "tests.doubles", "--port", str(port)], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert server.stdout is not None
    url = server.stdout.readline().strip()
    texts = ["the app shows an error when I upload a file", "please add dark mode", "I was charged twice this month",
             "what are your office hours"]  # fmt: skip
    ratios: list[float] = []
    batch_ms: list[float] = []
    online_ms: list[float] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            with (work / "in.jsonl").open("wb") as f:
                for i in range(args.rows):
                    f.write(orjson.dumps({"id": f"t-{i:06d}", "text": f"{texts[i % 4]} (ticket {i})"}) + b"\n")
            gc.freeze()  # as the CLI does after start-up
            for n in range(args.repeat):
                online_cpu, online = _run(url, work / "in.jsonl", work / f"online{n}", batch=False)
                batch_cpu, batched = _run(url, work / "in.jsonl", work / f"batch{n}", batch=True)
                assert batched["status"] == "completed" and batched["request_counts"]["completed"] == args.rows
                assert online["request_counts"]["completed"] == args.rows
                ratios.append(batched["cost_usd"] / online["cost_usd"])
                online_ms.append(1000 * online_cpu / args.rows)
                batch_ms.append(1000 * batch_cpu / args.rows)
                print(f"repeat {n + 1}: cost ${batched['cost_usd']:.4f} batch / ${online['cost_usd']:.4f} online; CPU "
                      f"per row {batch_ms[-1]:.3f} ms batch, {online_ms[-1]:.3f} ms online", flush=True)  # fmt: skip
    finally:
        server.terminate()
        server.wait()
    print(f"{args.rows:,} rows, median (min–max) of {args.repeat}:")
    print(f"cost ratio batch/online: {_spread(ratios, '.3f')} (target 0.50)")
    print(f"CPU per row: batch run (submit + download + parse + journal) {_spread(batch_ms, '.3f')} ms, "
          f"online call {_spread(online_ms, '.3f')} ms")  # fmt: skip
    ratio = [b / o for b, o in zip(batch_ms, online_ms, strict=True)]
    print(f"ratio batch/online CPU per row: {_spread(ratio, '.3f')}")


if __name__ == "__main__":
    main()
