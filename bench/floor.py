"""The floor: the same requests as raw aiohttp POSTs under an asyncio.Semaphore, answers parsed with orjson.

    python -m bench.floor --input rows.jsonl --api-base URL [--concurrency 64] [--stream]

No litellm, no retries, no journal: what it costs Python to send a request and read its answer at all.
``--stream``: streamed with the usage chunk, each event's JSON parsed, the text joined (no assembly).
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import aiohttp
import orjson

from runner.job.definition import load_job

ROOT = Path(__file__).resolve().parent.parent


async def main(args: argparse.Namespace) -> None:
    job = load_job("classify", ROOT / "jobs")
    rows = [orjson.loads(line) for line in Path(args.input).read_bytes().splitlines() if line.strip()]  # noqa: ASYNC240
    extra = {"stream": True, "stream_options": {"include_usage": True}} if args.stream else {}
    bodies = [orjson.dumps({**job.build_request(row), "model": "gpt-4o-mini", **extra}) for row in rows]
    gate = asyncio.Semaphore(args.concurrency)
    url = args.api_base.rstrip("/") + "/chat/completions"
    headers = {"Content-Type": "application/json", "Authorization": "Bearer sk-bench"}
    connector = aiohttp.TCPConnector(limit=args.concurrency)

    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(body: bytes) -> None:
            async with gate, session.post(url, data=body, headers=headers) as response:
                if args.stream:
                    text, usage = [], None
                    async for line in response.content:
                        if line.startswith(b"data: {"):
                            chunk = orjson.loads(line[6:])
                            usage = chunk.get("usage") or usage
                            if chunk["choices"]:
                                text.append(chunk["choices"][0]["delta"].get("content") or "")
                    if response.status != 200 or usage is None:
                        raise SystemExit(f"bad stream {response.status}")
                    return
                answer = orjson.loads(await response.read())
                if response.status != 200 or not answer["choices"]:
                    raise SystemExit(f"bad answer {response.status}")

        await asyncio.gather(*(one(body) for body in bodies))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True)
    parser.add_argument("--api-base", required=True)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--stream", action="store_true")
    asyncio.run(main(parser.parse_args()))
