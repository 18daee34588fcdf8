"""Workers as Ray actors on a real local cluster (never local_mode), through litellm's real HTTP path.

One cluster per test module (and per pytest-xdist worker that runs some of it): starting one takes
seconds, so the tests share it, each with its own workers. Requests are stamped when a worker sends
them (``tests.doubles.stamped``; one monotonic clock per machine), so pacing across processes can be checked.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import ray

from runner.executors.ray import RayExecutor, spec_for
from runner.executors.ray_cluster import alive
from runner.permits.budget import Budget
from runner.permits.limits import Limits
from runner.provider.provider import aclose
from runner.run.coordinator import RunSettings, run
from runner.run.manifest import Totals
from runner.run.progress import Progress
from tests.doubles.provider import FakeProvider
from tests.doubles.stamped import FAILED, SENT, stamped, stamps
from tests.support.files import write_jsonl
from tests.support.run import Cluster, Finished, caller_for, finished, tickets

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(300),
]  # a cluster and its workers start slowly on a busy 2-core machine


async def ray_run(
    tmp_path: Path,
    provider: FakeProvider,
    rows: list[Any],
    ray_cluster: Cluster,
    concurrency: int = 8,
    rpm: float | None = None,
    budget: Budget | None = None,
    started: Callable[[RayExecutor], Awaitable[None]] | None = None,
    stop: asyncio.Event | None = None,
    progress: Progress | None = None,
    **tuning: Any,
) -> tuple[Finished, RayExecutor]:
    """Run ``rows`` with 2 Ray workers (stamping every send); the run read back, and the executor."""
    write_jsonl(tmp_path / "in.jsonl", rows)
    caller = caller_for(provider, limits=Limits(concurrency, rpm=rpm))
    caller = dataclasses.replace(caller, budget=budget)
    spec = spec_for(caller, 2, concurrency, complete=stamped, **tuning)
    executor = RayExecutor(caller, 2, spec, ray_cluster.record)
    settings = RunSettings(tmp_path / "in.jsonl", tmp_path / "run", "run", concurrency=concurrency)
    try:
        running = asyncio.ensure_future(run(caller, settings, progress, stop, executor=executor))
        if started is not None:
            await started(executor)
        report = await running
    finally:
        await aclose()
    return finished(report, tmp_path / "run"), executor


def sends(ray_cluster: Cluster, prefix: str, kind: str = SENT) -> list[tuple[float, str]]:
    """This test's sends (its tickets are named ``prefix``), or failures, in time order."""
    return [(t, text) for t, text in stamps(str(ray_cluster.stamps), kind) if f"(ticket {prefix}" in text]


async def test_two_workers_send_every_row_once_even_when_one_is_killed(
    tmp_path: Path, provider: FakeProvider, ray_cluster: Cluster
) -> None:
    rows = tickets(120, prefix="k")
    provider.hold(lambda text: True)  # park the first requests, so both workers hold rows in flight
    killed: list[int] = []

    async def kill_one(executor: RayExecutor) -> None:
        # 16 slots: each worker has some. The time-out only fails a broken test (workers start slowly when busy).
        await asyncio.to_thread(provider.wait_for, lambda s: s.held >= 12, 300)
        victim = executor.links["w1"]
        killed.append(len(victim.held))
        os.kill(victim.pid, signal.SIGKILL)
        provider.release()

    done, executor = await ray_run(tmp_path, provider, rows, ray_cluster, concurrency=16, started=kill_one)
    assert done.report.status == "completed" and done.errors == []
    assert sorted(r["custom_id"] for r in done.results) == sorted(r["id"] for r in rows)  # each row once
    assert "w2" in {r["meta"]["worker"] for r in done.results} <= {"w1", "w2", "w3"}  # w3 replaced w1
    assert executor.replaced == 1 and executor.requeued <= killed[0] <= 16
    paid_twice = [key for key, n in provider.stats().by_key.items() if n > 1]
    assert 0 < len(paid_twice) <= executor.requeued  # only rows the dead worker held went out again
    usage = done.manifest["usage"]  # the manifest's totals are the sum over the records
    assert usage["input_tokens"] == sum(r["response"]["body"]["usage"]["prompt_tokens"] for r in done.results)
    assert done.manifest["cost_usd"] == pytest.approx(sum(r["meta"]["cost_usd"] for r in done.results))
    assert done.manifest["workers"] == {"alive": 0, "replaced": 1, "in_flight": {}, "hosts": {}}


