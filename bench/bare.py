"""The floor runner is compared against: an asyncio.Semaphore and litellm.acompletion over the same rows.

    python -m bench.bare --input rows.jsonl --api-base URL [--concurrency 64] [--stream] [--sequential]
                         [--model openai/gpt-4o-mini]

The same requests as the classify job builds, sent the way the reference chapter does it, with no
queue, retries, journal or manifest; streamed answers are assembled with stream_chunk_builder.
``--sequential`` is the reference's synchronous loop instead: one ``litellm.completion`` after another.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

import orjson

from runner.job.definition import load_job
from runner.provider.provider import aclose
from runner.provider.provider import acompletion as complete

ROOT = Path(__file__).resolve().parent.parent


def requests(args: argparse.Namespace) -> list[dict[str, Any]]:
    job = load_job("classify", ROOT / "jobs")
    rows = [orjson.loads(line) for line in Path(args.input).read_bytes().splitlines() if line.strip()]
    extra = {"stream": True, "stream_options": {"include_usage": True}} if args.stream else {}
    return [{**job.build_request(row), "model": args.model, "api_base": args.api_base,
             "api_key": "sk-bench", "max_retries": 0, "timeout": 30, **extra} for row in rows]  # fmt: skip


async def main(args: argparse.Namespace) -> None:
    import litellm

    gate = asyncio.Semaphore(args.concurrency)

    async def one(request: dict[str, Any]) -> None:
        async with gate:
            response = await complete(**request)
            if args.stream:
                chunks = [chunk async for chunk in response]
                litellm.stream_chunk_builder(chunks, messages=request["messages"])

    await asyncio.gather(*(one(request) for request in requests(args)))
    await aclose()


def sequential(args: argparse.Namespace) -> None:
    import litellm

    for request in requests(args):
        litellm.completion(**request)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True)
    parser.add_argument("--api-base", required=True)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--sequential", action="store_true")
    parser.add_argument("--model", default="openai/gpt-4o-mini")
    arguments = parser.parse_args()
    if arguments.sequential:
        sequential(arguments)
    else:
        asyncio.run(main(arguments))
