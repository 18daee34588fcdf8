"""A weighted rate limiter (GCRA, as aiometer paces): so many units a minute, a second's worth at most at once.

The state is one number, the theoretical arrival time ``tat``: the bucket's level is
``(tat - now) × rate``. A take of ``n`` units may go once ``level + n ≤ capacity``; it then adds
``n`` (so a charge larger than the whole capacity waits for an empty bucket, then overdraws it and
the next take waits longer). ``settle`` corrects a charge after the fact (the real token count of
an answer) without waiting. Waiters are served first come, first served.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

__all__ = ["Bucket"]

# A deadline this close counts as reached: a clock that ticks in whole microseconds (the tests'
# looptime) may wake a sleeper a hair early, and sleeping again for nothing would never end.
_SETTLE_S = 1e-6


class Bucket:
    """``per_minute`` units a minute, at most ``burst_s`` seconds' worth at once; starts full."""

    def __init__(self, per_minute: float, burst_s: float = 1.0, clock: Callable[[], float] | None = None) -> None:
        if per_minute <= 0:
            raise ValueError(f"a rate limit must be > 0 a minute, got {per_minute}")
        self.per_minute = per_minute
        self.capacity = max(per_minute * burst_s / 60, 1.0)
        self._interval = 60.0 / per_minute  # seconds one unit takes to drain
        self._clock = clock or (lambda: asyncio.get_running_loop().time())
        self._tat: float | None = None  # full as of its first use, not as of the clock's zero
        self._turn = asyncio.Lock()  # first come, first served
        self._changed = asyncio.Event()

    def _now_tat(self) -> tuple[float, float]:
        now = self._clock()
        if self._tat is None:
            # Start full: a fresh bucket would let a second's worth out at once on top of the minute's
            # rate, which a provider counting a rolling minute refuses at the minute's end.
            self._tat = now + self.capacity * self._interval
        return now, max(self._tat, now)

    @property
    def level(self) -> float:
        """Units in the bucket now (0 when empty)."""
        now, tat = self._now_tat()
        return (tat - now) / self._interval

    def has_capacity(self, amount: float) -> bool:
        """Whether ``amount`` could be taken now without waiting."""
        return self._wait_for(min(amount, self.capacity)) <= _SETTLE_S

    def _wait_for(self, amount: float) -> float:
        now, tat = self._now_tat()
        room_at = tat + amount * self._interval - self.capacity * self._interval
        return room_at - now

    async def take(self, amount: float) -> None:
        """Wait until ``amount`` fits, then add it (more than the capacity waits for an empty bucket)."""
        async with self._turn:
            while (wait := self._wait_for(min(amount, self.capacity))) > _SETTLE_S:
                self._changed.clear()
                with contextlib.suppress(TimeoutError):  # a settle that gives units back lets it go sooner
                    await asyncio.wait_for(self._changed.wait(), wait)
            self.settle(amount)

    def settle(self, amount: float) -> None:
        """Add ``amount`` more (or give back, if negative) without waiting; the level never goes below 0."""
        now, tat = self._now_tat()
        self._tat = max(now, tat + amount * self._interval)
        if amount < 0:
            self._changed.set()
