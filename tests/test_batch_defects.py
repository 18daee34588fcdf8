"""Issue 24's Batch API defects: never pay twice, never a wrong answer, never a crash on a transient error.

Each test failed before its fix (said at each). Through litellm's real HTTP path to the fake provider's
Batch API (tests/doubles/batches.py).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import orjson
import pytest

from runner.api import run
from runner.call.caller import Caller
from runner.call.retry import RetryPolicy
from runner.executors.batch import BatchExecutor, BatchOptions
from runner.job.definition import BATCH
from runner.permits.budget import Budget
from runner.provider.provider import aclose
from runner.run.coordinator import RunSettings
from runner.run.coordinator import run as run_rows
from tests.doubles.provider import FakeProvider
from tests.support.files import read_jsonl, write_jsonl
from tests.support.run import MODEL, tickets

pytestmark = pytest.mark.timeout(120)
EMBEDDER = "openai/text-embedding-3-small"


def chat_lines(n: int, prefix: str) -> list[dict[str, Any]]:
    return [{"custom_id": t["id"], "method": "POST", "url": "/v1/chat/completions",
             "body": {"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": t["text"]}]}}
            for t in tickets(n, prefix)]  # fmt: skip


def embedding_lines(n: int, prefix: str) -> list[dict[str, Any]]:
    return [{"custom_id": t["id"], "method": "POST", "url": "/v1/embeddings",
             "body": {"model": EMBEDDER, "input": t["text"]}} for t in tickets(n, prefix)]  # fmt: skip


async def batch_run(
    tmp_path: Path, provider: FakeProvider, rows: list[Any], options: BatchOptions, budget: Budget | None = None
) -> Path:
    """``rows`` (raw Batch input) through the batch executor, each line's own model; the run directory."""
    write_jsonl(tmp_path / "in.jsonl", rows)
    caller = Caller(BATCH, RetryPolicy(max_attempts=2, base_wait=0.01, max_wait=0.05), 5.0, api_base=provider.url,
                    budget=budget)  # fmt: skip
    run_dir = tmp_path / "run"
    settings = RunSettings(tmp_path / "in.jsonl", run_dir, "run", concurrency=4)
    try:
        await run_rows(caller, settings, executor=BatchExecutor(caller, run_dir, 4, options))
    finally:
        await aclose()
    return run_dir


def records(run_dir: Path) -> dict[str, dict[str, Any]]:
    found = read_jsonl(run_dir / "results.jsonl") + read_jsonl(run_dir / "errors.jsonl")
    assert len({r["custom_id"] for r in found}) == len(found), "a row was journaled twice"
    return {r["custom_id"]: r for r in found}


def test_a_start_without_batch_api_waits_for_the_rows_already_in_a_batch(
    tmp_path: Path, provider: FakeProvider, caplog: pytest.LogCaptureFixture
) -> None:
    """Item 1 (before: the 20 rows were sent online, the batch never collected nor counted). Item 10 too:
    the --no-wait run says where its rows are, once (before: 'came back without a record' as well)."""
    caplog.set_level(logging.INFO)
    provider.batches.configure(held=True)
    inp = write_jsonl(tmp_path / "in.jsonl", chat_lines(20, "n"))
    options: dict[str, Any] = {"runs_dir": tmp_path / "runs", "api_base": provider.url, "batch_poll": 0.02}
    first = run("batch", inp, batch_api=True, no_wait=True, **options)
    assert provider.batches.stats().batches == 1 and first.counts.get("completed", 0) == 0
    said = caplog.text
    assert "20 rows wait in 1 batch;" in said and "without a record" not in said
    provider.batches.release()
    again = run("batch", inp, **options)  # the same command, without --batch-api
    assert again.status == "completed" and provider.stats().total == 0  # not one row sent online
    done = records(again.run_dir)
    assert len(done) == 20 and {r["meta"]["via"] for r in done.values()} == {"batch"}
    assert provider.batches.stats().batches == 1  # nothing submitted again


