"""Crash-proof resume: locks, fingerprints, --retry-failed, signals, and SIGKILL at random moments.

No test here waits for an amount of time: a stop or a kill lands when a count is reached (rows in
results.jsonl, requests parked on the fake provider by ``provider.hold``, a line in run.log).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from runner import api
from runner.errors import LockedError, RunChangedError
from runner.run.lock import RunLock
from tests.doubles.provider import FakeProvider
from tests.support.cli import runner
from tests.support.files import ROOT, Lines, line_count, read_jsonl, text_of, wait_until, write_jsonl
from tests.support.run import CLASSIFY, MODEL, run_rows, tickets

JOBS = str(ROOT / "jobs")


def run_args(provider: FakeProvider, *extra: str) -> list[str]:
    return ["run", "classify", "--jobs-dir", JOBS, "--input", "in.jsonl", "--model", MODEL,
            "--api-base", provider.url, *extra]  # fmt: skip


def first_run(provider: FakeProvider, cwd: Path) -> None:
    """``runner run`` with ``run_args``, through the Python API in this process: the same run directory, and
    no process start (~3 s of litellm import) for a run that only sets the scene."""
    done = api.run(
        "classify", cwd / "in.jsonl", jobs_dir=JOBS, model=MODEL, api_base=provider.url, runs_dir=cwd / "runs"
    )
    assert done.status == "completed" and done.run_dir == cwd / "runs" / "classify" / "in"


def start(provider: FakeProvider, cwd: Path, *extra: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "runner", *run_args(provider, *extra)]
    pipe = subprocess.PIPE
    return subprocess.Popen(command, cwd=cwd, stdin=subprocess.DEVNULL, stdout=pipe, stderr=pipe, text=True)


def hold_from(provider: FakeProvider, rows: list[dict], first_held: int) -> None:
    """Park every request for ``rows[first_held:]`` on the fake provider until it is released."""
    held = {r["text"] for r in rows[first_held:]}
    provider.hold(lambda text: text in held)


def test_a_second_run_of_the_same_directory_exits_75_naming_the_holder(tmp_path: Path, provider: FakeProvider) -> None:
    rows = tickets(200)
    write_jsonl(tmp_path / "in.jsonl", rows)
    hold_from(provider, rows, 1)  # the first run cannot finish while the second one tries
    first = start(provider, tmp_path, "--concurrency", "4")
    try:
        provider.wait_for(lambda s: s.held == 4)
        wait_until(lambda: line_count(tmp_path / "runs" / "classify" / "in" / "results.jsonl") == 1, "row 1")
        second = runner(*run_args(provider), cwd=tmp_path)
        assert second.returncode == 75
        assert f"in use by PID {first.pid}" in second.stderr.splitlines()[-1]
    finally:
        first.kill()
        first.communicate()
    # The kernel dropped the dead holder's lock: the next run proceeds.
    with RunLock(tmp_path / "runs" / "classify" / "in"):
        pass


def test_the_lock_is_exclusive_within_a_process_too(tmp_path: Path) -> None:
    with RunLock(tmp_path), pytest.raises(LockedError, match=f"PID {os.getpid()}"), RunLock(tmp_path):
        pass


async def test_a_changed_job_model_or_input_is_refused_with_what_changed(
    tmp_path: Path, provider: FakeProvider
) -> None:
    rows = tickets(5)
    await run_rows(tmp_path, provider, rows)
    with pytest.raises(RunChangedError, match=r"in\.jsonl is not the input this run started on"):
        await run_rows(tmp_path, provider, [*rows[:2], {"id": "t-0002", "text": "edited"}, *rows[3:]])
    write_jsonl(tmp_path / "in.jsonl", rows)

    from dataclasses import replace

    with pytest.raises(RunChangedError, match="the request built for the first row changed"):
        changed = replace(CLASSIFY, build_request=lambda r: {**CLASSIFY.build_request(r), "max_tokens": 50})
        await run_rows(tmp_path, provider, None, job=changed)

    # Growing the file is not a change: the nightly file gained rows, only they are sent.
    provider.reset()
    done = await run_rows(tmp_path, provider, [*rows, *tickets(3, prefix="late")])
    assert provider.stats().total == 3 and len(done.results) == 8


def test_a_changed_model_is_refused_by_the_cli_and_allowed_with_the_flag(
    tmp_path: Path, provider: FakeProvider
) -> None:
    write_jsonl(tmp_path / "in.jsonl", tickets(3))
    first_run(provider, tmp_path)
    args = [*run_args(provider), "--model", "openai/gpt-4o"]
    refused = runner(*args, cwd=tmp_path)
    assert refused.returncode == 2
    line = refused.stderr.splitlines()[-1]
    assert "the model changed (openai/gpt-4o-mini -> openai/gpt-4o)" in line and "--run-id" in line
    assert runner(*args, "--allow-changes", cwd=tmp_path).returncode == 0


async def test_retry_failed_reruns_only_the_failed_rows(tmp_path: Path, provider: FakeProvider) -> None:
    rows = tickets(10)
    rows[3]["text"] += " [[fail:500:times=2]]"  # fails both attempts of the first run, then recovers
    rows[7]["text"] += " [[answer:a bug or a feature]]"  # invalid every time
    first = await run_rows(tmp_path, provider, rows, max_attempts=2)
    assert {e["custom_id"] for e in first.errors} == {"t-0003", "t-0007"}
    spent = first.manifest["usage"]["total_tokens"]
    before = provider.stats().total  # no reset: the server must remember t-0003 already failed twice

    done = await run_rows(tmp_path, provider, None, max_attempts=2, retry_failed=True)
    assert provider.stats().total - before == 2
    assert [e["custom_id"] for e in done.errors] == ["t-0007"]
    assert sorted(r["custom_id"] for r in done.results) == sorted(r["id"] for r in rows if r["id"] != "t-0007")
    assert done.manifest["request_counts"] == {"total": 10, "completed": 9, "failed": 1}
    # The retired error's answer was paid for: its tokens still count.
    assert done.manifest["usage"]["total_tokens"] > spent and done.manifest["retired_errors"] == 2


async def test_stop_lets_in_flight_requests_land_and_leaves_the_rest_pending(
    tmp_path: Path, provider: FakeProvider
) -> None:
    rows = tickets(100)
    hold_from(provider, rows, 10)
    stop = asyncio.Event()

    async def stop_when_five_are_in_flight() -> None:
        await asyncio.to_thread(provider.wait_for, lambda s: s.held == 5)
        stop.set()
        provider.release()

    stopper = asyncio.create_task(stop_when_five_are_in_flight())
    done = await run_rows(tmp_path, provider, rows, concurrency=5, stop=stop)
    await stopper
    assert done.report.status == "interrupted" and done.manifest["status"] == "interrupted"
    # Everything that was sent was journaled, the five in flight at the stop included; nothing more was sent.
    assert provider.stats().total == len(done.results) == 15
    assert done.manifest["request_counts"]["completed"] == 15


async def test_a_grace_period_that_runs_out_cancels_what_is_in_flight(tmp_path: Path, provider: FakeProvider) -> None:
    rows = tickets(20)
    hold_from(provider, rows, 0)  # never answered until the test ends: only the grace period can end the run
    stop = asyncio.Event()

    async def stop_when_four_are_in_flight() -> None:
        await asyncio.to_thread(provider.wait_for, lambda s: s.held == 4)
        stop.set()

    stopper = asyncio.create_task(stop_when_four_are_in_flight())
    # The time-out only turns a run that would wait for the held requests forever into a failure.
    done = await asyncio.wait_for(run_rows(tmp_path, provider, rows, concurrency=4, stop=stop, grace=0.2), 60)
    await stopper
    assert provider.stats().held == 4  # still unanswered: the run returned by cancelling them
    assert done.report.status == "interrupted" and done.results == []
    assert provider.stats().total == 4


def test_sigint_twice_stops_at_once_with_a_consistent_journal(tmp_path: Path, provider: FakeProvider) -> None:
    rows = tickets(50)
    write_jsonl(tmp_path / "in.jsonl", rows)
    hold_from(provider, rows, 10)  # ten rows land, then five requests stay in flight until the end
    run_dir = tmp_path / "runs" / "classify" / "in"
    proc = start(provider, tmp_path, "--concurrency", "5")
    try:
        provider.wait_for(lambda s: s.held == 5)
        wait_until(lambda: line_count(run_dir / "results.jsonl") == 10, "10 rows journaled")
        proc.send_signal(signal.SIGINT)
        first_sigint = "SIGINT: finishing the requests in flight"
        wait_until(lambda: first_sigint in text_of(run_dir / "run.log"), "the first SIGINT in run.log")
        proc.send_signal(signal.SIGINT)  # the held requests would never land: only this ends the run
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert provider.stats().held == 5
    manifest = orjson.loads((run_dir / "manifest.json").read_bytes())
    assert manifest["status"] == "interrupted"
    assert manifest["request_counts"]["completed"] == len(read_jsonl(run_dir / "results.jsonl")) == 10


def test_a_completed_run_started_again_does_nothing(tmp_path: Path, provider: FakeProvider) -> None:
    write_jsonl(tmp_path / "in.jsonl", tickets(50))
    first_run(provider, tmp_path)
    provider.reset()
    again = runner(*run_args(provider), cwd=tmp_path)
    assert again.returncode == 0 and provider.stats().total == 0
    assert "resuming: 50 done, 0 failed, 0 to go" in again.stderr


def rows_or_exit(proc: subprocess.Popen[str], journaled: Lines, target: int) -> None:
    """Wait until ``target`` rows are journaled, or the process ended (which fails the caller)."""
    wait_until(lambda: journaled() >= target or proc.poll() is not None, f"{target} rows journaled")


@pytest.mark.timeout(300)  # eleven process starts: slow on a machine busy with other test runs
@pytest.mark.slow
def test_sigkill_at_random_moments_loses_nothing_and_doubles_nothing(tmp_path: Path, provider: FakeProvider) -> None:
    provider.configure(latency_ms=40, p429=0.02, p500=0.02, retry_after=0.05, seed=5)
    rows = tickets(1300)  # ten stretches of at most 120 rows fit before the last (held) row; more proves nothing
    write_jsonl(tmp_path / "in.jsonl", rows)
    run_dir = tmp_path / "runs" / "classify" / "in"
    concurrency, kills, rng = 16, 0, random.Random(42)
    text_of_id = {r["id"]: r["text"] for r in rows}
    # While killing, the last row's request is parked, so no run can finish before its kill.
    provider.hold(lambda text: text == rows[-1]["text"])
    resent = 0  # calls for rows that were already in the journal when the process started
    while True:
        lines = read_jsonl(run_dir / "results.jsonl")
        journaled = {text_of_id[r["custom_id"]] for r in lines}
        calls_before = provider.stats().by_key
        proc = start(provider, tmp_path, "--concurrency", str(concurrency), "--max-attempts", "20")
        if kills < 10:
            # Kill it somewhere in its next stretch of work: after 1 to 120 more rows were journaled
            # (at most 10 x 120 of the 1,300 rows before the last kill).
            rows_or_exit(proc, Lines(run_dir / "results.jsonl"), len(lines) + rng.randint(1, 120))
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            proc.send_signal(signal.SIGKILL)
            proc.communicate()
            kills += 1
            resent += sum(n - calls_before.get(k, 0) for k, n in provider.stats().by_key.items() if k in journaled)
            if kills == 10:
                provider.release()
            continue
        _, err = proc.communicate(timeout=180)
        resent += sum(n - calls_before.get(k, 0) for k, n in provider.stats().by_key.items() if k in journaled)
        if proc.returncode == 0:
            break
        raise AssertionError(f"run failed with {proc.returncode}: {err[-2000:]}")
    assert kills >= 10

    results, errors = read_jsonl(run_dir / "results.jsonl"), read_jsonl(run_dir / "errors.jsonl")
    records = results + errors
    assert errors == [] and sorted(r["custom_id"] for r in records) == [r["id"] for r in rows]
    manifest = orjson.loads((run_dir / "manifest.json").read_bytes())
    # Answers reused from the response cache (stored just before a kill, journaled after it) used no tokens.
    bodies = [r["response"]["body"] for r in records if "cache" not in r["meta"]]
    assert manifest["usage"]["input_tokens"] == sum(b["usage"]["prompt_tokens"] for b in bodies)
    assert manifest["usage"]["output_tokens"] == sum(b["usage"]["completion_tokens"] for b in bodies)
    assert manifest["request_counts"] == {"total": 1300, "completed": 1300, "failed": 0}
    # A journaled row is never sent again; the only calls the journal does not account for are the
    # ones in flight at each kill (and their retries before it).
    assert resent == 0
    # A row answered from the cache after a kill made no attempt of its own (its answer was bought, and
    # stored, by the killed run: counted here with the calls in flight at the kill).
    lost_in_flight = provider.stats().total - sum(r["meta"].get("attempts", 0) for r in records)
    assert 0 <= lost_in_flight <= 2 * concurrency * kills, (lost_in_flight, kills)


async def test_the_manifest_checkpoint_gives_the_same_totals_as_a_full_scan(
    tmp_path: Path, provider: FakeProvider
) -> None:
    from runner.run.journal import scan

    provider.configure(p500=0.2, p429=0.1, retry_after=0.01, seed=9)
    rows = [*tickets(60), {"id": "bad", "text": "[[answer:no]]"}, "{broken"]
    done = await run_rows(tmp_path, provider, rows, max_attempts=2)
    run_dir = tmp_path / "run"
    checkpoint = done.manifest["checkpoint"]

    fast, full = scan(run_dir, checkpoint), scan(run_dir)
    assert fast.from_checkpoint and not full.from_checkpoint
    assert fast.done == full.done and len(fast.done) == 62
    assert fast.totals == full.totals

    # Lines appended after the checkpoint are parsed on top of it.
    results = run_dir / "results.jsonl"
    last = results.read_bytes().splitlines(keepends=True)[-1]
    extra = last.replace(b'"custom_id":"', b'"custom_id":"extra-', 1)
    results.write_bytes(results.read_bytes() + extra)
    fast = scan(run_dir, checkpoint)
    assert fast.from_checkpoint and "extra-" + done.results[-1]["custom_id"] in fast.done
    assert fast.totals == scan(run_dir).totals

    # A journal rewritten under the checkpoint is not trusted: everything is parsed again.
    data = bytearray(results.read_bytes())
    cut = checkpoint["files"]["results.jsonl"]["bytes"] - 10
    data[cut] = ord(" ") if data[cut] != ord(" ") else ord("\t")
    results.write_bytes(bytes(data))
    assert not scan(run_dir, checkpoint).from_checkpoint
