"""Leases: permission for workers in other processes, granted in bulk by the coordinator."""

from __future__ import annotations

import asyncio
import dataclasses
import pickle
from pathlib import Path

import pytest

from runner.call.caller import Caller
from runner.executors.base import Feed, Outbox, Silent
from runner.permits.budget import Budget, BudgetReached
from runner.permits.leases import Grantor, Lease, LeasedPermits, Report, Want
from runner.permits.limits import Limits
from runner.provider.provider import aclose
from runner.run.coordinator import RunSettings, run
from runner.run.source import Row
from tests.doubles.provider import FakeProvider
from tests.support.files import read_jsonl, write_jsonl
from tests.support.run import caller_for, tickets, virtual_time


class Boundary:
    """Carries renewals as a process boundary would: pickled both ways, and counted."""

    def __init__(self, grantor: Grantor) -> None:
        self.grantor, self.calls = grantor, 0

    async def __call__(self, report: Report | None, want: Want) -> Lease:
        self.calls += 1
        report, want = pickle.loads(pickle.dumps((report, want)))
        return pickle.loads(pickle.dumps(await self.grantor.renew(report, want)))


def worker(boundary: Boundary, batch: int = 8) -> LeasedPermits:
    loop = asyncio.get_running_loop()
    return LeasedPermits(boundary, batch=batch, clock=loop.time)


async def starts(permits: LeasedPermits, n: int, hold: float = 0.0) -> list[float]:
    loop = asyncio.get_running_loop()
    times: list[float] = []

    async def one() -> None:
        async with permits.slot("m", 10, 0) as charge:
            times.append(loop.time())
            await asyncio.sleep(hold)
        await permits.landed("m", charge, {}, (10, 1))

    await asyncio.gather(*(one() for _ in range(n)))
    return sorted(times)


@virtual_time
async def test_two_workers_share_the_rate_with_one_renewal_per_lease() -> None:
    grantor = Grantor(Limits(concurrency=1000, rpm=600), term=0.1)  # 10 a second between them
    boundary = Boundary(grantor)
    a, b = worker(boundary), worker(boundary)
    first, second = await asyncio.gather(starts(a, 50), starts(b, 50))
    times = sorted(first + second)
    assert 9.5 <= times[-1] <= 10.6  # 100 requests at 10/s, whichever worker sent them
    per_second = [sum(1 for t in times if s <= t < s + 1) for s in range(10)]
    assert all(8 <= n <= 12 for n in per_second), per_second
    assert boundary.calls <= 100  # at most one renewal per request even at this low rate...
    fast = Boundary(Grantor(Limits(concurrency=1000), term=0.1))
    c = worker(fast)
    await starts(c, 400)
    assert fast.calls <= 400 / 8 + 1  # ...and one per `batch` requests when the rate allows


@virtual_time
async def test_a_429_at_one_worker_pauses_the_other_within_one_lease() -> None:
    grantor = Grantor(Limits(concurrency=1000), term=0.1)
    boundary = Boundary(grantor)
    a, b = worker(boundary, batch=2), worker(boundary, batch=2)
    loop = asyncio.get_running_loop()
    await starts(a, 1)
    async with a.slot("m", 10, 0) as charge:
        pass
    await a.landed("m", charge, {}, None, rate_limited=True, retry_after=5.0)
    t0 = loop.time()
    later = await starts(b, 6)  # b's lease ends within 0.1 s; its next one carries the pause
    assert sum(1 for t in later if t - t0 < 0.2) <= 2  # at most what its lease still held
    assert all(t - t0 >= 4.9 for t in later[2:]), [t - t0 for t in later]
    a_next = await starts(a, 1)
    assert a_next[0] - t0 >= 5.0  # the worker that got the 429 paused at once


