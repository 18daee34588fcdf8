"""``--batch-api``: rows through the test server's Batch API, with online rescue (issue #15).

In-process runs go through litellm's real batch functions and HTTP; the crash tests run the CLI
as a subprocess and SIGKILL it while the fake server parks exactly the answer that matters (the
create call's, a download's). Nothing here waits on time: batches finish when a test releases them.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import signal
from pathlib import Path
from typing import Any

import orjson
import pytest
from openai.types.chat import ChatCompletion

from runner.call.caller import Caller
from runner.call.retry import RetryPolicy
from runner.errors import UsageError
from runner.executors.batch import BatchExecutor, BatchOptions
from runner.executors.batch_lines import line_of
from runner.options import RunOptions
from runner.permits.budget import Budget
from runner.run.coordinator import RunSettings, run
from tests.doubles.provider import FakeProvider
from tests.support.batch import by_id, via
from tests.support.cli import runner, start_quietly
from tests.support.files import ROOT, SECRET, line_count, read_jsonl, wait_until, write_jsonl
from tests.support.run import CLASSIFY, INLINE, MODEL, Finished, caller_for, finished, run_rows, tickets

FAST = BatchOptions(poll_s=0.02)


async def batch_run(
    tmp_path: Path,
    provider: FakeProvider,
    rows: list[Any] | None,
    options: BatchOptions = FAST,
    budget: Budget | None = None,
    concurrency: int = 8,
    as_cli: bool = False,
) -> Finished:
    """Write ``rows`` (None: keep the input), run with the batch executor, read the run back. ``as_cli``:
    the run the CLI test's command makes (its caller and run directory), so a test can go on in-process."""
    from runner.provider.provider import aclose

    if rows is not None:
        tmp_path.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240
        write_jsonl(tmp_path / "in.jsonl", rows)
    caller, run_dir = caller_for(provider), tmp_path / "run"
    if as_cli:
        policy = RetryPolicy(max_attempts=CLASSIFY.max_attempts)
        caller = Caller(job=CLASSIFY, policy=policy, timeout=CLASSIFY.timeout, model=MODEL, api_base=provider.url)
        run_dir = tmp_path / "runs" / "classify" / "in"
    caller = dataclasses.replace(caller, budget=budget)
    settings = RunSettings(tmp_path / "in.jsonl", run_dir, run_dir.name, concurrency=concurrency)
    try:
        report = await run(caller, settings, executor=BatchExecutor(caller, run_dir, concurrency, options))
    finally:
        await aclose()
    return finished(report, run_dir)


