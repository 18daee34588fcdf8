"""A client that goes away in the middle of a stream is no error of the server's.

FastAPI's ``EventSourceResponse`` (0.165) forwards events through two memory streams and a keep-alive
task. When a browser closes the page while events are queued, the request's exit stack closes the
stream the response reads before it cancels that task, so the task's pending send raises anyio's
``BrokenResourceError`` and uvicorn logs "Exception in ASGI application" with a traceback, for an
ordinary disconnect (fastapi discussion 15725; the fix proposed there was not merged). The same
happens with starlette's ``ClientDisconnect`` under ASGI spec 2.4 servers. Once the response has
started there is nothing left to answer, so this middleware lets exactly those failures go at debug
level; any other failure, or one before the response started, is raised as before.
"""

from __future__ import annotations

import logging

import anyio
from starlette.requests import ClientDisconnect

from runner.serve.auth import App, Message, Receive, Scope, Send

__all__ = ["QuietHangup"]

logger = logging.getLogger(__name__)

GONE = (anyio.BrokenResourceError, anyio.ClosedResourceError, ClientDisconnect)


class QuietHangup:
    """ASGI middleware: a response that started and lost its client ends quietly."""

    def __init__(self, app: App) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except* GONE as gone:
            if not started:
                raise
            logger.debug("%s: the client went away mid-response (%r)", scope.get("path"), gone.exceptions[0])
