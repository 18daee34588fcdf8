"""Latency quantiles in fixed memory, for the run's timeline (``runner.run.timeline``)."""

from __future__ import annotations

import math

__all__ = ["Sketch"]


class Sketch:
    """Latency quantiles in fixed memory: counts in log-spaced buckets (±4%) from 1 ms to about 1 h."""

    GAMMA = 1.08
    LOW = 0.001
    SIZE = 200
    _LOG = math.log(GAMMA)
    __slots__ = ("counts", "n")

    def __init__(self) -> None:
        self.counts = [0] * self.SIZE
        self.n = 0

    def add(self, seconds: float) -> None:
        i = 0 if seconds <= self.LOW else min(self.SIZE - 1, int(math.log(seconds / self.LOW) / self._LOG) + 1)
        self.counts[i] += 1
        self.n += 1

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile (the middle of its bucket), or None when nothing was added."""
        if not self.n:
            return None
        rank = q * (self.n - 1)
        seen = 0
        for i, count in enumerate(self.counts):
            seen += count
            if seen > rank:
                return self.LOW if i == 0 else self.LOW * self.GAMMA ** (i - 0.5)
        return self.LOW * self.GAMMA ** (self.SIZE - 1.5)  # pragma: no cover (rank < n always)

    def percentiles(self) -> dict[str, float] | None:
        if not self.n:
            return None
        return {name: round(self.quantile(q) or 0.0, 4) for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))}

    def clear(self) -> None:
        self.counts = [0] * self.SIZE
        self.n = 0