@virtual_time
async def test_unmetered_leases_last_long_and_a_pushed_pause_stops_a_worker_holding_one() -> None:
    limits = Limits(concurrency=1000)
    grantor = Grantor(limits, term=0.1, free_term=1.0)
    lease = await grantor.renew(None, Want("m", 8))
    assert (lease.requests, lease.term_s) == (8, 1.0)  # nothing metered: nothing to hand back soon
    metered = Grantor(Limits(concurrency=1000, rpm=6000), term=0.1, free_term=1.0)
    assert (await metered.renew(None, Want("m", 8))).term_s == 0.1  # a slice of the rate
    b = worker(Boundary(grantor), batch=8)
    loop = asyncio.get_running_loop()
    await starts(b, 1)  # b now holds 7 starts for a second
    assert grantor.pauses() == {}
    limits.for_model("m").observe({}, ok=False, rate_limited=True, retry_after=5.0)  # another worker's 429
    b.pause("m", grantor.pauses()["m"])  # what the next exchange call carries
    t0 = loop.time()
    later = await starts(b, 3)
    assert all(t - t0 >= 4.9 for t in later), [t - t0 for t in later]


class SlowBoundary(Boundary):
    """A boundary whose round trip takes ``delay`` seconds (a busy coordinator, another machine)."""

    def __init__(self, grantor: Grantor, delay: float) -> None:
        super().__init__(grantor)
        self.delay = delay

    async def __call__(self, report: Report | None, want: Want) -> Lease:
        await asyncio.sleep(self.delay)
        return await super().__call__(report, want)


async def paced_starts(permits: LeasedPermits, n: int, in_flight: int, hold: float) -> float:
    """``n`` requests of ``hold`` seconds, ``in_flight`` at a time (a worker's concurrency); seconds taken."""
    loop = asyncio.get_running_loop()
    room, t0 = asyncio.Semaphore(in_flight), loop.time()

    async def one() -> None:
        async with room, permits.slot("m", 10, 0) as charge:
            await asyncio.sleep(hold)
        await permits.landed("m", charge, {}, (10, 1))

    await asyncio.gather(*(one() for _ in range(n)))
    return loop.time() - t0


@virtual_time
async def test_an_unmetered_lease_is_renewed_before_it_runs_out_so_no_start_waits_on_the_round_trip() -> None:
    # 640 requests of 10 ms, 32 at a time: 0.2 s if no start waits, plus the first lease's 30 ms round
    # trip. An unmetered lease holds 4 x 64 starts (80 ms of them), so waiting on each of the
    # renewals would add 3 x 30 ms.
    unmetered = SlowBoundary(Grantor(Limits(concurrency=1000), term=0.1, free_term=1.0), delay=0.03)
    took = await paced_starts(LeasedPermits(unmetered, batch=64, clock=asyncio.get_running_loop().time), 640, 32, 0.01)
    assert took < 0.26 and unmetered.calls >= 3
    metered = SlowBoundary(Grantor(Limits(concurrency=1000, rpm=1e9), term=0.1, free_term=1.0), delay=0.03)
    took = await paced_starts(LeasedPermits(metered, batch=64, clock=asyncio.get_running_loop().time), 640, 32, 0.01)
    assert took >= 0.45  # a slice of a rate is not taken ahead: each of its 10 renewals was waited for


@virtual_time
async def test_a_429_is_reported_at_once_even_while_a_renewal_waits_for_the_rate() -> None:
    limits = Limits(concurrency=100, rpm=60)  # one a second: a renewal waits in the coordinator's bucket
    permits = worker(Boundary(Grantor(limits, term=0.1)), batch=1)
    loop = asyncio.get_running_loop()
    async with permits.slot("m", 10, 0) as charge:
        pass
    waiting = asyncio.create_task(starts(permits, 1))  # holds the model's turn while its renewal waits
    await asyncio.sleep(0.01)
    t0 = loop.time()
    await permits.landed("m", charge, {}, None, rate_limited=True, retry_after=5.0)
    assert loop.time() - t0 < 0.05  # reported at once, not after the waiting renewal
    assert limits.for_model("m").pause_left() >= 4.9  # so the coordinator paused every worker then
    await waiting


