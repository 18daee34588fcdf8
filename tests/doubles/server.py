"""The fake provider's aiohttp app: every endpoint on one port, its admin endpoints, and serving until shut down.

OpenAI's ``/v1/chat/completions`` (``chat``), ``/v1/embeddings``, ``/v1/completions`` and
``/v1/responses`` (``endpoints``), ``/v1/models``, the Files and Batch API (``batches``), Anthropic's
API at the root (``anthropic``) and Gemini's under ``/v1beta`` (``gemini``); ``GET /_stats``,
``POST /_reset`` and ``POST /_config`` let another process read and steer it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import asdict
from typing import Final

from aiohttp import web

from tests.doubles.anthropic import FakeAnthropic
from tests.doubles.batches import FakeBatches
from tests.doubles.chat import ChatEndpoint
from tests.doubles.config import HOST, FaultConfig
from tests.doubles.endpoints import mount
from tests.doubles.gemini import FakeGemini
from tests.doubles.wire import error_body

MODELS: Final = ("gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "gpt-4.1")


class FakeServer(ChatEndpoint):
    """The request handlers and their counters; handlers run on one loop, readers may be anywhere."""

    def __init__(self, config: FaultConfig | None = None) -> None:
        """Set up empty counters and the other APIs; nothing listens until ``serve`` runs."""
        super().__init__(config)
        self.batches = FakeBatches(self)  # /v1/files and /v1/batches
        self.anthropic = FakeAnthropic(self)  # /v1/messages and /v1/messages/batches (tests/doubles/anthropic.py)
        self.gemini = FakeGemini(self)  # /v1beta: generateContent and Batch Mode (tests/doubles/gemini.py)

    def make_app(self) -> web.Application:
        """A fresh aiohttp app for these handlers (an app is tied to the first loop that runs it)."""
        app = web.Application(client_max_size=256 * 1024**2)  # batch input files: up to OpenAI's 200 MB
        app.add_routes(
            [
                web.post("/v1/chat/completions", self._chat),
                web.post("/chat/completions", self._chat),
                web.post("/openai/deployments/{deployment}/chat/completions", self._chat),  # Azure OpenAI's
                web.post("/v1/openai/deployments/{deployment}/chat/completions", self._chat),  # an api_base of …/v1
                web.get("/v1/models", self._models),
                web.get("/models", self._models),
                web.get("/_stats", self._stats_handler),
                web.post("/_reset", self._reset_handler),
                web.post("/_config", self._config_handler),
                *self.batches.routes(),
                *self.anthropic.routes(),
                *self.gemini.routes(),
            ]
        )
        mount(app, self)  # /v1/embeddings, /v1/completions, /v1/responses
        return app

    def reset(self) -> None:
        """Clear counters, ``times`` and quota state as ``ServerState.reset`` does, and reset the other APIs."""
        super().reset()
        self.batches.reset()
        self.anthropic.reset()
        self.gemini.reset()

    # -- serving -----------------------------------------------------------------------

    async def serve(self, port: int, on_ready: Callable[[str], None], host: str = HOST) -> None:
        """Listen on ``host``:``port`` (0 picks a free one) until ``shutdown`` or cancellation."""
        self._stopping = asyncio.Event()  # fresh per loop: an Event binds to the loop that awaits it
        self._loop = asyncio.get_running_loop()
        runner = web.AppRunner(self.make_app(), access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            await site.start()
            bound = runner.addresses[0][1]
            on_ready(f"http://{host}:{bound}/v1")
            await self._stopping.wait()
        finally:
            self._stopping.set()  # wake handlers parked in an injected timeout so cleanup is quick
            self.release()
            await runner.cleanup()

    def shutdown(self) -> None:
        """Ask ``serve`` to return; call on the server's loop."""
        self._stopping.set()

    # -- the admin endpoints -------------------------------------------------------------

    async def _models(self, request: web.Request) -> web.Response:
        data = [{"id": m, "object": "model", "created": 1715367049, "owned_by": "system"} for m in MODELS]
        return web.json_response({"object": "list", "data": data})

    async def _stats_handler(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats().to_json())

    async def _reset_handler(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"ok": True})

    async def _config_handler(self, request: web.Request) -> web.Response:
        try:
            changes = await request.json()
            if isinstance(changes, dict):
                return web.json_response(asdict(self.configure(changes)))
            message = "expected a JSON object"
        except ValueError as exc:  # bad JSON and bad config values alike
            message = str(exc)
        return web.json_response(error_body(400, "", f"fake provider: {message}"), status=400)
