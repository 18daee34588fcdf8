"""The project's fake provider in its own process, timing the window in which it was busy.

    python -m bench.server [tests.doubles flags]   # prints the api_base, serves until killed

It is ``python -m tests.doubles`` (same flags, same answers, same [[latency:MS]] directives) plus
``GET /_window``: when the first chat (or embeddings) request since the last ``POST /_window/reset`` arrived and
when the last answer left (``time.monotonic()``, one clock for every process on the machine), and
how many were answered. That window is what the benchmarks time a client by, so its start-up
(importing litellm takes about 2 s) and shut-down are not counted as time spent on requests.
``GET /_window?requests`` adds every chat request as ``[arrived, answered, client port]`` (the port
tells the client's connections apart), from which bench.flat reads how long a client took between
an answer and its next request. Flat latency is the fake provider's own ``--latency-ms``.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import fields

from aiohttp import web

from tests.doubles.config import FaultConfig
from tests.doubles.server import FakeServer

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class TimedServer(FakeServer):
    """A FakeServer that notes when it first got a chat or embeddings request and when it last answered one."""

    def __init__(self, config: FaultConfig) -> None:
        super().__init__(config)
        self._window_first: float | None = None
        self._window_last: float | None = None
        self._window_answered = 0
        self._arrivals: list[float] = []
        self._requests: list[list[float | int | None]] = []  # [arrived, answered, client port]

    def make_app(self) -> web.Application:
        app = super().make_app()
        app.middlewares.append(self._timed)
        app.add_routes([web.get("/_window", self._window), web.post("/_window/reset", self._reset_window)])
        return app

    @web.middleware
    async def _timed(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.endswith(("/chat/completions", "/embeddings")):
            return await handler(request)
        now = time.monotonic()
        self._arrivals.append(now)
        peer = request.transport.get_extra_info("peername") if request.transport else None
        timing: list[float | int | None] = [now, None, peer[1] if peer else None]
        self._requests.append(timing)
        if self._window_first is None:
            self._window_first = now
        try:
            return await handler(request)
        finally:
            self._window_last = timing[1] = time.monotonic()
            self._window_answered += 1

    async def _window(self, request: web.Request) -> web.Response:
        window: dict[str, object] = {"first": self._window_first, "last": self._window_last}
        window["answered"] = self._window_answered
        if "arrivals" in request.query:
            window["arrivals"] = self._arrivals
        if "requests" in request.query:
            window["requests"] = self._requests
        return web.json_response(window)

    async def _reset_window(self, request: web.Request) -> web.Response:
        self._window_first = self._window_last = None
        self._window_answered = 0
        self._arrivals.clear()
        self._requests.clear()
        return web.json_response({"ok": True})


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.server", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    integers = ("seed", "rpm_limit", "tpm_limit")
    for name in (f.name for f in fields(FaultConfig) if f.name != "latency_dist"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int if name in integers else float)
    args = vars(parser.parse_args())
    port = args.pop("port")
    server = TimedServer(FaultConfig().merged({k: v for k, v in args.items() if v is not None}))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(server.serve(port, lambda url: print(url, flush=True)))
    sys.exit(0)


if __name__ == "__main__":
    main()