class Journaled:
    """A progress display that only says when ``rows`` rows are journaled."""

    def __init__(self, rows: int) -> None:
        self.rows, self.reached = rows, asyncio.Event()

    def start(self, done: int, total: int | None, extra: Callable[[], str] = str) -> None:
        pass

    def set_total(self, total: int) -> None:
        pass

    def update(self, totals: Totals) -> None:
        if totals.completed >= self.rows:
            self.reached.set()

    def close(self, totals: Totals) -> None:
        pass


class Hog:
    """Takes CPUs of the test cluster, as a lost machine (or someone else's work) would."""

    def ready(self) -> None:
        """Returns once it has its CPUs."""


HOG: Any = ray.remote(num_cpus=1)(Hog)


async def test_a_worker_lost_at_the_very_end_leaves_its_rows_to_one_that_has_finished(
    tmp_path: Path, provider: FakeProvider, ray_cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    """The last row is held at its worker; the other worker has run out of rows (it keeps its CPU).
    The holder is killed and a Hog, waiting for a CPU since before, takes the one it frees: its
    replacement has none, as when its machine is gone. The worker that had finished answers the row."""
    rows = tickets(12, prefix="e")
    provider.hold(lambda text: "(ticket e11)" in text)  # the last row stays at its worker
    hogs = [HOG.options(num_cpus=2).remote()]  # the cluster's 4 CPUs: 2 for the workers, 2 taken
    finished_first: list[str] = []
    journaled = Journaled(11)

    async def kill_the_holder(executor: RayExecutor) -> None:
        await journaled.reached.wait()  # every other row's record is back: the other worker has finished
        [holder] = [link for link in executor.links.values() if "e-0011" in link.held]
        [other] = [link for link in executor.links.values() if link is not holder]
        assert not other.held and len(holder.held) == 1
        hogs.append(HOG.remote())  # waits for a CPU: it gets the one the holder frees, before any replacement
        finished_first.append(other.name)
        os.kill(holder.pid, signal.SIGKILL)
        provider.release()  # the row comes again, from the other worker

    caplog.set_level(logging.INFO, logger="runner.executors.ray")
    try:
        await asyncio.wait_for(hogs[0].ready.remote(), 300)
        async with asyncio.timeout(240):  # the run ends by itself (before the fix: it waited for a CPU forever)
            done, executor = await ray_run(tmp_path, provider, rows, ray_cluster, started=kill_the_holder,
                                           progress=journaled)  # fmt: skip
    finally:
        for hog in hogs:
            ray.kill(hog)
    assert done.report.status == "completed" and done.errors == []
    assert sorted(r["custom_id"] for r in done.results) == sorted(r["id"] for r in rows)  # each row once
    [again] = [r for r in done.results if r["custom_id"] == "e-0011"]
    assert again["meta"]["worker"] == finished_first[0]
    assert "worker w3 not started: no row is left for it" in caplog.text  # the replacement found no CPU
    sent = provider.stats().by_key
    assert sorted(sent.values()) == [1] * 11 + [2] and executor.replaced == 1 and executor.requeued == 1


class Stopping(logging.Handler):
    """Catches the coordinator's "stopping: ... for N in flight" line: ``said`` is set, ``in_flight`` is N."""

    def __init__(self) -> None:
        super().__init__()
        self.said = asyncio.Event()
        self.in_flight = -1

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("stopping: no new requests"):
            self.in_flight = int(record.args[1])  # type: ignore[index, arg-type]
            self.said.set()


async def test_after_a_stop_no_worker_starts_a_request(
    tmp_path: Path, provider: FakeProvider, ray_cluster: Cluster
) -> None:
    """Each worker holds rows beyond its 4 in flight (and the executor more): a stop drops them all."""
    provider.hold(lambda text: True)
    stop, stopping = asyncio.Event(), Stopping()
    coordinator = logging.getLogger("runner.run.coordinator")
    coordinator.addHandler(stopping)

    async def stop_when_full(executor: RayExecutor) -> None:
        await asyncio.to_thread(provider.wait_for, lambda s: s.held >= 8, 300)
        stop.set()
        await stopping.said.wait()  # the workers have been told
        provider.release()

    try:
        done, _ = await ray_run(tmp_path, provider, tickets(100, prefix="s"), ray_cluster, started=stop_when_full,
                                stop=stop)  # fmt: skip
    finally:
        coordinator.removeHandler(stopping)
    assert done.report.status == "interrupted" and done.errors == []
    assert stopping.in_flight == 8  # what was sent, not what the workers held
    assert len(provider.stats().by_key) == len(done.results) == 8  # no row was sent after the stop


async def test_two_workers_share_one_rpm_and_one_retry_after(
    tmp_path: Path, provider: FakeProvider, ray_cluster: Cluster
) -> None:
    provider.configure(rpm_limit=600, window_s=60)  # the provider's rolling quota: a 429 if runner passed it
    rows = tickets(60, prefix="p")
    rows[0]["text"] += " [[fail:429:retry_after=3:times=1]]"
    done, _ = await ray_run(tmp_path, provider, rows, ray_cluster, rpm=600)
    assert len(done.results) == 60 and done.errors == [] and done.manifest["rate_limited"] == 1
    assert provider.stats().by_status.get("quota_429", 0) == 0
    sent = sends(ray_cluster, "p")
    times = [t for t, _ in sent]
    assert len(times) == 61
    # 10 a second between both workers: the k-th send no sooner than k/10 s after the first (less one
    # request's worth, for the first send's own delay).
    early = [(k, round(t - times[0], 3)) for k, t in enumerate(times) if t - times[0] < k / 10 - 0.1]
    assert early == []
    [t429] = [t for t, _ in sends(ray_cluster, "p", FAILED)]  # when the 429 came back to its worker
    again = [t for t, text in sent if "retry_after=3" in text]
    assert len(again) == 2 and again[1] - t429 >= 3.0  # the row itself waited its Retry-After
    # Neither worker sent anything from one lease term after the 429 until the pause was over.
    during = [round(t - t429, 3) for t in times if t429 + 0.5 <= t < t429 + 2.9]
    assert during == []
    assert sum(1 for t in times if t >= t429 + 2.9) >= 10  # ... and rows were left to send: they went after it


async def test_a_retry_after_reaches_the_other_worker_without_a_rate_limit(
    tmp_path: Path, provider: FakeProvider, ray_cluster: Cluster
) -> None:
    """No --rpm: leases last long (nothing to meter), so the pause can't wait for the next lease; and
    here a worker's pending call returns only every 5 s, so it can't wait for that either: the
    coordinator pushes it (``nudge``)."""
    provider.configure(latency_ms=800)  # a worker's lease (16 starts for 1 s) outlasts its first sends
    rows = tickets(60, prefix="q")
    rows[0]["text"] += " [[fail:429:retry_after=3:times=1]]"
    done, _ = await ray_run(tmp_path, provider, rows, ray_cluster, concurrency=16, linger=5.0, heartbeat=5.0)
    assert len(done.results) == 60 and done.errors == [] and done.manifest["rate_limited"] == 1
    times = [t for t, _ in sends(ray_cluster, "q")]
    [t429] = [t for t, _ in sends(ray_cluster, "q", FAILED)]
    during = [round(t - t429, 3) for t in times if t429 + 0.5 <= t < t429 + 2.9]
    assert during == []  # neither worker sent from half a second after the 429 until the pause ended
    assert sum(1 for t in times if t >= t429 + 2.9) >= 10  # the rows left went after it


async def test_max_cost_with_two_workers_stays_under_the_cap(
    tmp_path: Path, provider: FakeProvider, ray_cluster: Cluster
) -> None:
    rows = tickets(40, prefix="c")
    done, _ = await ray_run(tmp_path, provider, rows, ray_cluster, budget=Budget(0.0006))
    cost = done.manifest["cost_usd"]
    assert done.report.stop_reason == "max_cost" and done.manifest["status"] == "interrupted"
    assert 0 < len(done.results) < 40 and not done.errors
    assert cost == pytest.approx(sum(r["meta"]["cost_usd"] for r in done.results))
    # Workers hold budget only as leases granted from what is left: never past the cap.
    assert 0 < cost <= 0.0006
    assert provider.stats().total == len(done.results)  # nothing sent was lost: every paid answer journaled


def test_pids_are_recorded_with_their_start_times(ray_cluster: Cluster) -> None:
    assert ray_cluster.record is not None
    pids = ray_cluster.record()
    assert isinstance(pids, list) and pids
    assert all(alive(pid, started) for pid, started in pids)
    assert not alive(pids[0][0], pids[0][1] + 1)  # another start time: another process, left alone
