"""When the next request to a model may go: rate limits, Retry-After pauses, adaptive concurrency.

Per model, in the order a request meets them:
1. a pause: a 429 (or a 503 with Retry-After) holds every worker of that model until the provider's
   Retry-After has passed, not just the worker that got it;
2. adaptive concurrency (AIMD): the number of requests in flight is halved on a 429 and grows by
   one per window of clean answers, never above ``--concurrency``;
3. configured limits (``--rpm``, ``--tpm``): buckets (``runner.permits.bucket``) holding one second's worth,
   so requests are spread evenly instead of bursting a minute's quota at once; tokens are charged
   with an estimate before the call and corrected with the real usage after it;
4. learned limits: with no configuration, the per-minute limits the provider announces in its
   x-ratelimit-limit-requests / -tokens headers become the same kind of buckets.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from runner.permits.bucket import Bucket
from runner.permits.reachability import Reachability

__all__ = ["AdaptiveConcurrency", "Charge", "LimitStats", "Limits", "ModelLimits", "TooLarge", "check_fits"]


# Token counts are estimates until the answer says otherwise; pacing a little under the limit keeps
# the estimate's error from tipping a rolling window over it. Requests are counted exactly: no margin.
TOKEN_MARGIN = 0.97


class TooLarge(Exception):
    """A request whose estimated tokens exceed the whole per-minute token limit."""


@dataclass(frozen=True, slots=True)
class Charge:
    """What a request was charged against the token bucket, and what that was made of."""

    prompt: int  # the offline estimate of its prompt
    allowance: int  # its max_tokens
    tokens: int  # the charge: the prompt estimate, corrected by the observed ratio, plus the allowance


def check_fits(tokens: int, tpm: float | None) -> None:
    """Raise TooLarge for a request that no amount of waiting would let under the per-minute token limit."""
    if tpm and tokens > tpm:
        raise TooLarge(
            f"the request needs about {tokens:,} tokens, more than the whole --tpm limit of {tpm:,.0f}; "
            "shorten it, lower max_tokens, or raise --tpm"
        )


class AdaptiveConcurrency:
    """A semaphore whose size moves: halved on a 429 (once per cool-down), +1 per ``size`` clean answers."""

    def __init__(self, ceiling: int, clock: Callable[[], float] = time.monotonic, cooldown: float = 1.0) -> None:
        self.ceiling = ceiling
        self.size = float(ceiling)
        self.in_flight = 0
        self._clock = clock
        self._cooldown = cooldown
        self._last_cut = -float("inf")
        self._changed = asyncio.Condition()

    @property
    def limit(self) -> int:
        """Requests allowed in flight now."""
        return max(1, int(self.size))

    async def __aenter__(self) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self.in_flight < self.limit)
            self.in_flight += 1

    async def __aexit__(self, *exc: object) -> None:
        async with self._changed:
            self.in_flight -= 1
            self._changed.notify_all()

    def rate_limited(self) -> None:
        """Multiplicative decrease, at most once per cool-down so one burst of 429s counts once."""
        now = self._clock()
        if now - self._last_cut >= self._cooldown:
            self._last_cut = now
            self.size = max(1.0, self.size / 2)

    def succeeded(self) -> None:
        """Additive increase: about +1 per ``size`` clean answers."""
        self.size = min(float(self.ceiling), self.size + 1 / self.size)


@dataclass
class LimitStats:
    """What the limits cost and saw, for the manifest and progress."""

    rate_limited: int = 0
    waited_s: float = 0.0
    learned: dict[str, float] = field(default_factory=dict)


def _number(headers: Mapping[str, str], name: str) -> float | None:
    value = headers.get(name)
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class ModelLimits:
    """Everything that decides when the next request to one model may go."""

    def __init__(
        self,
        concurrency: int,
        rpm: float | None = None,
        tpm: float | None = None,
        clock: Callable[[], float] | None = None,
        unreachable_after: float = 60.0,
        unreachable_rows: int = 5,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.requests = Bucket(rpm) if rpm else None
        self.tokens = Bucket(tpm * TOKEN_MARGIN) if tpm else None
        self.configured = {"requests": rpm is not None, "tokens": tpm is not None}
        self.set_limits = (rpm, tpm)  # as configured (a deployment may have its own), for the manifest
        self.tpm = tpm
        self._clock = clock or (lambda: asyncio.get_running_loop().time())
        self.concurrency = AdaptiveConcurrency(concurrency, clock=self._now)
        self.stats = LimitStats()
        self._paused_until = 0.0
        self.prompt_ratio = 1.0  # the provider's prompt count / our offline estimate, tracked
        self.reach = Reachability(self._now, unreachable_after, unreachable_rows)
        self._held, self._held_since = 0, 0.0
        self._sleep = sleep

    def _now(self) -> float:
        return self._clock()

    @property
    def counts_tokens(self) -> bool:
        """Whether requests need a token estimate (a token limit is configured or was learned)."""
        return self.tokens is not None

    def check(self, tokens: int) -> None:
        """Refuse at once a request that no amount of waiting would let through."""
        check_fits(tokens, self.tpm)

    @asynccontextmanager
    async def slot(self, prompt: int = 0, allowance: int = 0) -> AsyncIterator[Charge]:
        """Wait until a request of about ``prompt`` + ``allowance`` tokens may go; hold its place while it runs."""
        charge = Charge(prompt, allowance, round(prompt * self.prompt_ratio) + allowance)
        self._held_now(+1)
        try:
            await self._wait_out_pause()
            await self.concurrency.__aenter__()
        except BaseException:
            self._held_now(-1)
            raise
        try:
            try:
                if self.requests:
                    await self.requests.take(1)
                if self.tokens:
                    await self.tokens.take(charge.tokens)
                await self._wait_out_pause()  # a 429 may have paused everyone while this one queued
            finally:
                self._held_now(-1)
            yield charge
        finally:
            await self.concurrency.__aexit__()

    def _held_now(self, change: int) -> None:
        """Count wall time while at least one request is held, not the sum over requests (which
        would say 160 s of waiting for a 17 s run with ten workers)."""
        self._held += change
        if change > 0 and self._held == 1:
            self._held_since = self._now()
        elif change < 0 and self._held == 0:
            self.stats.waited_s += self._now() - self._held_since

    async def grant(self, requests: int, tokens: float) -> None:
        """Wait out any pause, then take ``requests`` and ``tokens`` at once (a lease for another process)."""
        await self._wait_out_pause()
        if self.requests:
            await self.requests.take(requests)
        if self.tokens and tokens:
            await self.tokens.take(tokens)

    def give_back(self, requests: int, tokens: float) -> None:
        """Return what a lease did not use (or, negative, charge what it used beyond its estimate)."""
        if self.requests and requests:
            self.requests.settle(-requests)
        if self.tokens and tokens:
            self.tokens.settle(-tokens)

    def pause_left(self) -> float:
        """Seconds until a Retry-After pause ends (0 when there is none)."""
        return max(0.0, self._paused_until - self._now())

    async def _wait_out_pause(self) -> None:
        # Not a poll: each sleep lasts until the current deadline, which a later 429 may have moved.
        while (left := self._paused_until - self._now()) > 0:
            await self._sleep(left)

    def settle(self, charge: Charge, prompt_tokens: int | None, completion_tokens: int | None) -> None:
        """Correct a token charge with the real usage, and the prompt estimates to come with it.

        Providers count a request's tokens as its prompt plus its max_tokens, so that is what the
        charge is corrected to; our offline count of the prompt drifts from theirs, so the ratio
        between the two is tracked and applied to later estimates. A refused request (no usage) is
        charged nothing.
        """
        if self.tokens is None:
            return
        if prompt_tokens is None:
            self.tokens.settle(-charge.tokens)
            return
        actual = prompt_tokens + max(completion_tokens or 0, charge.allowance)
        self.tokens.settle(actual - charge.tokens)
        if charge.prompt > 0 and prompt_tokens > 0:
            self.prompt_ratio += 0.1 * (prompt_tokens / charge.prompt - self.prompt_ratio)

    def observe(
        self, headers: Mapping[str, str], *, ok: bool, rate_limited: bool = False, retry_after: float | None = None
    ) -> None:
        """Learn from an answer's (or a refusal's) headers; a 429 or a Retry-After pauses everyone."""
        if ok or headers:  # a refusal with headers came from the provider too: it is reachable
            self.reach.heard()
        if ok:
            self.concurrency.succeeded()
        if rate_limited:
            self.stats.rate_limited += 1
            self.concurrency.rate_limited()
            retry_after = 1.0 if retry_after is None else retry_after
        if retry_after is not None:
            self._paused_until = max(self._paused_until, self._now() + retry_after)
        self._learn({k.lower(): v for k, v in headers.items()})

    def _learn(self, headers: Mapping[str, str]) -> None:
        """Pace to the per-minute limits the provider announces, unless the user set them."""
        for kind in ("requests", "tokens"):
            limit = _number(headers, f"x-ratelimit-limit-{kind}")
            if limit is None or limit <= 0 or self.configured[kind] or self.stats.learned.get(kind) == limit:
                continue
            self.stats.learned[kind] = limit
            # OpenAI-style limits are per minute; a bucket of one second's worth spreads them evenly.
            if kind == "requests":
                self.requests = Bucket(limit)
            else:
                self.tokens = Bucket(limit * TOKEN_MARGIN)
                self.tpm = limit


class Limits:
    """One ModelLimits per model, made on first use with the run's settings."""

    def __init__(
        self,
        concurrency: int,
        rpm: float | None = None,
        tpm: float | None = None,
        unreachable_after: float = 60.0,
        unreachable_rows: int = 5,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.concurrency, self.rpm, self.tpm = concurrency, rpm, tpm
        self.unreachable = (unreachable_after, unreachable_rows)
        self.clock, self.sleep = clock, sleep  # injectable, so tests never wait
        self.models: dict[str, ModelLimits] = {}
        self._own: dict[str, tuple[float | None, float | None]] = {}  # name -> its own rpm, tpm (a deployment's)

    def own_rates(self, name: str, rpm: float | None, tpm: float | None) -> None:
        """Give ``name`` (a deployment) its own requests and tokens per minute, each falling back to the run's."""
        self._own[name] = (rpm, tpm)

    def for_model(self, model: str) -> ModelLimits:
        """The limits of ``model`` (or of a deployment, by its name), made on first use."""
        if model not in self.models:
            after, rows = self.unreachable
            rpm, tpm = self._own.get(model, (None, None))
            self.models[model] = ModelLimits(
                self.concurrency, rpm or self.rpm, tpm or self.tpm, self.clock, after, rows, self.sleep
            )
        return self.models[model]

    def summary(self) -> dict[str, dict[str, object]]:
        """Per model: 429s seen, seconds spent waiting on limits, concurrency now, limits learned."""
        return {
            name: {
                "rate_limited": m.stats.rate_limited,
                "waited_s": round(m.stats.waited_s, 3),
                "concurrency": m.concurrency.limit,
                "concurrency_ceiling": m.concurrency.ceiling,
                "rpm": m.set_limits[0],
                "tpm": m.set_limits[1],
                "learned_limits": dict(m.stats.learned),
            }
            for name, m in sorted(self.models.items())
        }

    def brief(self) -> str:
        """A few words for the progress line."""
        if not self.models:
            return ""
        limit = sum(m.concurrency.limit for m in self.models.values())
        ceiling = sum(m.concurrency.ceiling for m in self.models.values())
        waited = sum(m.stats.waited_s for m in self.models.values())
        return f"concurrency {limit}/{ceiling}, waited {waited:.0f}s"