async def test_a_cancel_refused_because_the_batch_finished_means_collect_it(
    tmp_path: Path, provider: FakeProvider
) -> None:
    """Item 2 (before: every row went online, the finished batch was dropped and shown in_progress forever)."""
    provider.batches.configure(held=True, finish_before_cancel=True)
    run_dir = await batch_run(tmp_path, provider, chat_lines(10, "c"), BatchOptions(poll_s=0.02, deadline_s=0.5))
    done = records(run_dir)
    assert len(done) == 10 and {r["meta"].get("via") for r in done.values()} == {"batch"}
    assert provider.stats().total == 0  # none paid twice
    batches = orjson.loads((run_dir / "manifest.json").read_bytes())["batches"]
    assert batches["open"] == [] and batches["by_status"] == {"completed": 1}


async def test_a_late_batch_is_still_collected_and_its_answers_counted(tmp_path: Path, provider: FakeProvider) -> None:
    """Item 2's other half: a batch whose rows went online anyway is read back later, and what it cost counted."""
    provider.batches.configure(held=True, cancel_too_late=True)
    options = BatchOptions(poll_s=0.02, deadline_s=0.5, drain_polls=1)
    run_dir = await batch_run(tmp_path, provider, chat_lines(6, "l"), options)
    assert provider.stats().total == 6  # rescued online at the deadline
    provider.batches.release()
    again = await batch_run(tmp_path, provider, chat_lines(6, "l"), options)  # the next invocation
    batches = orjson.loads((again / "manifest.json").read_bytes())["batches"]
    assert batches["open"] == [] and batches["duplicates_ignored"] == 6 and batches["duplicates_cost_usd"] > 0
    assert len(records(run_dir)) == 6


async def test_a_completed_run_whose_batch_is_still_open_collects_it_on_the_same_command(
    tmp_path: Path, provider: FakeProvider
) -> None:
    """Every row was answered online (the deadline rescue) and the run completed, its batch still open: the
    same command again, input untouched, collects the batch and counts what it cost (before: a completed run
    returned at once, so the paid answers were never counted)."""
    provider.batches.configure(held=True, slow_cancel=True)
    options = BatchOptions(poll_s=0.02, deadline_s=0.5, drain_polls=1)
    run_dir = await batch_run(tmp_path, provider, chat_lines(6, "k"), options)
    first = orjson.loads((run_dir / "manifest.json").read_bytes())
    assert first["status"] == "completed" and len(first["batches"]["open"]) == 1
    provider.batches.release()
    caller = Caller(BATCH, RetryPolicy(max_attempts=2, base_wait=0.01, max_wait=0.05), 5.0, api_base=provider.url)
    settings = RunSettings(tmp_path / "in.jsonl", run_dir, "run", concurrency=4)  # the same input, untouched
    try:
        report = await run_rows(caller, settings, executor=BatchExecutor(caller, run_dir, 4, options))
    finally:
        await aclose()
    batches = orjson.loads((run_dir / "manifest.json").read_bytes())["batches"]
    assert report.status == "completed" and batches["open"] == [] and batches["duplicates_ignored"] == 6, (
        batches,
        read_jsonl(run_dir / "batches" / "ledger.jsonl")
        if (run_dir / "batches" / "ledger.jsonl").exists()
        else list(run_dir.iterdir()),
    )
    assert len(records(run_dir)) == 6 and provider.stats().total == 6  # nothing sent again


async def test_embedding_rows_go_in_a_batch_of_their_own_to_their_endpoint(
    tmp_path: Path, provider: FakeProvider
) -> None:
    """Item 4 (before: every line went to /v1/chat/completions; embeddings were journaled as chat answers)."""
    rows = chat_lines(3, "t") + embedding_lines(3, "e")
    run_dir = await batch_run(tmp_path, provider, rows, BatchOptions(poll_s=0.02))
    done = records(run_dir)
    assert provider.batches.stats().batches == 2  # one per endpoint, as OpenAI requires
    for custom_id, record in done.items():
        body = record["response"]["body"]
        assert record["meta"]["via"] == "batch"
        if custom_id.startswith("e-"):
            assert body["object"] == "list" and len(body["data"][0]["embedding"]) > 0
        else:
            assert body["object"] == "chat.completion"


