"""What the three Batch API doubles (OpenAI's, Anthropic's, Gemini's) keep alike: a config of faults
tests change, batches by id, attempts per message, answers parked until ``release()``, and counters
that tests read and wait on from any thread while the handlers run on the server's loop.

Each double's state module names its own config, stats and batch fields; this holds the locking,
waiting and parking they share, so a fix to one (a missed wake-up, a gate set on a closed loop)
is a fix to all three.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar

if TYPE_CHECKING:
    from tests.doubles.server import FakeServer

__all__ = ["Ledger"]


class Faults(Protocol):
    """A double's config: a frozen dataclass of faults (``HOLDS`` names those ``release()`` ends)."""

    __dataclass_fields__: ClassVar[dict[str, Any]]


class Held(Protocol):
    """A batch that a ``held`` config keeps from ending until its gate opens."""

    go: asyncio.Event


ConfigT = TypeVar("ConfigT", bound=Faults)
StatsT = TypeVar("StatsT")
BatchT = TypeVar("BatchT", bound=Held)


class Ledger(Generic[ConfigT, StatsT, BatchT]):
    """The shared half of a Batch API double's state (see the module docstring). A subclass sets
    ``API`` (named in time-outs) and ``fresh_config``, and writes ``_stats_locked`` and ``_forget_locked``."""

    API = "Batch API"
    HOLDS: ClassVar[tuple[str, ...]] = ("held", "hold_create", "hold_results_after")  # release() ends these

    def __init__(self, server: FakeServer) -> None:
        self.server = server
        self.config = self.fresh_config()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._batches: dict[str, BatchT] = {}
        self._by_key: Counter[str] = Counter()  # attempts per message key (and per "lane:key")
        self._lines = self._parked = self._cancelled = 0
        self._answers: asyncio.Event | None = None  # parks held create/results answers
        self._tasks: set[asyncio.Task[None]] = set()
        self._served: set[str] = set()  # batches whose results were served (hold_results_after)

    @staticmethod
    def fresh_config() -> ConfigT:
        """The config of a new or reset double: no faults."""
        raise NotImplementedError

    # -- test-facing, from any thread ----------------------------------------------------

    def configure(self, **changes: Any) -> None:
        """Change how new batches behave (the config's fields)."""
        with self._lock:
            self.config = replace(self.config, **changes)

    def release(self) -> None:
        """Let every held batch end and every parked answer go, and hold no more."""
        with self._lock:
            fresh = self.fresh_config()
            self.config = replace(self.config, **{name: getattr(fresh, name) for name in self.HOLDS})
            gates = [b.go for b in self._batches.values()]
            self._open(gates + self._take_answers())

    def reset(self) -> None:
        """Forget batches and counters."""
        self.release()
        with self._lock:
            self.config = self.fresh_config()
            self._batches.clear()
            self._served.clear()
            self._by_key.clear()
            self._lines = self._parked = self._cancelled = 0
            self._forget_locked()

    def stats(self) -> StatsT:
        """A snapshot of the counters."""
        with self._lock:
            return self._stats_locked()

    def wait_for(self, condition: Callable[[StatsT], bool], timeout: float = 60.0) -> StatsT:
        """Block until ``condition`` holds, woken by every change."""
        with self._changed:
            if not self._changed.wait_for(lambda: condition(self._stats_locked()), timeout):
                raise TimeoutError(f"the fake {self.API} never reached the condition: {self._stats_locked()}")
            return self._stats_locked()

    def _stats_locked(self) -> StatsT:
        raise NotImplementedError

    def _forget_locked(self) -> None:
        """Clear what this double keeps beyond the shared state (under the lock)."""

    # -- under the lock, for release() ---------------------------------------------------

    def _take_answers(self) -> list[asyncio.Event]:
        """The gate parked answers wait on, taken: the next parked answer makes a new one."""
        gate, self._answers = self._answers, None
        return [gate] if gate is not None else []

    def _open(self, gates: Iterable[asyncio.Event]) -> None:
        """Set each gate on the server's loop (from any thread; nothing once the loop is closed)."""
        loop = self.server._loop
        for gate in gates:
            if loop is not None:
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(gate.set)

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

    async def _serve_results(self, name: str) -> None:
        """Park before serving an ended batch's results if ``hold_results_after`` says so: the results of
        the first N batches are served, any other batch's wait for ``release()``."""
        after = getattr(self.config, "hold_results_after", None)
        if after is not None and name not in self._served and len(self._served) >= after:
            await self._park()
        self._served.add(name)
