"""``FakeProvider``: the fake provider serving on 127.0.0.1 in a background thread, as tests start it.

with FakeProvider(latency_ms=50, p429=0.05, seed=1) as provider:   # FaultConfig fields
    ...  # api_base=provider.url; provider.stats(), hold(), release(), wait_for(), configure()
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self

from tests.doubles.anthropic import FakeAnthropic
from tests.doubles.batches import FakeBatches
from tests.doubles.config import HOST, FaultConfig
from tests.doubles.gemini import FakeGemini
from tests.doubles.server import FakeServer
from tests.doubles.state import Stats


class FakeProvider:
    """Runs a FakeServer on 127.0.0.1 (or ``host``) in a background thread with its own event loop."""

    def __init__(
        self, *, port: int = 0, host: str = HOST, enter: Callable[[], None] | None = None, **config: Any
    ) -> None:
        """Accept FaultConfig fields as keyword arguments; ``port=0`` picks a free port. ``enter`` runs in
        the server's thread before it binds (to move that thread into a network namespace, say)."""
        self.server = FakeServer(FaultConfig().merged(config))
        self.url = ""  # the api_base for litellm, e.g. http://127.0.0.1:43123/v1; set by start()
        self._port, self._host, self._enter = port, host, enter
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self) -> Self:
        """Start serving and return once the port is bound."""
        if self._thread is not None:
            raise RuntimeError("FakeProvider is already started")
        self._ready.clear()
        self._error = None
        self._thread = threading.Thread(target=self._run, name="fake-provider", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._thread.join()
            self._thread = None
            raise self._error
        return self

    def stop(self) -> None:
        """Stop serving, wait for the server thread to finish, and re-raise any error it hit."""
        thread, loop = self._thread, self._loop
        if thread is None:
            return
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended on its own
                loop.call_soon_threadsafe(self.server.shutdown)
        thread.join()
        self._thread = self._loop = None
        if self._error is not None:
            raise self._error

    def stats(self) -> Stats:
        """Snapshot of the request counters."""
        return self.server.stats()

    @property
    def batches(self) -> FakeBatches:
        """The Files and Batch API (tests/doubles/batches.py): configure, release, stats, wait_for."""
        return self.server.batches

    @property
    def anthropic(self) -> FakeAnthropic:
        """The Anthropic API (tests/doubles/anthropic.py): configure, release, stats, wait_for."""
        return self.server.anthropic

    @property
    def gemini(self) -> FakeGemini:
        """The Gemini API (tests/doubles/gemini.py): configure, release, stats, wait_for."""
        return self.server.gemini

    @property
    def root(self) -> str:
        """The server's root, the ``api_base`` for anthropic/ models (litellm and the SDK add /v1/...)."""
        return self.url.removesuffix("/v1")

    def configure(self, **config: Any) -> None:
        """Merge FaultConfig fields into the running server's fault config."""
        self.server.configure(config)

    def reset(self) -> None:
        """Clear counters and ``times`` state, and release any hold."""
        self.server.reset()

    def hold(self, predicate: Callable[[str], bool]) -> None:
        """Park requests whose last user message satisfies ``predicate`` until ``release`` (see FakeServer.hold)."""
        self.server.hold(predicate)

    def release(self) -> None:
        """Let every parked request be answered, and hold no more."""
        self.server.release()

    def wait_for(self, condition: Callable[[Stats], bool], timeout: float = 60.0) -> Stats:
        """Block until the counters satisfy ``condition`` (woken by each request, not polled)."""
        return self.server.wait_for(condition, timeout)

    def __enter__(self) -> Self:
        """Start on entering a ``with`` block."""
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Stop on leaving a ``with`` block."""
        self.stop()

    def _run(self) -> None:
        try:
            if self._enter is not None:
                self._enter()
            asyncio.run(self.server.serve(self._port, self._on_ready, self._host))
        # Hand any failure to start()/stop() rather than dying silently in the thread.
        except BaseException as exc:
            self._error = exc
        finally:
            self._ready.set()

    def _on_ready(self, url: str) -> None:
        self.url = url
        self._loop = asyncio.get_running_loop()
        self._ready.set()