async def test_2000_rows_through_the_batch_api_once_each_at_half_price_with_the_records_of_a_plain_run(
    tmp_path: Path, provider: FakeProvider
) -> None:
    rows = tickets(2000)
    batched = await batch_run(tmp_path / "b", provider, rows, BatchOptions(poll_s=0.02, batch_size=700))
    assert batched.report.status == "completed" and batched.errors == []
    got = by_id(batched.results)
    assert sorted(got) == sorted(r["id"] for r in rows)
    stats = provider.batches.stats()
    assert stats.batches == 3 and stats.lines == 2000 and provider.stats().total == 0  # no online call
    assert via(batched.results) == {"batch": 2000}
    assert {r["meta"]["batch_id"] for r in batched.results} == set(stats.statuses)

    sample = rows[:: len(rows) // 100]  # a plain run of 2,000 rows would cost the suite seconds
    plain = await run_rows(tmp_path / "p", provider, sample, concurrency=32)
    cost = 0.0
    for record in plain.results:  # the same records a plain run gives, but for meta and the ids it makes
        batch = got[record["custom_id"]]
        assert list(batch) == list(record) and batch["result"] == record["result"]
        assert batch["response"]["status_code"] == 200 and batch["error"] is None
        body, online = batch["response"]["body"], record["response"]["body"]
        ChatCompletion.model_validate(body)  # as the provider wrote it; litellm adds a few null keys online
        assert body["usage"] == online["usage"] and body["model"] == online["model"]
        assert body["choices"][0]["message"]["content"] == online["choices"][0]["message"]["content"]
        assert batch["meta"]["cost_usd"] == pytest.approx(record["meta"]["cost_usd"] / 2)
        cost += batch["meta"]["cost_usd"]
    assert cost == pytest.approx(plain.manifest["cost_usd"] / 2)
    lanes = batched.manifest["lanes"]
    assert set(lanes) == {"batch"} and lanes["batch"]["requests"] == 2000
    assert batched.manifest["cost_usd"] == pytest.approx(sum(r["meta"]["cost_usd"] for r in batched.results))
    assert lanes["batch"]["usage"] == batched.manifest["usage"] and set(plain.manifest["lanes"]) == {"online"}
    assert batched.manifest["batches"]["submitted"] == 3 and batched.manifest["batches"]["open"] == []

    uploaded = provider.batches.uploaded()
    assert len(uploaded) == 3
    for content in uploaded:  # the key and the client's own settings never reach the file
        assert SECRET.encode() not in content
        first = orjson.loads(content.splitlines()[0])
        assert first["url"] == "/v1/chat/completions" and first["body"]["model"] == "gpt-4o-mini"
        assert not {"api_key", "api_base", "timeout", "max_retries"} & set(first["body"])


def test_a_request_line_carries_no_credentials_or_client_settings() -> None:
    request = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "api_key": SECRET,
               "api_base": "http://x", "timeout": 5, "max_retries": 0, "stream": True,
               "stream_options": {"include_usage": True}, "temperature": 0}  # fmt: skip
    line = orjson.loads(line_of("r1", request))
    assert line == {"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions",
                    "body": {"model": "gpt-4o-mini", "messages": request["messages"], "temperature": 0}}  # fmt: skip


async def test_failed_lines_and_a_failed_batch_go_online_as_an_online_run_would(
    tmp_path: Path, provider: FakeProvider
) -> None:
    rows = tickets(6)
    rows[1]["text"] += " [[fail:500:times=1]]"  # fails in the batch, answered online
    rows[2]["text"] += " [[fail:400]]"  # fails everywhere: the online call's error record
    first = await batch_run(tmp_path / "a", provider, rows)
    assert sorted(r["custom_id"] for r in first.results) == ["t-0000", "t-0001", "t-0003", "t-0004", "t-0005"]
    assert [e["custom_id"] for e in first.errors] == ["t-0002"] and first.errors[0]["error"]["status"] == 400
    assert via(first.results) == {"batch": 4, "online": 1}
    assert provider.stats().total == 2 + 1  # t-0001 fails its first online attempt too (times counts per lane)

    provider.batches.configure(fail_batch=True)  # the whole batch fails: every row online
    second = await batch_run(tmp_path / "b", provider, tickets(4, "w"))
    assert via(second.results) == {"online": 4} and second.manifest["batches"]["rescued_online"] == 4
    assert set(second.manifest["lanes"]) == {"online"}


async def test_an_expired_batch_keeps_its_output_and_resubmits_the_rest(tmp_path: Path, provider: FakeProvider) -> None:
    provider.batches.configure(held=True)
    submitted = await batch_run(tmp_path, provider, tickets(10), BatchOptions(wait=False, poll_s=0.02))
    assert submitted.results == [] and submitted.report.status == "interrupted"  # nothing lost: it waits remotely
    provider.batches.configure(expire_after=6)
    provider.batches.release()
    provider.batches.wait_for(lambda s: "expired" in s.statuses.values())
    provider.batches.configure(expire_after=None)

    done = await batch_run(tmp_path, provider, None)
    assert done.report.status == "completed" and len(by_id(done.results)) == 10
    assert via(done.results) == {"batch": 10} and provider.stats().total == 0
    stats = provider.batches.stats()
    assert stats.batches == 2 and stats.lines == 10  # the 4 unanswered rows went again, once
    assert done.manifest["batches"]["resubmitted"] == 4


