"""The one retry policy: what is retried, how long to wait, when to give up.

A call that fails crosses the litellm boundary as a ``ProviderFailure`` that says what it means
(``runner.provider.failures``); this policy only reads its fields. Failures marked RETRY (rate limits,
time-outs, connection errors, 5xx, broken streams) are retried with full-jitter exponential
back-off, never sooner than the provider's Retry-After; the rest end the attempts at once.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt
from tenacity.wait import wait_base

from runner.provider.failures import Disposition, ProviderFailure

__all__ = ["Outcome", "RetryPolicy", "Sleep", "pause_after", "wait_full_jitter", "wait_provider"]

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]
Random = Callable[[], float]
OnRetry = Callable[[ProviderFailure, int, float], None]


class wait_full_jitter(wait_base):  # noqa: N801  (named like tenacity's own waits)
    """Full jitter: a uniform draw below min(``max``, ``base`` × 2^(attempt − 1)); ``rng`` is injectable."""

    def __init__(self, base: float, max: float, rng: Random = random.random) -> None:
        self.base, self.max, self.rng = base, max, rng

    def ceiling(self, attempt: int) -> float:
        """The longest wait after ``attempt`` failed attempts."""
        return min(self.max, self.base * 2.0 ** min(attempt - 1, 64))

    def __call__(self, retry_state: RetryCallState) -> float:
        return self.rng() * self.ceiling(retry_state.attempt_number)


class wait_provider(wait_base):  # noqa: N801
    """The fallback wait, but never less than the Retry-After the provider sent (plus a little jitter)."""

    def __init__(self, fallback: wait_base, jitter: float = 0.1, rng: Random = random.random) -> None:
        self.fallback = fallback
        self.jitter = jitter
        self.rng = rng

    def __call__(self, retry_state: RetryCallState) -> float:
        wait = self.fallback(retry_state)
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        hint = exc.retry_after if isinstance(exc, ProviderFailure) else None
        if hint is None:
            return wait
        # Jitter upwards only, so workers told the same Retry-After do not all return at one instant.
        return max(wait, hint * (1 + self.jitter * self.rng()))


def pause_after(wait: wait_base, attempt: int) -> float:
    """What a tenacity wait object says to wait after ``attempt`` (1 for the first) failed tries or polls,
    outside a retry loop: one back-off vocabulary for polls and resubmissions too."""
    state = RetryCallState(None, None, (), {})  # type: ignore[arg-type]  # only attempt_number is read
    state.attempt_number = attempt
    return float(wait(state))


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, ProviderFailure) and exc.disposition is Disposition.RETRY


@dataclass(frozen=True)
class RetryPolicy:
    """Attempts and back-off for one request; ``sleep`` and ``rng`` are injectable so tests never wait."""

    max_attempts: int = 6
    base_wait: float = 0.5
    max_wait: float = 60.0
    sleep: Sleep = field(default=asyncio.sleep, compare=False)
    rng: Random = field(default=random.random, compare=False)

    def round_pause(self) -> float:
        """How long to wait before another full round of attempts (a silent endpoint's rows): the
        back-off ceiling of the last attempt, half of it at least."""
        ceiling = wait_full_jitter(self.base_wait, self.max_wait).ceiling(self.max_attempts)
        return ceiling * (0.5 + 0.5 * self.rng())

    def _retrying(self, on_retry: OnRetry | None) -> AsyncRetrying:
        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            if on_retry is not None and isinstance(exc, ProviderFailure) and state.next_action is not None:
                on_retry(exc, state.attempt_number, state.next_action.sleep)

        backoff = wait_full_jitter(self.base_wait, self.max_wait, self.rng)
        return AsyncRetrying(
            stop=stop_after_attempt(self.max_attempts),
            wait=wait_provider(backoff, rng=self.rng),
            retry=retry_if_exception(_retryable),
            sleep=self.sleep,
            before_sleep=before_sleep,
            reraise=True,
        )

    async def call(self, send: Callable[[], Awaitable[T]], on_retry: OnRetry | None = None) -> Outcome[T]:
        """Call ``send()`` until it succeeds, fails for good, or runs out of attempts.

        ``send`` raises ProviderFailure for a failed call; anything else is a bug and propagates.
        Most calls succeed at once, so tenacity's machinery (~80 µs) is only built after a first
        retryable failure, which it is handed as its own first attempt.
        """
        try:
            return Outcome(await send(), None, 1)
        except ProviderFailure as failure:
            if not _retryable(failure) or self.max_attempts <= 1:
                return Outcome(None, failure, 1)
            first: ProviderFailure | None = failure

        async def again() -> T:
            nonlocal first
            if first is not None:  # attempt 1 already happened: tenacity sees its failure, waits, retries
                failure, first = first, None
                raise failure
            return await send()

        attempts = 0
        try:
            async for attempt in self._retrying(on_retry):
                with attempt:
                    attempts = attempt.retry_state.attempt_number
                    value = await again()
        except ProviderFailure as failure:
            return Outcome(None, failure, attempts)
        return Outcome(value, None, attempts)

    async def value(self, send: Callable[[], Awaitable[T]]) -> T:
        """``send()``'s value, retried as ``call`` retries it; its last failure raised if it never works."""
        outcome = await self.call(send)
        if outcome.error is not None:
            raise outcome.error
        return outcome.value  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class Outcome(Generic[T]):
    """What came of a request: its value or its last failure, and how many attempts it took."""

    value: T | None
    error: ProviderFailure | None
    attempts: int
