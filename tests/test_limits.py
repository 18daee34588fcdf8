"""Pacing, pauses and adaptive concurrency, in fast-forwarded loop time (looptime): no test waits."""

from __future__ import annotations

import asyncio

import pytest

from runner.permits.bucket import Bucket
from runner.permits.limits import TOKEN_MARGIN, AdaptiveConcurrency, Charge, ModelLimits, TooLarge
from tests.support.run import virtual_time


async def fire(limits: ModelLimits, n: int, tokens: int = 0, hold: float = 0.0) -> list[float]:
    """Start ``n`` requests at once; the loop time at which each got its slot."""
    loop = asyncio.get_running_loop()
    started: list[float] = []

    async def one() -> None:
        async with limits.slot(tokens):
            started.append(loop.time())
            await asyncio.sleep(hold)

    t0 = loop.time()
    await asyncio.gather(*(one() for _ in range(n)))
    return sorted(t - t0 for t in started)


@virtual_time
async def test_a_configured_rpm_spreads_requests_evenly() -> None:
    times = await fire(ModelLimits(concurrency=1000, rpm=600), 100)
    # 600/min = 10/s from the start: no burst of a second's worth on top of the minute's rate.
    assert 0.09 <= times[0] <= 0.11 and 9.9 <= times[-1] <= 10.1
    per_second = [sum(1 for t in times if s <= t < s + 1) for s in range(10)]
    assert all(9 <= n <= 11 for n in per_second), per_second


@virtual_time
async def test_a_configured_tpm_charges_estimates_and_settles_with_real_usage() -> None:
    limits = ModelLimits(concurrency=1000, tpm=60_000)  # 1,000 tokens/s
    times = await fire(limits, 20, tokens=500)
    assert times[-1] == pytest.approx(10 / TOKEN_MARGIN, abs=0.1)  # 20 x 500 tokens at a little under 1,000/s
    # A prompt that was smaller than estimated gives the rest back at once, and later estimates shrink.
    bucket = limits.tokens
    assert bucket is not None and not bucket.has_capacity(500)
    limits.settle(Charge(prompt=490, allowance=10, tokens=500), prompt_tokens=245, completion_tokens=3)
    assert bucket.has_capacity(240) and limits.prompt_ratio == pytest.approx(0.95)


@virtual_time
async def test_the_charge_is_prompt_plus_max_tokens_and_a_refusal_costs_nothing() -> None:
    limits = ModelLimits(concurrency=10, tpm=60_000)
    async with limits.slot(prompt=400, allowance=100) as charge:
        assert charge.tokens == 500
    bucket = limits.tokens
    assert bucket is not None
    level = bucket.level
    limits.settle(charge, prompt_tokens=400, completion_tokens=7)  # the provider counts max_tokens: no change
    assert bucket.level == pytest.approx(level, abs=1)
    limits.settle(charge, None, None)  # refused: nothing was used
    assert bucket.level == pytest.approx(max(0.0, level - 500), abs=1)


@virtual_time
async def test_an_oversized_request_waits_for_an_empty_bucket_and_the_impossible_one_fails() -> None:
    limits = ModelLimits(concurrency=1000, tpm=60_000)
    with pytest.raises(TooLarge, match="more than the whole --tpm limit of 60,000"):
        limits.check(70_000)
    limits.check(5_000)  # bigger than one second's worth, smaller than a minute's: allowed
    times = await fire(limits, 3, tokens=5_000)
    # Each waits for an empty bucket (1 s of tokens) and overdraws it by 4 s more: about 1 s, 6 s, 11 s.
    gap = 5 / TOKEN_MARGIN
    assert times == pytest.approx([1.0, 1.0 + gap, 1.0 + 2 * gap], abs=0.05)


@virtual_time
async def test_a_429_pauses_every_worker_until_retry_after() -> None:
    limits = ModelLimits(concurrency=8)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    limits.observe({}, ok=False, rate_limited=True, retry_after=7.5)
    times = await fire(limits, 5)
    assert all(7.5 <= t - 0 <= 7.6 for t in times), times
    # waited_s is wall time with a request held, not summed over the five: 7.5 s, not 37.5 s
    assert limits.stats.rate_limited == 1 and 7.4 <= limits.stats.waited_s <= 7.7
    assert loop.time() - t0 >= 7.5


@virtual_time
async def test_a_503_with_retry_after_pauses_too_but_does_not_cut_concurrency() -> None:
    limits = ModelLimits(concurrency=8)
    limits.observe({}, ok=False, retry_after=2.0)
    assert (await fire(limits, 2))[0] >= 2.0 and limits.concurrency.limit == 8


@virtual_time
async def test_limits_announced_in_headers_are_paced_to() -> None:
    limits = ModelLimits(concurrency=100)
    limits.observe({"x-ratelimit-limit-requests": "60", "x-ratelimit-remaining-requests": "59"}, ok=True)
    times = await fire(limits, 10)
    assert times == pytest.approx([float(n) for n in range(1, 11)], abs=0.05)  # 60/min: one a second
    assert limits.stats.learned == {"requests": 60.0}


@virtual_time
async def test_a_configured_limit_beats_the_announced_one() -> None:
    limits = ModelLimits(concurrency=100, rpm=600)
    limits.observe({"x-ratelimit-limit-requests": "60"}, ok=True)
    assert (await fire(limits, 10))[-1] <= 1.01 and limits.stats.learned == {}


@virtual_time
async def test_an_announced_token_limit_makes_requests_count_their_tokens() -> None:
    limits = ModelLimits(concurrency=100)
    assert not limits.counts_tokens
    limits.observe({"x-ratelimit-limit-tokens": "60000"}, ok=True)
    assert limits.counts_tokens
    times = await fire(limits, 3, tokens=2000)
    gap = 2 / TOKEN_MARGIN  # a little under 1,000 tokens/s
    assert times == pytest.approx([1.0, 1.0 + gap, 1.0 + 2 * gap], abs=0.05)


@virtual_time
async def test_concurrency_halves_on_429s_once_per_burst_and_grows_back_slowly() -> None:
    loop = asyncio.get_running_loop()
    gate = AdaptiveConcurrency(64, clock=loop.time, cooldown=1.0)
    gate.rate_limited()
    gate.rate_limited()  # same burst: counted once
    assert gate.limit == 32
    await asyncio.sleep(1.5)
    gate.rate_limited()
    assert gate.limit == 16
    for _ in range(17):
        gate.succeeded()
    assert gate.limit == 17  # about +1 per window of clean answers
    for _ in range(10_000):
        gate.succeeded()
    assert gate.limit == 64  # never above the ceiling


@virtual_time
async def test_adaptive_concurrency_holds_requests_in_flight_to_the_limit() -> None:
    limits = ModelLimits(concurrency=4)
    times = await fire(limits, 12, hold=1.0)
    assert times == pytest.approx([0] * 4 + [1] * 4 + [2] * 4, abs=0.01)


def test_bucket_capacity_is_one_second_of_rate() -> None:
    assert Bucket(600).capacity == 10 and Bucket(30).capacity == 1
