"""The floor runner is compared against: an asyncio.Semaphore and litellm.acompletion over the same rows.

    python -m bench.bare --input rows.jsonl --api-base URL [--concurrency 64] [--stream]

The same requests as the classify job builds, sent the way the reference chapter does it, with no
queue, retries, journal or manifest; streamed answers are assembled with stream_chunk_builder.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import orjson

from runner.jobs import load_job
from runner.provider import aclose
from runner.provider import acompletion as complete

ROOT = Path(__file__).resolve().parent.parent


async def main(args: argparse.Namespace) -> None:
    import litellm

    job = load_job("classify", ROOT / "jobs")
    rows = [orjson.loads(line) for line in Path(args.input).read_bytes().splitlines() if line.strip()]  # noqa: ASYNC240
    gate = asyncio.Semaphore(args.concurrency)
    extra = {"stream": True, "stream_options": {"include_usage": True}} if args.stream else {}

    async def one(row: dict) -> None:
        request = {**job.build_request(row), "model": "openai/gpt-4o-mini", "api_base": args.api_base,
                   "api_key": "sk-bench", "max_retries": 0, "timeout": 30, **extra}  # fmt: skip
        async with gate:
            response = await complete(**request)
            if args.stream:
                chunks = [chunk async for chunk in response]
                litellm.stream_chunk_builder(chunks, messages=request["messages"])

    await asyncio.gather(*(one(row) for row in rows))
    await aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True)
    parser.add_argument("--api-base", required=True)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--stream", action="store_true")
    asyncio.run(main(parser.parse_args()))
