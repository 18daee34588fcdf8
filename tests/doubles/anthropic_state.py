"""The state of the test server's Anthropic API: how new batches behave, the batches made, what was
received, and the counters tests read and wait on (from any thread, while the handlers run on the
server's loop).

Faults (``configure``, ``AnthropicConfig``; as ``batches_state`` names them): ``held`` (batches end on
``release()``), ``expire_after`` (only the first N requests are answered, the rest expire),
``hold_create`` (the batch is made, the answer to the create call waits for ``release()``), ``delay_s``,
``refuse`` (every create and list call is answered with this HTTP status, nothing made),
``hold_results_after`` (the results of the first N batches are served; any other batch's wait for
``release()``: a client killed while downloading them).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.doubles.server import FakeServer

__all__ = ["AnthropicConfig", "AnthropicLedger", "AnthropicStats", "Batch"]


@dataclass(frozen=True)
class AnthropicConfig:
    """How new batches behave (see the module docstring)."""

    held: bool = False
    expire_after: int | None = None
    hold_create: bool = False
    delay_s: float = 0.0
    refuse: int | None = None
    hold_results_after: int | None = None


@dataclass(frozen=True)
class AnthropicStats:
    """What the Anthropic API saw."""

    online: int  # /v1/messages calls
    batches: int
    lines: int  # batch requests answered (succeeded or errored), over all batches
    statuses: dict[str, str]  # batch id -> processing_status
    parked: int  # create and results answers waiting for release()
    cancelled: int
    by_key: dict[str, int] = field(repr=False)  # attempts per last-user-message text, both lanes


@dataclass
class Batch:
    """One Message Batch: its object as served, its requests, its results once ended, and its events."""

    obj: dict[str, Any]
    requests: list[dict[str, Any]]
    results: list[dict[str, Any]] = field(default_factory=list)
    go: asyncio.Event = field(default_factory=asyncio.Event)  # held: may end
    stop: asyncio.Event = field(default_factory=asyncio.Event)  # cancelled


class AnthropicLedger:
    """Batches, what was received and the counters for one FakeServer, and the test-facing calls on them."""

    def __init__(self, server: FakeServer) -> None:
        self.server = server
        self.config = AnthropicConfig()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._batches: dict[str, Batch] = {}
        self._by_key: Counter[str] = Counter()  # attempts per lane and key: "online:..." / "batch:..."
        self._online = self._lines = self._parked = self._cancelled = 0
        self._answers: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._served: set[str] = set()  # batches whose results were served (hold_results_after)
        self.bodies: list[dict[str, Any]] = []  # every /v1/messages body and batch request's params, as received
        self.headers: list[dict[str, str]] = []  # the headers of every create call
        self.custom_ids: list[str] = []  # every batch request's id

    # -- test-facing, from any thread ----------------------------------------------------

    def configure(self, **changes: Any) -> None:
        """Change how new batches behave (AnthropicConfig fields)."""
        with self._lock:
            self.config = replace(self.config, **changes)

    def release(self) -> None:
        """Let every held batch end and every parked answer go, and hold no more."""
        with self._lock:
            self.config = replace(self.config, held=False, hold_create=False, hold_results_after=None)
            gates = [b.go for b in self._batches.values()] + ([self._answers] if self._answers else [])
            self._answers = None
            loop = self.server._loop
        for gate in gates:
            if loop is not None:
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(gate.set)

    def reset(self) -> None:
        """Forget batches and counters."""
        self.release()
        with self._lock:
            self.config = AnthropicConfig()
            self._batches.clear()
            self._served.clear()
            self._by_key.clear()
            self._online = self._lines = self._parked = self._cancelled = 0
            self.bodies.clear()
            self.headers.clear()
            self.custom_ids.clear()

    def stats(self) -> AnthropicStats:
        """A snapshot of the counters."""
        with self._lock:
            return self._stats_locked()

    def wait_for(self, condition: Callable[[AnthropicStats], bool], timeout: float = 60.0) -> AnthropicStats:
        """Block until ``condition`` holds, woken by every change."""
        with self._changed:
            if not self._changed.wait_for(lambda: condition(self._stats_locked()), timeout):
                raise TimeoutError(f"the fake Anthropic API never reached the condition: {self._stats_locked()}")
            return self._stats_locked()

    def _stats_locked(self) -> AnthropicStats:
        statuses = {k: b.obj["processing_status"] for k, b in self._batches.items()}
        return AnthropicStats(self._online, len(self._batches), self._lines, statuses, self._parked, self._cancelled,
                              dict(self._by_key))  # fmt: skip

    # -- for the handlers, on the server's loop ------------------------------------------

    def _attempt(self, key: str, lane: str) -> int:
        """One more attempt of the message ``key`` (in all and in ``lane``); how many in ``lane``."""
        with self._lock:
            self._by_key[key] += 1
            self._by_key[f"{lane}:{key}"] += 1
            return self._by_key[f"{lane}:{key}"]

    async def _park(self) -> None:
        """Wait for ``release()``, counted in ``parked``."""
        if self._answers is None:
            self._answers = asyncio.Event()
        gate = self._answers
        with self._lock:
            self._parked += 1
            self._changed.notify_all()
        try:
            await gate.wait()
        finally:
            with self._lock:
                self._parked -= 1
                self._changed.notify_all()
