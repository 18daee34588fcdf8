"""A page closed while events are queued ends its stream quietly (runner/serve/hangup.py).

FastAPI's EventSourceResponse closes the stream its response reads before it cancels its keep-alive
task; a task blocked sending the next event then raised BrokenResourceError, which uvicorn logged as
"Exception in ASGI application" with a traceback (seen in tests/test_browser.py under load).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, MutableMapping
from pathlib import Path
from typing import Any

import anyio
import pytest

from runner.serve import tail
from runner.serve.app import create_app
from runner.serve.hangup import QuietHangup

SCOPE: dict[str, Any] = {
    "type": "http",
    "asgi": {"version": "3.0", "spec_version": "2.3"},  # as uvicorn's HTTP servers say
    "http_version": "1.1",
    "method": "GET",
    "scheme": "http",
    "query_string": b"",
    "root_path": "",
    "headers": [(b"host", b"127.0.0.1")],
    "client": ("127.0.0.1", 50000),
    "server": ("127.0.0.1", 80),
}


async def test_a_client_gone_while_events_are_queued_ends_the_stream_without_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "runs" / "classify" / "night").mkdir(parents=True)
    fifth = asyncio.Event()

    async def follow(*_: Any, **__: Any) -> AsyncIterator[tail.RunEvent]:
        for n in range(1, 1000):
            if n == 5:
                fifth.set()  # 1 is being sent, 2 waits in the response's buffer, 3 in the keep-alive task's send
            yield tail.RunEvent("result", f'{{"n": {n}}}', f"r{n}-e0")

    monkeypatch.setattr(tail, "follow", follow)
    app = create_app(tmp_path / "runs", tmp_path / "jobs")
    stuck = asyncio.Event()  # the client reads nothing more after the first event
    requests = iter([{"type": "http.request", "body": b"", "more_body": False}])
    sent: list[bytes] = []

    async def receive() -> dict[str, Any]:
        request = next(requests, None)
        if request is not None:
            return request
        await fifth.wait()
        for _ in range(20):  # let every task reach the await it blocks on
            await asyncio.sleep(0)
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            sent.append(message["body"])
            await stuck.wait()

    path = "/runs/classify/night/events"
    async with asyncio.timeout(10):
        await app({**SCOPE, "path": path, "raw_path": path.encode()}, receive, send)
    assert sent and b'"n": 1' in sent[0] and fifth.is_set()


async def _broken(scope: Any, receive: Any, send: Any) -> None:
    if scope["path"] == "/after":
        await send({"type": "http.response.start", "status": 200, "headers": []})
    raise anyio.BrokenResourceError


async def test_only_a_started_response_losing_its_client_is_quiet() -> None:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(_: Any) -> None:
        return None

    app = QuietHangup(_broken)
    await app({**SCOPE, "path": "/after"}, receive, send)
    with pytest.raises(ExceptionGroup) as raised:  # nothing answered yet: a real failure, raised as before
        await app({**SCOPE, "path": "/before"}, receive, send)
    assert raised.group_contains(anyio.BrokenResourceError)