@virtual_time
async def test_leases_never_hold_more_than_the_budget_leaves() -> None:
    budget = Budget(cap=1.0)
    grantor = Grantor(Limits(concurrency=100), budget, term=0.1)
    loop = asyncio.get_running_loop()
    permits = LeasedPermits(Boundary(grantor), worst_case=lambda m, p, x: 0.3, batch=8, clock=loop.time)
    held = [await permits.reserve("m", 10, 10) for _ in range(3)]
    assert held == [0.3, 0.3, 0.3] and budget.reserved <= 1.0
    with pytest.raises(BudgetReached):
        await permits.reserve("m", 10, 10)  # 0.1 left: not enough for a fourth
    for worst in held:
        permits.spent(worst, 0.05, 10, 11)
    async with permits.slot("m", 10, 0):
        pass  # a renewal reports the spend: the coordinator's budget sees it
    await permits._renewed("m", Want("m", 1))
    assert budget.spent == pytest.approx(0.15)
    assert budget.reserved == pytest.approx(0.0, abs=1e-9) or budget.reserved <= 0.1 + 1e-9


class TwoWorkers(Silent):
    """An executor whose workers hold leases, as workers in other processes would."""

    def __init__(self, callers: list[Caller], each: int) -> None:
        self.callers, self.each = callers, each
        self.again: list[Row] = []

    def resend(self, rows: list[Row]) -> None:
        self.again.extend(rows)

    async def execute(self, feed: Feed, outbox: Outbox) -> None:
        async def work(caller: Caller) -> None:
            async for row in feed:
                outbox.record(await caller(row))
                while self.again:
                    outbox.record(await caller(self.again.pop()))

        async with asyncio.TaskGroup() as group:
            for caller in self.callers:
                for _ in range(self.each):
                    group.create_task(work(caller))


async def test_leased_workers_through_the_real_http_path(tmp_path: Path, provider: FakeProvider) -> None:
    provider.configure(p429=0.05, retry_after=0.2, seed=3)  # some 429s with Retry-After
    write_jsonl(tmp_path / "in.jsonl", tickets(120))
    coordinator_side = caller_for(provider)
    grantor = Grantor(coordinator_side.limits, term=0.1)
    boundary = Boundary(grantor)
    leased = [LeasedPermits(boundary, gave_up=grantor.gave_up) for _ in range(2)]
    callers = [dataclasses.replace(caller_for(provider), permits=permits) for permits in leased]
    settings = RunSettings(tmp_path / "in.jsonl", tmp_path / "run", "run", concurrency=8)
    try:
        report = await run(coordinator_side, settings, executor=TwoWorkers(callers, 4))
    finally:
        await aclose()
    results = read_jsonl(tmp_path / "run" / "results.jsonl")
    assert report.status == "completed" and sorted(r["custom_id"] for r in results) == [
        f"t-{i:04d}" for i in range(120)
    ]
    assert boundary.calls < provider.stats().total / 2  # permission did not cost a call per request
    limits = coordinator_side.limits.for_model(callers[0].model or "")
    assert limits.stats.rate_limited > 0  # the workers' 429s reached the coordinator's limits


@virtual_time
async def test_an_estimated_answer_reaches_the_coordinators_budget_with_its_margin() -> None:
    budget = Budget(cap=1.0)
    loop = asyncio.get_running_loop()
    permits = LeasedPermits(Boundary(Grantor(Limits(concurrency=100), budget, term=0.1)),
                            worst_case=lambda m, p, x: 0.3, batch=1, clock=loop.time)  # fmt: skip
    worst = await permits.reserve("m", 10, 10)
    permits.spent(worst, 0.1, 10, None, estimated=True)  # no usage from the provider: litellm's count
    await permits._renewed("m", Want("m", 1))
    assert budget.spent == pytest.approx(0.1 * budget.prompt_margin) and budget.prompt_margin == pytest.approx(1.1)
