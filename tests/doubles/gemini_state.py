"""The state of the test server's Gemini API: how new batches behave, the batches and files made, what
was received, and the counters tests read and wait on (from any thread, while the handlers run on the
server's loop).

Faults (``configure``, ``GeminiConfig``): ``held`` (batches end on ``release()``), ``expire_after`` (only
the first N requests are answered, the batch ends EXPIRED and says nothing of the rest), ``hold_create``
(the batch is made, the answer to the create call waits for ``release()``), ``hold_results_after`` (the
output of the first N ended batches is served; a read of any other ended batch, which carries its
responses, or of its results file waits for ``release()``: a client killed while downloading them).
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

__all__ = ["Batch", "GeminiConfig", "GeminiLedger", "GeminiStats"]


@dataclass(frozen=True)
class GeminiConfig:
    """How new batches behave (see the module docstring)."""

    held: bool = False
    expire_after: int | None = None
    hold_create: bool = False
    hold_results_after: int | None = None


@dataclass(frozen=True)
class GeminiStats:
    """What the Gemini API saw."""

    online: int  # :generateContent calls
    batches: int
    lines: int  # batch requests answered (response or error), over all batches
    states: dict[str, str]  # batch name -> state
    parked: int  # create and output answers waiting for release()
    cancelled: int
    by_key: dict[str, int] = field(repr=False)  # attempts per last-user-message text, both lanes


@dataclass
class Batch:
    """One batch: its long-running operation as served, its requests, where they came from, its events."""

    op: dict[str, Any]
    requests: list[dict[str, Any]]
    from_file: bool = False
    go: asyncio.Event = field(default_factory=asyncio.Event)  # held: may end
    stop: asyncio.Event = field(default_factory=asyncio.Event)  # cancelled


class GeminiLedger:
    """Batches, files, what was received and the counters for one FakeServer, and the test-facing calls."""

    def __init__(self, server: FakeServer) -> None:
        self.server = server
        self.config = GeminiConfig()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._batches: dict[str, Batch] = {}
        self._by_key: Counter[str] = Counter()
        self._online = self._lines = self._parked = self._cancelled = 0
        self._answers: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._served: set[str] = set()  # ended batches whose output was served (hold_results_after)
        self.bodies: list[dict[str, Any]] = []  # every generateContent body and batch request, as received
        self.display_names: list[str] = []
        self.keys: list[str] = []  # every batch request's metadata.key
        self.files: dict[str, bytes] = {}  # uploaded and result files by name
        self._sessions: dict[str, str] = {}  # upload id -> the file's display name

    # -- test-facing, from any thread ----------------------------------------------------

    def configure(self, **changes: Any) -> None:
        """Change how new batches behave (GeminiConfig fields)."""
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
            self.config = GeminiConfig()
            self._batches.clear()
            self._served.clear()
            self._by_key.clear()
            self._online = self._lines = self._parked = self._cancelled = 0
            self.bodies.clear()
            self.display_names.clear()
            self.keys.clear()
            self.files.clear()
            self._sessions.clear()

    def stats(self) -> GeminiStats:
        """A snapshot of the counters."""
        with self._lock:
            return self._stats_locked()

    def wait_for(self, condition: Callable[[GeminiStats], bool], timeout: float = 60.0) -> GeminiStats:
        """Block until ``condition`` holds, woken by every change."""
        with self._changed:
            if not self._changed.wait_for(lambda: condition(self._stats_locked()), timeout):
                raise TimeoutError(f"the fake Gemini API never reached the condition: {self._stats_locked()}")
            return self._stats_locked()

    def _stats_locked(self) -> GeminiStats:
        states = {k: b.op["metadata"]["state"] for k, b in self._batches.items()}
        return GeminiStats(self._online, len(self._batches), self._lines, states, self._parked, self._cancelled,
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

    async def _serve_output(self, name: str) -> None:
        """Park before serving an ended batch's output if ``hold_results_after`` says so."""
        after = self.config.hold_results_after
        if after is not None and name not in self._served and len(self._served) >= after:
            await self._park()
        self._served.add(name)
