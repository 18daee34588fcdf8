"""The openai SDK's own loop over the same rows: an asyncio.Semaphore and ``AsyncOpenAI.chat.completions.create``.

    python -m bench.sdk --input rows.jsonl --api-base URL [--concurrency 64] [--stream]

The same requests as the classify job builds, no retries, no litellm: what the provider's own client costs.
``--stream``: streamed with the usage chunk, every chunk read (the SDK parses each into its model).
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import orjson
from openai import AsyncOpenAI

from runner.job.definition import load_job

ROOT = Path(__file__).resolve().parent.parent


async def main(args: argparse.Namespace) -> None:
    job = load_job("classify", ROOT / "jobs")
    rows = [orjson.loads(line) for line in Path(args.input).read_bytes().splitlines() if line.strip()]  # noqa: ASYNC240
    extra = {"stream": True, "stream_options": {"include_usage": True}} if args.stream else {}
    requests = [{**job.build_request(row), "model": "gpt-4o-mini", **extra} for row in rows]
    gate = asyncio.Semaphore(args.concurrency)
    async with AsyncOpenAI(base_url=args.api_base, api_key="sk-bench", max_retries=0, timeout=30) as client:

        async def one(request: dict[str, object]) -> None:
            async with gate:
                answer = await client.chat.completions.create(**request)  # type: ignore[call-overload]
                if args.stream:
                    chunks = [chunk async for chunk in answer]
                    if not chunks[-1].usage:
                        raise SystemExit("no usage chunk")
                elif not answer.choices:
                    raise SystemExit("no choices")

        await asyncio.gather(*(one(request) for request in requests))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True)
    parser.add_argument("--api-base", required=True)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--stream", action="store_true")
    asyncio.run(main(parser.parse_args()))
