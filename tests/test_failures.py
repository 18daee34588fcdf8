"""Failure paths HTTP can't reach cheaply, driven in-process by the scripted model (no server).

A writer that dies (disk full), a fatal error mid-run, a row error, and retries that wait out
Retry-After through an injected sleep. Written against the public API only: ``run(caller,
settings)``, ``Caller(...)``'s fields, and ``Journal.append`` for the one failure a file system
must produce.
"""

from __future__ import annotations

import asyncio
import errno
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from runner.call.caller import Caller
from runner.call.retry import RetryPolicy
from runner.errors import FatalProviderError
from runner.permits.limits import Limits
from runner.records import Record
from runner.run.coordinator import RunReport, RunSettings, run
from runner.run.journal import Journal
from tests.doubles.scripted import (
    ScriptedModel,
    VirtualTime,
    auth_failed,
    bad_request,
    rate_limited,
    server_error,
    timed_out,
)
from tests.support.files import read_jsonl, write_jsonl
from tests.support.run import CLASSIFY, MODEL, tickets

pytestmark = pytest.mark.timeout(60)

GUARD = 30.0  # only turns a run that would hang (a bug) into a failure; nothing waits this long


def caller_with(
    model: ScriptedModel, concurrency: int, max_attempts: int = 4, time_: VirtualTime | None = None
) -> Caller:
    """A Caller whose provider is ``model``; with ``time_``, back-off and pauses are virtual."""
    if time_ is None:
        policy = RetryPolicy(max_attempts=max_attempts, base_wait=0.0, max_wait=0.0)
        limits = Limits(concurrency)
    else:
        policy = RetryPolicy(max_attempts=max_attempts, base_wait=0.01, max_wait=0.05, sleep=time_.sleep)
        limits = Limits(concurrency, clock=time_, sleep=time_.sleep)
    return Caller(job=CLASSIFY, policy=policy, timeout=5.0, model=MODEL, complete=model, limits=limits)


def settings_for(tmp_path: Path, rows: list[dict[str, Any]] | None, concurrency: int) -> RunSettings:
    if rows is not None:
        write_jsonl(tmp_path / "in.jsonl", rows)
    return RunSettings(tmp_path / "in.jsonl", tmp_path / "run", "run", concurrency=concurrency)


async def run_with(model: ScriptedModel, settings: RunSettings, **caller: Any) -> RunReport:
    return await asyncio.wait_for(run(caller_with(model, settings.concurrency, **caller), settings), GUARD)


def journal(tmp_path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    run_dir = tmp_path / "run"
    manifest = orjson.loads((run_dir / "manifest.json").read_bytes())
    return read_jsonl(run_dir / "results.jsonl"), read_jsonl(run_dir / "errors.jsonl"), manifest


def texts(model: ScriptedModel) -> list[str]:
    return [r["messages"][-1]["content"] for r in model.requests]


async def test_a_writer_that_fails_stops_the_workers_and_the_next_run_does_only_the_rest(tmp_path: Path) -> None:
    rows, concurrency, first_batch = tickets(40), 4, 10
    model = ScriptedModel()
    model.hold(after=first_batch)  # ten rows are answered, then every call waits for the test
    written: list[int] = []
    ten_written = asyncio.Event()
    at_failure: dict[str, int] = {}
    append = Journal.append

    async def full_disk_after_ten(self: Journal, records: list[Record]) -> None:
        if sum(written) >= first_batch:
            at_failure.update(calls=len(model.requests), parked=model.parked)
            # From now on the model answers at once: workers the failure did not stop would go on calling.
            asyncio.get_running_loop().call_soon(model.release)
            raise OSError(errno.ENOSPC, "No space left on device")
        await append(self, records)
        written.append(len(records))
        if sum(written) >= first_batch:
            ten_written.set()

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Journal, "append", full_disk_after_ten)
        first = asyncio.create_task(run(caller_with(model, concurrency), settings_for(tmp_path, rows, concurrency)))
        await ten_written.wait()
        await model.wait_until(lambda m: m.parked == concurrency)
        model.release(1)  # one more answer: the writer fails on it
        await asyncio.wait({first}, timeout=GUARD)
        assert first.done(), "the run did not end after its writer failed"
        with pytest.raises(OSError) as failed:
            await first
    assert failed.value.errno == errno.ENOSPC
    # No call started after the failure, except by a worker that was not waiting on the model then.
    assert len(model.requests) - at_failure["calls"] <= concurrency - at_failure["parked"]
    assert len(model.requests) < len(rows)
    results, errors, manifest = journal(tmp_path)
    assert manifest["status"] == "failed" and errors == []
    assert len(results) == first_batch == manifest["request_counts"]["completed"]

    # Space again: the next run sends exactly the rows not journaled, once each.
    model.release()
    again = ScriptedModel()
    report = await run_with(again, settings_for(tmp_path, None, concurrency))
    assert report.status == "completed"
    results, errors, manifest = journal(tmp_path)
    assert sorted(r["custom_id"] for r in results) == [r["id"] for r in rows] and errors == []
    done_first = {r["text"] for r in rows[:first_batch]}
    assert len(again.requests) == len(rows) - first_batch and not done_first & set(texts(again))
    assert manifest["request_counts"] == {"total": 40, "completed": 40, "failed": 0}