async def test_transient_errors_listing_and_downloading_are_retried(tmp_path: Path, provider: FakeProvider) -> None:
    """Item 8 (before: a 500 downloading the output crashed the run with a traceback)."""
    provider.batches.configure(flaky_reads=2)
    run_dir = await batch_run(tmp_path, provider, chat_lines(5, "f"), BatchOptions(poll_s=0.02))
    assert len(records(run_dir)) == 5 and provider.stats().total == 0


async def test_max_cost_that_holds_the_batch_back_says_nothing_is_in_flight(
    tmp_path: Path, provider: FakeProvider, caplog: pytest.LogCaptureFixture
) -> None:
    """Item 10 (before: 'waiting up to 30s for 6 in flight' and '6 rows came back without a record')."""
    caplog.set_level(logging.INFO)
    await batch_run(tmp_path, provider, chat_lines(6, "m"), BatchOptions(poll_s=0.02), Budget(0.00001))
    assert "for 0 in flight" in caplog.text and "without a record" not in caplog.text
    assert provider.batches.stats().batches == 0


async def test_a_batch_whose_error_file_cannot_be_downloaded_settles_nothing() -> None:
    """batchfix's finding: the output was settled before the error file was read, so a download that failed
    for good after its retries left the error file's rows nowhere. Both files come first now."""
    from runner.errors import FatalProviderError
    from runner.executors.batch_api import BatchApi, Remote
    from runner.executors.batch_collect import download
    from runner.provider.failures import Disposition, ProviderFailure

    class Api(BatchApi):
        def __init__(self, failure: ProviderFailure | None) -> None:
            super().__init__()
            object.__setattr__(self, "failure", failure)

        async def content(self, file_id: str) -> bytes:
            if file_id == "errors" and self.failure is not None:  # type: ignore[attr-defined]
                raise self.failure  # type: ignore[attr-defined]
            return b'{"custom_id": "a"}\n'

    remote = Remote("batch_1", "completed", {}, output_file_id="output", error_file_id="errors")
    assert await download(Api(ProviderFailure(Disposition.RETRY, "server_error", "boom", 500)), remote) is None
    assert await download(Api(None), remote) == [b'{"custom_id": "a"}\n'] * 2
    with pytest.raises(FatalProviderError, match="auth"):
        await download(Api(ProviderFailure(Disposition.FATAL, "auth", "bad key", 401)), remote)


async def test_a_kill_while_a_batch_is_being_journaled_counts_its_own_answers_once(
    tmp_path: Path, provider: FakeProvider
) -> None:
    """The state a SIGKILL leaves while a finished batch's answers are being journaled: some of its rows in
    results.jsonl, the ledger not yet saying it was collected. The next start reads the batch again and journals
    the rest; the answers journaled before are the batch's own, not late answers paid twice (before: counted as
    ``duplicates_ignored`` with their cost, and that cost charged to --max-cost again)."""
    lines = chat_lines(20, "s")
    run_dir = await batch_run(tmp_path, provider, lines, BatchOptions(poll_s=0.02))
    results = (run_dir / "results.jsonl").read_bytes().splitlines(keepends=True)
    (run_dir / "results.jsonl").write_bytes(b"".join(results[:12]))
    ledger = run_dir / "batches" / "ledger.jsonl"
    kept = [line for line in ledger.read_bytes().splitlines(keepends=True) if b'"event":"collected"' not in line]
    ledger.write_bytes(b"".join(kept))

    budget = Budget(1.0)
    await batch_run(tmp_path, provider, lines, BatchOptions(poll_s=0.02), budget=budget)
    assert len(records(run_dir)) == 20 and provider.batches.stats().batches == 1 and provider.stats().total == 0
    manifest = orjson.loads((run_dir / "manifest.json").read_bytes())
    assert manifest["batches"]["duplicates_ignored"] == 0 and manifest["batches"]["duplicates_cost_usd"] == 0
    paid = sum(r["meta"]["cost_usd"] for r in read_jsonl(run_dir / "results.jsonl"))
    assert budget.spent == pytest.approx(paid)  # what the 20 records cost (12 from the journal), nothing more
