"""The retry policy with a fake completion function and an injected sleep: no test waits."""

from __future__ import annotations

from typing import Any

import httpx
import litellm
import pytest

from runner.call.retry import RetryPolicy
from runner.provider.failures import Disposition, ProviderFailure, classify, mapped

REQUEST = httpx.Request("POST", "http://127.0.0.1/v1/chat/completions")


def rate_limited(headers: dict[str, str]) -> litellm.RateLimitError:
    response = httpx.Response(429, headers=headers, request=REQUEST)
    return litellm.RateLimitError("slow down", llm_provider="openai", model="m", response=response)


def server_error() -> litellm.InternalServerError:
    return litellm.InternalServerError("boom", llm_provider="openai", model="m")


def bad_request() -> litellm.BadRequestError:
    return litellm.BadRequestError("bad", model="m", llm_provider="openai")


class Script:
    """A completion function that raises the queued errors, then answers."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        with mapped():  # as the Caller does: the failure is classified where it crosses the boundary
            if self.errors:
                raise self.errors.pop(0)
        return "answer"


class Sleeps(list[float]):
    async def __call__(self, seconds: float) -> None:
        self.append(seconds)


async def test_a_retry_never_comes_sooner_than_retry_after() -> None:
    sleeps = Sleeps()
    policy = RetryPolicy(max_attempts=5, base_wait=0.01, max_wait=0.02, sleep=sleeps)
    script = Script(rate_limited({"retry-after": "7"}), rate_limited({"retry-after-ms": "250"}), server_error())
    seen: list[Any] = []
    outcome = await policy.call(script, on_retry=lambda f, n, wait: seen.append((f.code, n)))

    assert outcome.value == "answer" and outcome.attempts == 4 and script.calls == 4
    assert 7.0 <= sleeps[0] <= 7.7 and 0.25 <= sleeps[1] <= 0.275 and sleeps[2] <= 0.02
    assert seen == [("rate_limited", 1), ("rate_limited", 2), ("server_error", 3)]


@pytest.mark.parametrize("draw", [1.0, 0.5, 0.0])
async def test_back_off_grows_exponentially_with_full_jitter(draw: float) -> None:
    """The jitter's draw is pinned: each wait is exactly the draw times min(max, base × 2^n)."""
    sleeps = Sleeps()
    policy = RetryPolicy(max_attempts=8, base_wait=1.0, max_wait=30.0, sleep=sleeps, rng=lambda: draw)
    outcome = await policy.call(Script(*[server_error() for _ in range(10)]))

    assert outcome.attempts == 8 and isinstance(outcome.error, ProviderFailure)
    assert outcome.error.code == "server_error" and isinstance(outcome.error.__cause__, litellm.InternalServerError)
    assert sleeps == [draw * c for c in (1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0)]


async def test_the_jitter_draw_spreads_waits_below_the_ceiling() -> None:
    draws = iter([0.25, 0.75, 0.1])
    sleeps = Sleeps()
    policy = RetryPolicy(max_attempts=4, base_wait=2.0, max_wait=60.0, sleep=sleeps, rng=lambda: next(draws))
    await policy.call(Script(*[server_error() for _ in range(3)]))
    assert sleeps == [0.25 * 2.0, 0.75 * 4.0, 0.1 * 8.0]


async def test_request_errors_are_not_retried() -> None:
    sleeps = Sleeps()
    script = Script(bad_request())
    outcome = await RetryPolicy(max_attempts=5, sleep=sleeps).call(script)
    assert outcome.attempts == 1 and script.calls == 1 and sleeps == []
    assert outcome.error is not None and outcome.error.disposition is Disposition.ROW


@pytest.mark.parametrize(
    ("error", "disposition", "code"),
    [
        (litellm.Timeout("slow", model="m", llm_provider="openai"), Disposition.RETRY, "timeout"),
        (litellm.ServiceUnavailableError("down", llm_provider="openai", model="m"), Disposition.RETRY, "server_error"),
        (litellm.BadGatewayError("gw", llm_provider="openai", model="m"), Disposition.RETRY, "server_error"),
        (
            litellm.APIConnectionError("refused", llm_provider="openai", model="m"),
            Disposition.RETRY,
            "connection_error",
        ),
        (
            litellm.ContextWindowExceededError("long", model="m", llm_provider="openai"),
            Disposition.ROW,
            "context_window_exceeded",
        ),
        (
            litellm.ContentPolicyViolationError("no", model="m", llm_provider="openai"),
            Disposition.ROW,
            "content_policy_violation",
        ),
        (
            litellm.AuthenticationError("key", llm_provider="openai", model="m"),
            Disposition.FATAL,
            "authentication_failed",
        ),
        (litellm.NotFoundError("model", model="m", llm_provider="openai"), Disposition.FATAL, "model_not_found"),
        (ValueError("a bug somewhere"), Disposition.ROW, "unexpected_error"),
    ],
)
def test_classification(error: Exception, disposition: Disposition, code: str) -> None:
    failure = classify(error)
    assert (failure.disposition, failure.code) == (disposition, code)


def test_a_refused_connection_is_told_apart_from_a_real_500() -> None:
    import openai

    try:
        try:
            raise openai.APIConnectionError(request=REQUEST)  # type: ignore[arg-type]
        except openai.APIConnectionError:
            raise litellm.InternalServerError("Connection error.", llm_provider="openai", model="m") from None
    except litellm.InternalServerError as exc:
        assert classify(exc).code == "connection_error"
    assert classify(server_error()).code == "server_error"


def test_a_new_round_for_a_silent_endpoint_waits_the_last_attempts_ceiling() -> None:
    """Rows of an endpoint that can't be reached try again in rounds, never in a hot loop."""
    assert RetryPolicy(max_attempts=6, base_wait=0.5, max_wait=60.0, rng=lambda: 1.0).round_pause() == 16.0
    assert RetryPolicy(max_attempts=6, base_wait=0.5, max_wait=60.0, rng=lambda: 0.0).round_pause() == 8.0
    assert RetryPolicy(max_attempts=20, base_wait=0.5, max_wait=60.0, rng=lambda: 1.0).round_pause() == 60.0