async def test_a_fatal_error_mid_run_stops_intake_and_leaves_the_run_resumable(tmp_path: Path) -> None:
    rows = tickets(30)
    model = ScriptedModel().enqueue([*(["bug"] * 9), auth_failed()])  # the tenth call: the key is revoked
    with pytest.raises(FatalProviderError, match="authentication_failed"):
        await run_with(model, settings_for(tmp_path, rows, 1))
    assert len(model.requests) == 10  # nothing taken after the fatal error, and it was not retried
    results, errors, manifest = journal(tmp_path)
    assert manifest["status"] == "failed" and errors == []  # the fatal row is not written off as an error
    assert [r["custom_id"] for r in results] == [r["id"] for r in rows[:9]]

    again = ScriptedModel()
    report = await run_with(again, settings_for(tmp_path, None, 1))
    assert report.status == "completed" and texts(again) == [r["text"] for r in rows[9:]]
    results, errors, _ = journal(tmp_path)
    assert sorted(r["custom_id"] for r in results) == [r["id"] for r in rows] and errors == []


async def test_a_row_error_is_recorded_and_the_run_goes_on(tmp_path: Path) -> None:
    rows = tickets(6)
    model = ScriptedModel().enqueue(["bug", bad_request(), "feature", server_error(), server_error()])
    report = await run_with(model, settings_for(tmp_path, rows, 1), max_attempts=2)
    assert report.status == "completed"
    results, errors, manifest = journal(tmp_path)
    # t-0001: a 400 is never retried; t-0003: two 500s use up its two attempts.
    assert len(model.requests) == 7
    codes = [(e["custom_id"], e["error"]["code"]) for e in errors]
    assert codes == [("t-0001", "bad_request"), ("t-0003", "server_error")]
    assert errors[0]["error"]["status"] == 400 and errors[0]["meta"]["attempts"] == 1
    assert "gave up after 2 attempts" in errors[1]["error"]["message"]
    assert sorted(r["custom_id"] for r in results) == ["t-0000", "t-0002", "t-0004", "t-0005"]
    assert [r["result"] for r in results[:2]] == ["bug", "feature"]
    assert manifest["request_counts"] == {"total": 6, "completed": 4, "failed": 2}


async def test_retries_wait_out_retry_after_through_the_injected_sleep(tmp_path: Path) -> None:
    rows = tickets(3)
    clock = VirtualTime()
    model = ScriptedModel().enqueue([rate_limited(retry_after=30), timed_out(), server_error(), "bug"])
    started = time.monotonic()
    report = await run_with(model, settings_for(tmp_path, rows, 1), max_attempts=4, time_=clock)
    assert time.monotonic() - started < 30  # the 30 s were virtual: no real wait
    assert report.status == "completed"
    # The 429's wait is at least its Retry-After (plus upward jitter); the others back off briefly.
    assert 30 <= clock.sleeps[0] <= 33 and all(s <= 0.05 for s in clock.sleeps[1:3])
    assert len(clock.sleeps) == 3 and len(model.requests) == 6
    results, errors, manifest = journal(tmp_path)
    assert errors == [] and results[0]["custom_id"] == "t-0000"
    assert results[0]["meta"]["attempts"] == 4 and results[0]["meta"]["rate_limited"] == 1
    assert manifest["rate_limited"] == 1
