"""The coordinator/executor seam, and the resume defects of issue #13 that live in the coordinator."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from runner.errors import FatalProviderError
from runner.executors.base import Feed, Outbox, Silent
from runner.permits.reachability import Reachability, Verdict
from runner.records import custom_id_at_start, error_record, result_record
from runner.run import journal
from runner.run.coordinator import RunSettings, run
from runner.run.estimate import estimate
from runner.run.source import Row
from tests.doubles.provider import FakeProvider
from tests.support.files import ROOT, read_jsonl, write_jsonl
from tests.support.run import caller_for, run_rows, tickets


def test_the_run_imports_neither_serve_nor_the_offline_model() -> None:
    code = (
        "import sys; from runner.provider.setup import configure; configure(); "
        "import runner.run.coordinator, runner.executors.online, runner.launch; "
        "print(sorted(m for m in sys.modules if m.startswith(('runner.serve', 'runner.local', "
        "'runner.executors.batch'))))"  # the batch executor: only --batch-api runs import it
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


def test_every_journal_line_starts_with_id_then_custom_id() -> None:
    """The journal reads ids by position on resume: the key order of records is pinned here."""
    for record in (
        result_record("row-7", {"choices": []}, "req-1", "bug", {"line": 7}),
        error_record("row-8", "bad_request", "no", {"line": 8}, 400),
        error_record('has "quotes"', "bad_request", "no", {}),
    ):
        line = orjson.dumps(record.line)
        assert list(record.line)[:2] == ["id", "custom_id"]
        expected = None if "\\" in line.decode() else record.custom_id
        assert custom_id_at_start(line) == expected
    assert custom_id_at_start(b'{"custom_id":"x","id":"batch_req_000000000000000000000000"}') is None


async def test_a_feed_ends_every_consumer_and_a_stop_drops_what_was_queued() -> None:
    feed = Feed(maxsize=4)
    for i in range(3):
        await feed.put(Row(i + 1, f"r{i}", {}))
    feed.end(drop=True)
    assert [row async for row in feed] == [] and feed.taken == 0

    feed = Feed(maxsize=2)
    seen: list[str] = []

    async def consume() -> None:
        async for row in feed:
            seen.append(row.custom_id)

    async def produce() -> None:
        for i in range(10):
            await feed.put(Row(i + 1, f"r{i}", {}))  # waits while two are queued
        feed.end()

    await asyncio.gather(produce(), *(consume() for _ in range(3)))
    assert sorted(seen) == sorted(f"r{i}" for i in range(10)) and feed.taken == 10


async def test_an_executor_of_our_own_plugs_into_the_coordinator(tmp_path: Path, provider: FakeProvider) -> None:
    """Any object with ``execute(feed, outbox)`` is an executor; the coordinator journals what it hands back."""

    class Echo(Silent):
        def resend(self, rows: list[Row]) -> None:
            raise AssertionError("no row here has a duplicate")

        async def execute(self, feed: Feed, outbox: Outbox) -> None:
            async for row in feed:
                if row.custom_id != "t-0002":  # a lost row: no record, so it stays to do
                    outbox.record(result_record(row.custom_id, {"choices": []}, None, "echo", {"line": row.line}))

    write_jsonl(tmp_path / "in.jsonl", tickets(5))
    settings = RunSettings(tmp_path / "in.jsonl", tmp_path / "run", "run", concurrency=2)
    report = await run(caller_for(provider), settings, executor=Echo())
    ids = [r["custom_id"] for r in read_jsonl(tmp_path / "run" / "results.jsonl")]
    assert sorted(ids) == ["t-0000", "t-0001", "t-0003", "t-0004"]
    assert report.status == "interrupted"  # a row came back without a record: not complete
    assert provider.stats().total == 0  # it never called the model
    again = await run_rows(tmp_path, provider, None, concurrency=2)  # the online executor finishes the rest
    assert sorted(r["custom_id"] for r in again.results) == [f"t-{i:04d}" for i in range(5)]
    assert provider.stats().total == 1


async def test_retry_failed_sends_a_fixed_bad_line_under_its_new_id(tmp_path: Path, provider: FakeProvider) -> None:
    good = tickets(3)
    lines = [
        orjson.dumps(good[0]).decode(),
        '{"id":"b","text":"app crashes on login",}',
        orjson.dumps(good[2]).decode(),
    ]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    first = await run_rows(tmp_path, provider, None)
    assert [e["custom_id"] for e in first.errors] == ["line-2"]

    lines[1] = '{"id":"b","text":"app crashes on login"}'  # the user fixes the line
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    second = await run_rows(tmp_path, provider, None, retry_failed=True, allow_changes=True)
    assert sorted(r["custom_id"] for r in second.results) == ["b", "t-0000", "t-0002"]
    assert second.errors == [] and second.report.status == "completed"
    assert provider.stats().total == 3  # b was sent, once


async def test_retry_failed_keeps_an_error_whose_row_left_the_input(tmp_path: Path, provider: FakeProvider) -> None:
    rows = tickets(2)
    (tmp_path / "in.jsonl").write_text(orjson.dumps(rows[0]).decode() + "\n{not json\n")
    await run_rows(tmp_path, provider, None)
    (tmp_path / "in.jsonl").write_text(orjson.dumps(rows[0]).decode() + "\n")  # the bad line is deleted
    again = await run_rows(tmp_path, provider, None, retry_failed=True, allow_changes=True)
    assert [e["custom_id"] for e in again.errors] == ["line-2"]  # still an error, never vanished
    assert "not found in the input" in again.errors[0]["error"]["message"]


async def test_a_same_size_edit_of_a_completed_input_is_seen(tmp_path: Path, provider: FakeProvider) -> None:
    # No ids: a row's id is its content's hash. The edit is outside the fingerprint's head and tail
    # samples, as in the report (3,000 short rows there; 500 long ones here).
    pad = "the quarterly review needs the numbers from every region before friday " * 4
    rows = [{"text": f"please export report {i:05d}; {pad}"} for i in range(500)]
    first = await run_rows(tmp_path, provider, rows, concurrency=32)
    assert first.report.status == "completed" and len(first.results) == 500
    text = (tmp_path / "in.jsonl").read_text()
    edited = text.replace("export report 00250", "import report 00250")
    assert len(edited) == len(text) and len(text) > 2 * (1 << 16)
    (tmp_path / "in.jsonl").write_text(edited)
    again = await run_rows(tmp_path, provider, None, concurrency=32)
    assert len(again.results) == 501 and provider.stats().total == 501  # the edited row is a new row, sent


async def test_a_dry_run_never_repairs_a_torn_journal(tmp_path: Path, provider: FakeProvider) -> None:
    await run_rows(tmp_path, provider, tickets(4))
    results = tmp_path / "run" / "results.jsonl"
    with results.open("ab") as f:
        f.write(b'{"id":"batch_req_0000')  # a crash mid-write
    size = results.stat().st_size
    found = await estimate(caller_for(provider), tmp_path / "in.jsonl", tmp_path / "run")
    assert found.done == 4 and results.stat().st_size == size  # read, not written
    scanned = journal.scan(tmp_path / "run", repair=False)
    assert scanned.torn == 1 and results.stat().st_size == size
    journal.scan(tmp_path / "run", repair=True)
    assert results.read_bytes().endswith(b"}\n")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_an_unreachable_provider_stops_the_run_and_records_nothing(
    tmp_path: Path, provider: FakeProvider
) -> None:
    write_jsonl(tmp_path / "in.jsonl", tickets(20))
    caller = caller_for(provider, max_attempts=2)
    caller = dataclasses.replace(caller, api_base=f"http://127.0.0.1:{_closed_port()}/v1")  # nothing listens: refused
    caller.limits.unreachable = (0.0, 3)  # stop after three rows in a row got no answer at all
    settings = RunSettings(tmp_path / "in.jsonl", tmp_path / "run", "run", concurrency=2)
    with pytest.raises(FatalProviderError, match=r"no answer from http://127\.0\.0\.1:\d+/v1 \(connection_error"):
        await run(caller, settings)
    assert read_jsonl(tmp_path / "run" / "errors.jsonl") == [] and read_jsonl(tmp_path / "run" / "results.jsonl") == []
    manifest = orjson.loads((tmp_path / "run" / "manifest.json").read_bytes())
    assert manifest["status"] == "failed"

    again = await run_rows(tmp_path, provider, None)  # the provider is back: every row is sent
    assert len(again.results) == 20 and again.errors == []


def test_reachability_records_a_row_that_failed_while_others_were_answered() -> None:
    now = [0.0]
    reach = Reachability(lambda: now[0], after=60.0, rows=2)
    mark = reach.last_heard
    now[0] = 5.0
    reach.heard()  # another row got an answer meanwhile
    assert reach.gave_up(mark) is Verdict.RECORD
    mark = reach.last_heard
    now[0] = 30.0
    assert reach.gave_up(mark) is Verdict.RETRY  # silent, but not for long enough
    now[0] = 70.0
    assert reach.gave_up(mark) is Verdict.STOP  # two rows, 65 s of silence


def test_the_cli_exits_3_for_an_unreachable_provider(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "in.jsonl", tickets(8))
    env: dict[str, Any] = {**os.environ}
    args = ["run", "classify", "--jobs-dir", str(ROOT / "jobs"), "--input", "in.jsonl", "--model",
            "openai/gpt-4o-mini", "--api-base", f"http://127.0.0.1:{_closed_port()}/v1", "--max-attempts", "1",
            "--unreachable-after", "0", "--concurrency", "1"]  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "runner", *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 3, proc.stderr
    assert "no answer from http://127.0.0.1" in proc.stderr
    assert not (tmp_path / "runs" / "classify" / "in" / "errors.jsonl").read_bytes()


async def test_an_answer_from_elsewhere_is_settled_as_online_and_rejected_ones_are_reasked(
    provider: FakeProvider,
) -> None:
    """``Caller.settle``: a batch output line or a cached answer becomes the record an online call would
    give; only an answer the job rejects costs a (re-asked) online call."""
    import dataclasses

    from runner.provider.provider import Answer
    from tests.support.run import CLASSIFY

    caller = caller_for(provider, job=dataclasses.replace(CLASSIFY, reasks=1))
    row = Row(3, "t-3", {"text": "The app crashes when I upload a photo"})
    online = await caller(row)
    body = online.line["response"]["body"]
    sent = provider.stats().total

    settled = await caller.settle(row, Answer(body, "req-x", 0.001, {}), {"via": "batch"})
    assert provider.stats().total == sent  # an accepted answer sends nothing
    assert settled.ok and settled.line["result"] == online.line["result"]
    assert settled.line["meta"]["via"] == "batch" and settled.line["meta"]["line"] == 3

    rejected = orjson.loads(orjson.dumps(body))
    rejected["choices"][0]["message"]["content"] = "not a label"
    reasked = await caller.settle(row, Answer(rejected, None, 0.001, {}))
    assert provider.stats().total == sent + 1  # one re-ask, online
    assert reasked.ok and reasked.line["result"] in (CLASSIFY.labels or {})
    assert reasked.line["meta"]["reasked"][0]["rejected"]


async def test_a_first_run_is_no_resume_however_long_the_input_takes_to_count(
    tmp_path: Path, provider: FakeProvider, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 24, item 12: counting a big input (over 8 MiB) ends after rows were journaled; that is no resume
    (before: "resuming: 0 done, 1 failed, 2 to go" on a first run)."""
    from runner.run import coordinator
    from tests.support.files import line_count, wait_until

    counted = coordinator.count_lines

    def slow_count(path: Path) -> int:  # counting ends only once this run has journaled rows of its own
        results = tmp_path / "run" / "results.jsonl"
        wait_until(lambda: results.exists() and line_count(results) >= 2, "rows journaled", 30)
        return counted(path)

    monkeypatch.setattr(coordinator, "count_lines", slow_count)
    caplog.set_level(logging.INFO)
    provider.configure(latency_ms=50)  # the run outlasts the count
    done = await run_rows(tmp_path, provider, tickets(40), concurrency=2)
    assert done.report.status == "completed" and "resuming" not in caplog.text
