"""The one retry policy: what is retried, how long to wait, when to give up.

Rate limits, time-outs, connection errors, 5xx and broken streams are retried with full-jitter
exponential back-off, never sooner than the provider's Retry-After. Everything else is decided by
``runner.call.provider.classify``: a row error goes to errors.jsonl at once, a fatal error stops the run.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)
from tenacity.wait import wait_base

from runner.call.provider import Disposition, Failure, classify

__all__ = ["Outcome", "RetryPolicy", "Sleep", "wait_provider"]

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]
OnRetry = Callable[[Failure, int, float], None]


class wait_provider(wait_base):  # noqa: N801  (named like tenacity's own waits)
    """The fallback wait, but never less than the Retry-After the provider sent (plus a little jitter)."""

    def __init__(self, fallback: wait_base, jitter: float = 0.1, rng: Callable[[], float] = random.random) -> None:
        self.fallback = fallback
        self.jitter = jitter
        self.rng = rng

    def __call__(self, retry_state: RetryCallState) -> float:
        wait = self.fallback(retry_state)
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        hint = classify(exc).retry_after if isinstance(exc, Exception) else None
        if hint is None:
            return wait
        # Jitter upwards only, so workers told the same Retry-After do not all return at one instant.
        return max(wait, hint * (1 + self.jitter * self.rng()))


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, Exception) and classify(exc).disposition is Disposition.RETRY


@dataclass(frozen=True)
class RetryPolicy:
    """Attempts and back-off for one request; ``sleep`` is injectable so tests never wait."""

    max_attempts: int = 6
    base_wait: float = 0.5
    max_wait: float = 60.0
    sleep: Sleep = field(default=asyncio.sleep, compare=False)

    def _retrying(self, on_retry: OnRetry | None) -> AsyncRetrying:
        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            if on_retry is not None and isinstance(exc, Exception) and state.next_action is not None:
                on_retry(classify(exc), state.attempt_number, state.next_action.sleep)

        return AsyncRetrying(
            stop=stop_after_attempt(self.max_attempts),
            wait=wait_provider(wait_random_exponential(multiplier=self.base_wait, max=self.max_wait)),
            retry=retry_if_exception(_retryable),
            sleep=self.sleep,
            before_sleep=before_sleep,
            reraise=True,
        )

    async def call(self, send: Callable[[], Awaitable[T]], on_retry: OnRetry | None = None) -> Outcome[T]:
        """Call ``send()`` until it succeeds, fails for good, or runs out of attempts."""
        attempts = 0
        try:
            async for attempt in self._retrying(on_retry):
                with attempt:
                    attempts = attempt.retry_state.attempt_number
                    value = await send()
        except Exception as exc:
            return Outcome(None, exc, attempts)
        return Outcome(value, None, attempts)


@dataclass(frozen=True, slots=True)
class Outcome(Generic[T]):
    """What came of a request: its value or its last error, and how many attempts it took."""

    value: T | None
    error: Exception | None
    attempts: int
