"""An ASGI app served on 127.0.0.1 in a thread, a proxy that paces a provider's stream, and server-sent events
as a client reads them."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

PACE_S = 0.05  # between the proxied provider's stream events


class LiveServer:
    """An ASGI app served by uvicorn on 127.0.0.1 in a background thread."""

    def __init__(self, app: Any) -> None:
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, ws="none", timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.url = ""
        self._thread = threading.Thread(target=self._run, name="live-server", daemon=True)

    def _run(self) -> None:
        asyncio.run(self.server.serve())

    def __enter__(self) -> LiveServer:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the live server did not start")
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self._thread.join(10)


def pacing_proxy(upstream: str, pace: float = PACE_S) -> Starlette:
    """An OpenAI-compatible pass-through to ``upstream`` that sends each stream event ``pace`` s apart."""

    async def chat(request: Request) -> Response:
        client = httpx.AsyncClient(timeout=30)
        sent = client.build_request("POST", f"{upstream}/chat/completions", content=await request.body(),
                                    headers={"content-type": "application/json"})  # fmt: skip
        reply = await client.send(sent, stream=True)
        keep = {k: v for k, v in reply.headers.items() if k.startswith(("x-", "content-type", "retry-after"))}
        if not reply.headers.get("content-type", "").startswith("text/event-stream"):
            body = await reply.aread()
            await reply.aclose()
            await client.aclose()
            return Response(body, status_code=reply.status_code, headers=keep)

        async def events() -> AsyncIterator[bytes]:
            buffer = b""
            try:
                async for data in reply.aiter_bytes():
                    buffer += data
                    while b"\n\n" in buffer:
                        event, buffer = buffer.split(b"\n\n", 1)
                        yield event + b"\n\n"
                        await asyncio.sleep(pace)
                if buffer:
                    yield buffer
            except httpx.HTTPError:
                return  # the upstream broke its stream on purpose: break ours the same way
            finally:
                await reply.aclose()
                await client.aclose()

        return StreamingResponse(events(), status_code=reply.status_code, headers=keep)

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


@dataclass
class Event:
    """One server-sent event as a client sees it."""

    event: str
    data: str
    id: str | None

    def json(self) -> Any:
        return orjson.loads(self.data)


async def sse(response: httpx.Response) -> AsyncGenerator[Event, None]:
    """The events of a text/event-stream response, parsed as the SSE spec says."""
    event, last_id = "message", None
    data: list[str] = []
    async for line in response.aiter_lines():
        if not line:
            if data:
                yield Event(event, "\n".join(data), last_id)
            event, data = "message", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value
        elif name == "id":
            last_id = value


async def read_events(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    stop: Callable[[list[Event]], bool] = lambda events: False,
    **kwargs: Any,
) -> tuple[httpx.Response, list[Event], list[float]]:
    """Read ``url``'s events until the stream ends or ``stop(events)``; also when each one arrived."""
    events: list[Event] = []
    arrived: list[float] = []
    async with client.stream(method, url, **kwargs) as response:
        if response.status_code != 200:
            await response.aread()
            return response, events, arrived
        async for event in sse(response):
            events.append(event)
            arrived.append(time.monotonic())
            if stop(events):
                break
    return response, events, arrived