async def test_past_the_deadline_an_expired_batchs_rest_goes_online(tmp_path: Path, provider: FakeProvider) -> None:
    provider.batches.configure(held=True, expire_after=6)
    await batch_run(tmp_path, provider, tickets(10), BatchOptions(wait=False, poll_s=0.02))
    provider.batches.release()
    provider.batches.wait_for(lambda s: "expired" in s.statuses.values())

    done = await batch_run(tmp_path, provider, None, BatchOptions(poll_s=0.02, deadline_s=0.001))
    assert done.report.status == "completed" and len(by_id(done.results)) == 10
    assert via(done.results) == {"batch": 6, "online": 4} and provider.stats().total == 4
    assert provider.batches.stats().batches == 1
    lanes = done.manifest["lanes"]
    assert lanes["batch"]["requests"] == 6 and lanes["online"]["requests"] == 4
    assert done.manifest["cost_usd"] == pytest.approx(lanes["batch"]["cost_usd"] + lanes["online"]["cost_usd"])


async def test_a_row_answered_by_both_lanes_is_journaled_once(tmp_path: Path, provider: FakeProvider) -> None:
    """At the deadline the rows go online and the batch is cancelled; the cancel comes too late and the
    batch answers them too: the batch's answers are counted as duplicates and dropped."""
    provider.batches.configure(held=True, cancel_too_late=True)
    await batch_run(tmp_path, provider, tickets(8), BatchOptions(wait=False, poll_s=0.02))
    done = await batch_run(tmp_path, provider, None, BatchOptions(poll_s=0.02, deadline_s=0.001))
    assert done.report.status == "completed" and len(by_id(done.results)) == 8
    assert via(done.results) == {"online": 8}
    stats = provider.batches.stats()
    assert stats.cancelled == 1 and stats.lines == 8 and provider.stats().total == 8  # both lanes answered
    assert done.manifest["batches"]["duplicates_ignored"] == 8
    assert done.manifest["batches"]["duplicates_cost_usd"] > 0


async def test_an_enqueued_token_refusal_waits_and_submits_later(tmp_path: Path, provider: FakeProvider) -> None:
    provider.batches.configure(held=True, enqueued_token_limit=1500)  # one batch of 5 tickets fits, not two

    async def release_after_the_refusal() -> None:
        await asyncio.to_thread(provider.batches.wait_for, lambda s: s.refused >= 1)
        provider.batches.release()

    releasing = asyncio.create_task(release_after_the_refusal())
    done = await batch_run(tmp_path, provider, tickets(10), BatchOptions(poll_s=0.02, batch_size=5))
    await releasing
    assert done.report.status == "completed" and len(by_id(done.results)) == 10
    assert via(done.results) == {"batch": 10}
    assert done.manifest["batches"]["refused_enqueued_tokens"] >= 1
    assert provider.batches.stats().lines == 10


async def test_max_cost_reserves_a_batchs_worst_case_at_batch_prices_before_submitting(
    tmp_path: Path, provider: FakeProvider
) -> None:
    rows = tickets(20)
    none = await batch_run(tmp_path / "a", provider, rows, FAST, budget=Budget(0.00001))
    assert none.report.stop_reason == "max_cost" and none.results == []
    assert provider.batches.stats().batches == 0  # nothing submitted

    # Room for one batch of 10 at batch prices (at online prices not even that), not for two.
    from runner.provider.prices import prices
    from runner.provider.provider import estimate_tokens
    from runner.run.source import Row

    price, caller = prices(MODEL), caller_for(provider)
    assert price is not None
    worst = []
    for i, row in enumerate(rows):
        request = caller.request(Row(i + 1, row["id"], row))[0]
        assert request is not None
        prompt, most = estimate_tokens(request)
        worst.append(price.cost(round(prompt * 1.1), most, batch=True) or 0.0)
    cap = 15 * max(worst)
    assert sum(worst[:10]) <= cap < sum(worst) and 2 * sum(worst[:10]) > cap
    some = await batch_run(tmp_path / "b", provider, rows, BatchOptions(poll_s=0.02, batch_size=10), Budget(cap))
    assert some.report.stop_reason == "max_cost" and len(some.results) == 10
    assert provider.batches.stats().batches == 1 and some.manifest["cost_usd"] <= cap


