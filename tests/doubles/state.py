"""The fake provider's state: request counters, holds, admission (random faults, quota) and its clock.

Requests are counted in total, per status ("200", "429", ..., "timeout", "drop", "stream_break",
"stream_truncate", "stream_malformed", and "quota_429", a subset of "429"), per last-user-message text
and per client address (the peer's IP: which machine, or network namespace, sent them).

Tests can also hold requests: ``hold(predicate)`` parks every request whose last user message matches
until ``release()`` (or reset, or shutdown), so a test can kill or stop a run while exactly those
requests are in flight; ``wait_for(condition)`` blocks until the counters satisfy ``condition``,
woken by each request rather than by polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from tests.doubles.chat_request import ChatRequest, RequestInfo
from tests.doubles.config import RANDOM_KINDS, FaultConfig
from tests.doubles.directives import Fault
from tests.doubles.quota import Quota, QuotaDecision


@dataclass(frozen=True)
class Stats:
    """A point-in-time copy of the server's request counters."""

    total: int
    # "200", "429", ..., "timeout", "drop", "stream_break|truncate|malformed"; "quota_429" is a
    # subset of "429" (the ones the rpm/tpm quota refused), so these counts may sum past total.
    by_status: dict[str, int]
    by_key: dict[str, int]  # attempts per last-user-message text
    last_requests: dict[str, RequestInfo]
    tokens_charged: int = 0  # tokens the rpm/tpm quota charged to admitted requests (0 with no limit)
    held: int = 0  # requests parked by a hold right now (see FakeProvider.hold)
    # the usage of the last answer per last-user-message text, whether or not a fault kept it from the client
    usage_by_key: dict[str, dict[str, Any]] = field(default_factory=dict)
    by_peer: dict[str, int] = field(default_factory=dict)  # chat requests per client IP address

    def last_request_for(self, key: str) -> RequestInfo:
        """The most recent request whose last user message was ``key``."""
        try:
            return self.last_requests[key]
        except KeyError:
            raise KeyError(f"no request seen with last user message {key!r}") from None

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form served by ``GET /_stats``."""
        return {
            "total": self.total,
            "by_status": self.by_status,
            "by_key": self.by_key,
            "last_request": {key: asdict(info) for key, info in self.last_requests.items()},
            "tokens_charged": self.tokens_charged,
            "by_peer": self.by_peer,
        }


@dataclass(frozen=True)
class Plan:
    """How to treat one admitted request, decided atomically under the state lock."""

    fault: Fault | None
    latency_s: float
    quota: QuotaDecision | None = None  # None when no rpm/tpm limit is configured


class ServerState:
    """The counters, holds and admission shared by every endpoint; safe to read from any thread."""

    def __init__(self, config: FaultConfig | None = None) -> None:
        """Set up empty counters; nothing listens until ``serve`` runs."""
        self._config = config or FaultConfig()
        # A plain lock (not asyncio) so test threads can read stats without a loop round-trip.
        self._lock = threading.Lock()
        self._rng = random.Random(self._config.seed)
        self._total = 0
        self._by_status: Counter[str] = Counter()
        self._by_key: Counter[str] = Counter()
        self._by_peer: Counter[str] = Counter()
        self._last: dict[str, RequestInfo] = {}
        self._usage: dict[str, dict[str, Any]] = {}
        self._quota = Quota()
        self.clock: Callable[[], float] = time.monotonic  # the quota window's; a test may put a hand-moved one here
        self._stopping = asyncio.Event()
        # Held requests: parked on ``_gate`` (made on the serving loop) until released. ``_changed``
        # wakes test threads in ``wait_for`` whenever a counter moves.
        self._changed = threading.Condition(self._lock)
        self._hold: Callable[[str], bool] | None = None
        self._held = 0
        self._gate: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- state, safe to call from any thread -------------------------------------------

    @property
    def config(self) -> FaultConfig:
        """The current server-wide fault configuration."""
        return self._config

    def configure(self, changes: Mapping[str, Any]) -> FaultConfig:
        """Merge ``changes`` into the fault config; a new ``seed`` restarts the random sequence."""
        with self._lock:
            self._config = self._config.merged(changes)
            if "seed" in changes:
                self._rng.seed(self._config.seed)
            return self._config

    def reset(self) -> None:
        """Clear all counters, ``times`` and quota state, and restart the seeded random sequence."""
        with self._lock:
            self._total = 0
            self._by_status.clear()
            self._by_key.clear()
            self._by_peer.clear()
            self._last.clear()
            self._usage.clear()
            self._quota.clear()
            self._rng.seed(self._config.seed)
        self.release()

    def stats(self) -> Stats:
        """Snapshot the counters."""
        with self._lock:
            return self._stats_locked()

    def hold(self, predicate: Callable[[str], bool]) -> None:
        """Park every request whose last user message satisfies ``predicate`` until ``release``."""
        with self._lock:
            self._hold = predicate

    def release(self) -> None:
        """Stop holding: every parked request goes on and is answered; safe from any thread."""
        with self._lock:
            self._hold = None
            gate, self._gate, loop = self._gate, None, self._loop
        if gate is not None and loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already closed: nothing is parked
                loop.call_soon_threadsafe(gate.set)

    def wait_for(self, condition: Callable[[Stats], bool], timeout: float) -> Stats:
        """Block until the counters satisfy ``condition``; TimeoutError after ``timeout`` seconds."""
        with self._changed:
            if not self._changed.wait_for(lambda: condition(self._stats_locked()), timeout):
                raise TimeoutError(f"the fake provider never reached the condition: {self._stats_locked()}")
            return self._stats_locked()

    def _stats_locked(self) -> Stats:
        by_status, by_key, last = dict(self._by_status), dict(self._by_key), dict(self._last)
        return Stats(self._total, by_status, by_key, last, self._quota.charged, self._held, dict(self._usage),
                     dict(self._by_peer))  # fmt: skip

    async def _park_if_held(self, key: str) -> None:
        with self._lock:
            if self._hold is None or not self._hold(key):
                return
            if self._gate is None:
                self._gate = asyncio.Event()
            gate = self._gate
            self._held += 1
            self._changed.notify_all()
        try:
            await gate.wait()
        finally:
            with self._lock:
                self._held -= 1
                self._changed.notify_all()

    def _admit(self, request: ChatRequest, charge: int, peer: str | None = None) -> Plan:
        # A quota-refused request still counts as an attempt of its message for `times`.
        with self._lock:
            self._total += 1
            self._by_key[request.key] += 1
            if peer is not None:
                self._by_peer[peer] += 1
            self._last[request.key] = request.info
            attempt = self._by_key[request.key]
            fault, latency_s = self._draw()
            quota = None
            if self._config.rpm_limit is not None or self._config.tpm_limit is not None:
                quota = self._quota.check(self._config, self.clock(), charge, request.info.model)
                if quota.refused is not None:
                    self._by_status["429"] += 1
                    self._by_status["quota_429"] += 1
                    self._changed.notify_all()
                    return Plan(None, 0.0, quota)
            directive = request.directives.fault
            if directive is not None:
                # A [[fail]] directive opts the row out of random faults, even once its `times` ran out.
                fault = directive if directive.times is None or attempt <= directive.times else None
            self._by_status["200" if fault is None else fault.status] += 1
            self._changed.notify_all()
            return Plan(fault, latency_s + request.directives.latency_ms / 1000, quota)

    def _draw(self) -> tuple[Fault | None, float]:
        cfg = self._config
        latency_ms = cfg.latency_ms
        if cfg.latency_mean_ms > 0:
            if cfg.latency_dist == "exponential":
                latency_ms += self._rng.expovariate(1 / cfg.latency_mean_ms)
            else:
                # Pick mu so the distribution's mean, not its median, equals latency_mean_ms.
                mu = math.log(cfg.latency_mean_ms) - cfg.latency_sigma**2 / 2
                latency_ms += self._rng.lognormvariate(mu, cfg.latency_sigma)
        # Always draw, so one request's fault doesn't depend on which probabilities are non-zero.
        u = self._rng.random()
        for kind, name in RANDOM_KINDS:
            p: float = getattr(cfg, name)
            if u < p:
                return Fault(kind, retry_after=cfg.retry_after, sleep=cfg.timeout_sleep), latency_ms / 1000
            u -= p
        return None, latency_ms / 1000

    def _count_rejected(self) -> None:
        # A malformed request has no trustworthy key, so only the totals see it.
        with self._lock:
            self._total += 1
            self._by_status["400"] += 1

    async def _sleep(self, seconds: float) -> None:
        # Cut short by shutdown, so a request parked in an injected stall does not hold the server up.
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), seconds)
