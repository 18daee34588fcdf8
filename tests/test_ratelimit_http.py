"""Rate limits against a provider that enforces a real quota, through litellm's real HTTP path.

Pacing is checked on the moment each request was handed to litellm (recorded by a wrapped
``Caller.complete``), as a bound a slow machine can only help: never sooner than the limit allows.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from runner.provider.provider import acompletion
from tests.doubles.provider import FakeProvider
from tests.support.run import MODEL, run_rows, tickets


async def test_a_configured_rpm_paces_requests_and_draws_no_429(tmp_path: Path, provider: FakeProvider) -> None:
    provider.configure(rpm_limit=600, window_s=60)
    loop = asyncio.get_running_loop()
    sent: list[float] = []

    async def recorded(**request: Any) -> Any:
        sent.append(loop.time())
        return await acompletion(**request)

    started = loop.time()
    done = await run_rows(tmp_path, provider, tickets(25), concurrency=8, rpm=600, complete=recorded)
    assert len(done.results) == 25 and provider.stats().by_status.get("429", 0) == 0
    # 10 a second from the start, no burst: the k-th request goes no sooner than k/10 s in.
    early = [(k, round(t - started, 3)) for k, t in enumerate(sorted(sent), 1) if t - started < k / 10 - 0.01]
    assert len(sent) == 25 and early == []
    limits = done.manifest["limits"][MODEL]
    assert limits["rpm"] == 600 and limits["waited_s"] > 0 and limits["rate_limited"] == 0


async def test_limits_announced_in_headers_are_learned(tmp_path: Path, provider: FakeProvider) -> None:
    provider.configure(rpm_limit=6000, tpm_limit=5_000_000, window_s=60)
    done = await run_rows(tmp_path, provider, tickets(20), concurrency=4)
    assert len(done.results) == 20 and provider.stats().by_status.get("429", 0) == 0
    assert done.manifest["limits"][MODEL]["learned_limits"] == {"requests": 6000.0, "tokens": 5_000_000.0}


async def test_quota_refusals_are_waited_out_by_everyone(tmp_path: Path, provider: FakeProvider) -> None:
    # The quota allows 4 a second; runner is told 60,000/min, so only the 429s can hold it back.
    provider.configure(rpm_limit=4, window_s=1.0)
    done = await run_rows(tmp_path, provider, tickets(16), concurrency=8, rpm=60_000, max_attempts=20)
    stats = provider.stats()
    assert len(done.results) == 16 and done.errors == []
    refused = stats.by_status.get("429", 0)
    assert 0 < refused == done.manifest["rate_limited"] == done.manifest["limits"][MODEL]["rate_limited"]
    # Every worker pauses on a 429 until Retry-After, so refusals stay far below the requests sent.
    assert refused < 16
    assert done.manifest["limits"][MODEL]["concurrency"] < 8  # cut on the 429s


async def test_a_request_larger_than_the_whole_tpm_fails_without_a_call(tmp_path: Path, provider: FakeProvider) -> None:
    rows = [{"id": "big", "text": "word " * 70_000}, *tickets(2)]
    done = await run_rows(tmp_path, provider, rows, tpm=60_000)
    assert [e["custom_id"] for e in done.errors] == ["big"]
    assert done.errors[0]["error"]["code"] == "request_too_large"
    assert "more than the whole --tpm limit of 60,000" in done.errors[0]["error"]["message"]
    assert provider.stats().total == 2