def test_batch_flags_need_batch_api_and_a_provider_litellm_can_batch(tmp_path: Path) -> None:
    from runner.batch_flags import check_batch_flags, duration

    assert duration("6h") == 21600 and duration("1h30m") == 5400 and duration("45") == 45
    for bad in ("6x", "0", "-1h", "8d", "h"):
        with pytest.raises(argparse.ArgumentTypeError):
            duration(bad)
    args = RunOptions("classify", batch_api=False, no_wait=True, batch_deadline=None, batch_size=None)
    with pytest.raises(UsageError, match="--no-wait applies only with --batch-api; add --batch-api or drop it"):
        check_batch_flags(args)

    from runner.executors.batch import batch_limits

    assert batch_limits("openai/gpt-4o-mini").max_requests == 50_000
    assert batch_limits("anthropic/claude-haiku-4-5").max_requests == 100_000  # through the anthropic SDK
    assert batch_limits("gemini/gemini-2.5-flash").max_bytes == 200_000_000  # inline or a file, over REST
    with pytest.raises(UsageError, match="cannot create batches for provider 'mistral'"):
        batch_limits("mistral/mistral-small-latest")


# -- the command line: --no-wait, status, SIGKILL ------------------------------------------------


def cli_args(provider: FakeProvider, *extra: str) -> list[str]:
    return ["run", "classify", "--jobs-dir", str(ROOT / "jobs"), "--input", "in.jsonl", "--model", MODEL,
            "--api-base", provider.url, "--batch-api", "--batch-poll", "0.05", *extra]  # fmt: skip


async def test_no_wait_submits_then_each_run_collects_what_finished(tmp_path: Path, provider: FakeProvider) -> None:
    """22:00 submit (the command, exit 0), 02:00 collect part, 04:00 collect the rest (the same run in-process:
    a second and third CLI start would only add litellm's import time)."""
    write_jsonl(tmp_path / "in.jsonl", tickets(30))
    run_dir = tmp_path / "runs" / "classify" / "in"
    provider.batches.configure(held=True)
    first = await asyncio.to_thread(runner, *cli_args(provider, "--no-wait", "--batch-size", "10"), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert provider.batches.stats().batches == 3 and line_count(run_dir / "results.jsonl") == 0

    provider.batches.release(batches=1)  # one finishes; two still run
    await asyncio.to_thread(provider.batches.wait_for, lambda s: "completed" in s.statuses.values())
    collect = BatchOptions(wait=False, poll_s=0.02, batch_size=10)
    second = await batch_run(tmp_path, provider, None, collect, as_cli=True)
    assert second.report.status == "interrupted" and second.errors == []  # rows wait remotely: exit 0
    assert len(second.results) == 10 and provider.batches.stats().batches == 3  # none submitted again

    status = runner("status", "classify", "--run-id", "in", "--runs-dir", "runs", "--json", cwd=tmp_path)
    remote = orjson.loads(status.stdout)["batches"]
    assert [b["status"] for b in remote] == ["in_progress", "in_progress"]
    assert all(b["batch_id"].startswith("batch_") and b["expires_at"] and b["age_s"] is not None for b in remote)
    text = runner("status", "classify", "--runs-dir", "runs", cwd=tmp_path).stdout
    assert remote[0]["batch_id"] in text and "batch     " in text

    provider.batches.release()
    await asyncio.to_thread(provider.batches.wait_for, lambda s: list(s.statuses.values()) == ["completed"] * 3)
    third = await batch_run(tmp_path, provider, None, collect, as_cli=True)
    assert third.report.status == "completed"
    assert len(by_id(read_jsonl(run_dir / "results.jsonl"))) == 30
    assert orjson.loads((run_dir / "manifest.json").read_bytes())["status"] == "completed"
    assert provider.batches.stats().lines == 30 and provider.stats().total == 0


async def test_sigkill_between_creating_a_batch_and_recording_it_and_while_downloading(
    tmp_path: Path, provider: FakeProvider
) -> None:
    """Killed twice: once while the create call's answer is parked (the batch exists, runner never
    learned its id), once while a download is parked with part of the output journaled. Every run
    after reconciles: no batch is created twice, every row is journaled once."""
    rows = tickets(800)
    write_jsonl(tmp_path / "in.jsonl", rows)
    run_dir = tmp_path / "runs" / "classify" / "in"
    args = cli_args(provider, "--batch-size", "200")

    provider.batches.configure(hold_create=True)
    killed = start_quietly(args, tmp_path)
    try:
        await asyncio.to_thread(provider.batches.wait_for, lambda s: s.parked == 1 and s.batches == 1)
        killed.send_signal(signal.SIGKILL)
    finally:
        killed.wait()
    provider.batches.release()

    provider.batches.configure(hold_content_after=2)  # two batches' output is read, the third download waits
    killed = start_quietly(args, tmp_path)
    try:
        await asyncio.to_thread(provider.batches.wait_for, lambda s: s.parked == 1)
        await asyncio.to_thread(wait_until, lambda: line_count(run_dir / "results.jsonl") == 400, "two batches")
        killed.send_signal(signal.SIGKILL)
    finally:
        killed.wait()
    provider.batches.release()
    assert provider.batches.stats().batches == 4  # the first batch was found again, not created twice

    last = await batch_run(tmp_path, provider, None, BatchOptions(poll_s=0.02, batch_size=200), as_cli=True)
    assert last.report.status == "completed"
    assert sorted(by_id(read_jsonl(run_dir / "results.jsonl"))) == sorted(r["id"] for r in rows)
    stats = provider.batches.stats()
    assert stats.batches == 4 and stats.lines == 800 and provider.stats().total == 0


def test_azure_rows_through_its_batch_api_once_each_at_half_price(
    tmp_path: Path, provider: FakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    """azure/ batches as litellm makes them (its /openai/files and /openai/batches, an api-version, the key in an
    api-key header the server checks), each row once at half its online price; a line failed in the batch is
    rescued online, at the deployment's own URL."""
    from runner.api import run as run_api

    provider.configure(api_key="az-key-1")
    monkeypatch.setenv("AZURE_API_KEY", "az-key-1")
    rows = tickets(8, "az")
    rows[3]["text"] += " [[fail:500:times=1]]"
    options = {"runs_dir": tmp_path / "runs", "api_base": provider.url, "model": "azure/gpt-4o-mini", "no_cache": True}
    batched = run_api(INLINE, rows, batch_api=True, batch_poll=0.02, **options)
    assert batched.counts == {"total": 8, "completed": 8, "failed": 0}
    assert via(list(batched.records())) == {"batch": 7, "online": 1} and provider.batches.stats().batches == 1
    online = {
        r["custom_id"]: r["meta"]["cost_usd"] for r in run_api(INLINE, rows, run_id="online", **options).records()
    }
    assert all(cost > 0 for cost in online.values())
    for record in batched.records():  # a batch answer at half its online twin's price, a rescued one at the same
        share = 0.5 if record["meta"].get("batch_id") else 1.0
        assert record["meta"]["cost_usd"] == pytest.approx(online[record["custom_id"]] * share)
