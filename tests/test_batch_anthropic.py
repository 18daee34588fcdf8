"""``--batch-api`` with ``anthropic/`` models: Anthropic's Message Batches through the anthropic SDK (issue #25).

Every run goes through the SDK's real HTTP path (and litellm's, for the online lane and the rescue)
to the fake Anthropic API in tests/doubles/anthropic.py, speaking Anthropic's wire format. Batches end
when a test releases them; the crash test SIGKILLs the CLI while the fake parks the create call's
answer (the batch exists, runner never learned its id).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import signal
from pathlib import Path
from typing import Any

import pytest
from openai.types.chat import ChatCompletion
from pydantic import BaseModel

from runner.call.caller import Caller
from runner.call.retry import RetryPolicy
from runner.errors import FatalProviderError, UsageError
from runner.executors.anthropic_batches import AnthropicBatches
from runner.executors.batch import BatchExecutor, BatchOptions
from runner.executors.batch_seam import Tag
from runner.job.definition import load_job
from runner.run.coordinator import RunSettings, run
from tests.doubles.provider import FakeProvider
from tests.support.batch import by_id, canonical, no_secret_in, via
from tests.support.cli import runner, start_quietly
from tests.support.files import ROOT, SECRET, line_count, read_jsonl, text_of, wait_until, write_jsonl
from tests.support.run import CLASSIFY, Finished, caller_for, finished, tickets

CLAUDE = "anthropic/claude-haiku-4-5"  # litellm's map has its batch prices: half the online ones
FAST = BatchOptions(poll_s=0.02)


@pytest.fixture(autouse=True)
def _anthropic_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)


async def claude_run(
    tmp_path: Path,
    provider: FakeProvider,
    rows: list[Any] | None,
    options: BatchOptions | None = FAST,
    as_cli: bool = False,
) -> Finished:
    """``rows`` (None: keep the input) through the Batch API (``options`` None: online) with CLAUDE."""
    from runner.provider.provider import aclose

    if rows is not None:
        tmp_path.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240
        write_jsonl(tmp_path / "in.jsonl", rows)
    caller = dataclasses.replace(caller_for(provider), model=CLAUDE, api_base=provider.root)
    run_dir = tmp_path / "run"
    if as_cli:  # the caller and run directory the CLI's command makes
        policy = RetryPolicy(max_attempts=CLASSIFY.max_attempts)
        caller = Caller(job=CLASSIFY, policy=policy, timeout=CLASSIFY.timeout, model=CLAUDE, api_base=provider.root)
        run_dir = tmp_path / "runs" / "classify" / "in"
    settings = RunSettings(tmp_path / "in.jsonl", run_dir, run_dir.name, concurrency=8)
    executor = None if options is None else BatchExecutor(caller, run_dir, 8, options)
    try:
        report = await run(caller, settings, executor=executor)
    finally:
        await aclose()
    return finished(report, run_dir)


def cli_args(provider: FakeProvider, *extra: str) -> list[str]:
    return ["run", "classify", "--jobs-dir", str(ROOT / "jobs"), "--input", "in.jsonl", "--model", CLAUDE,
            "--api-base", provider.root, "--batch-api", "--batch-poll", "0.05", *extra]  # fmt: skip


@pytest.mark.parametrize("n", [40, pytest.param(2000, marks=pytest.mark.slow)])  # 2,000: as the issue asks
async def test_rows_through_message_batches_give_the_online_records_at_half_price(
    tmp_path: Path, provider: FakeProvider, n: int
) -> None:
    rows = tickets(n)
    batched = await claude_run(tmp_path / "b", provider, rows, BatchOptions(poll_s=0.02, batch_size=-(-n // 3)))
    assert batched.report.status == "completed" and batched.errors == []
    stats = provider.anthropic.stats()
    assert stats.batches == 3 and stats.lines == n and stats.online == 0  # not one online call
    assert via(batched.results) == {"batch": n}
    sent_in_batches = list(provider.anthropic.bodies)
    assert all("anthropic-beta" not in h for h in provider.anthropic.headers)  # a plain job needs no beta

    plain = await claude_run(tmp_path / "p", provider, rows, options=None)
    assert provider.anthropic.stats().online == n
    # Each request in a batch is the body the online call sent for the same row (litellm's transformation).
    assert canonical(sent_in_batches) == canonical(provider.anthropic.bodies[n:])

    got = by_id(batched.results)
    assert sorted(got) == sorted(r["id"] for r in rows)
    cost = 0.0
    for record in plain.results:  # the same record as online, but for meta and the ids each answer has
        batch = got[record["custom_id"]]
        assert list(batch) == list(record) and batch["result"] == record["result"]
        body, online = batch["response"]["body"], record["response"]["body"]
        ChatCompletion.model_validate(body)
        drop = ("id", "created")
        assert {k: v for k, v in body.items() if k not in drop} == {k: v for k, v in online.items() if k not in drop}
        assert batch["meta"]["via"] == "batch" and batch["meta"]["batch_id"].startswith("msgbatch_")
        assert batch["meta"]["cost_usd"] == pytest.approx(record["meta"]["cost_usd"] / 2)
        cost += batch["meta"]["cost_usd"]
    assert cost == pytest.approx(plain.manifest["cost_usd"] / 2) and cost > 0
    assert batched.manifest["cost_usd"] == pytest.approx(cost)
    assert batched.manifest["usage"] == plain.manifest["usage"]
    lanes = batched.manifest["lanes"]
    assert set(lanes) == {"batch"} and lanes["batch"]["requests"] == n
    assert batched.manifest["batches"]["submitted"] == 3 and batched.manifest["batches"]["open"] == []
    no_secret_in(tmp_path)


async def test_a_forced_tool_call_comes_back_as_the_online_call_gives_it(
    tmp_path: Path, provider: FakeProvider
) -> None:
    """The extract job (tools, a forced tool_choice): the same request bodies and records as online."""
    from runner.provider.provider import aclose

    extract = dataclasses.replace(load_job("extract", ROOT / "jobs"), stream=False)
    rows = tickets(6)
    found: dict[str, Finished] = {}
    for lane in ("batch", "online"):
        folder = tmp_path / lane
        folder.mkdir()
        write_jsonl(folder / "in.jsonl", rows)
        caller = dataclasses.replace(caller_for(provider, job=extract), model=CLAUDE, api_base=provider.root)
        settings = RunSettings(folder / "in.jsonl", folder / "run", "run", concurrency=4)
        executor = BatchExecutor(caller, folder / "run", 4, FAST) if lane == "batch" else None
        try:
            found[lane] = finished(await run(caller, settings, executor=executor), folder / "run")
        finally:
            await aclose()
    assert provider.anthropic.stats().online == 6 and provider.anthropic.stats().batches == 1
    assert canonical(provider.anthropic.bodies[:6]) == canonical(provider.anthropic.bodies[6:])
    batched, online = by_id(found["batch"].results), by_id(found["online"].results)
    assert len(batched) == 6 and via(found["batch"].results) == {"batch": 6}
    for custom_id, record in online.items():
        body, plain = batched[custom_id]["response"]["body"], record["response"]["body"]
        assert batched[custom_id]["result"] == record["result"] and body["choices"][0]["finish_reason"] == "tool_calls"
        drop = ("id", "created")
        calls = [c["function"] for c in body["choices"][0]["message"]["tool_calls"]]
        assert calls == [c["function"] for c in plain["choices"][0]["message"]["tool_calls"]]
        without = {k: v for k, v in body.items() if k not in (*drop, "choices")}
        assert without == {k: v for k, v in plain.items() if k not in (*drop, "choices")}


class Verdict(BaseModel):
    label: str
    confidence: float


async def test_a_schema_job_goes_with_its_beta_and_comes_back_as_online(tmp_path: Path, provider: FakeProvider) -> None:
    """A job with a schema: litellm sends it as output_format with the structured-outputs beta (once per batch)
    and reads the answer in JSON mode (the ``j`` on the request id): the same bodies and records as online."""
    from runner.provider.provider import aclose

    build = CLASSIFY.build_request
    job = dataclasses.replace(CLASSIFY, name="verdict", build_request=lambda r: {**build(r), "max_tokens": 50},
                              parse_result=None, schema=Verdict, reasks=1)  # fmt: skip
    rows = [{"id": f"v{i}", "text": f'[[answer:{{"label": "bug", "confidence": 0.{i}}}]] it crashes'} for i in range(4)]
    found: dict[str, Finished] = {}
    for lane in ("batch", "online"):
        folder = tmp_path / lane
        folder.mkdir()
        write_jsonl(folder / "in.jsonl", rows)
        caller = dataclasses.replace(caller_for(provider, job=job), model=CLAUDE, api_base=provider.root)
        settings = RunSettings(folder / "in.jsonl", folder / "run", "run", concurrency=4)
        executor = BatchExecutor(caller, folder / "run", 4, FAST) if lane == "batch" else None
        try:
            found[lane] = finished(await run(caller, settings, executor=executor), folder / "run")
        finally:
            await aclose()
    assert "output_format" in provider.anthropic.bodies[0]
    assert canonical(provider.anthropic.bodies[:4]) == canonical(provider.anthropic.bodies[4:])
    [create] = provider.anthropic.headers
    assert "structured-outputs" in create.get("anthropic-beta", "")
    assert all(i.endswith("j") for i in provider.anthropic.custom_ids)
    batched, online = by_id(found["batch"].results), by_id(found["online"].results)
    assert via(found["batch"].results) == {"batch": 4} and len(online) == 4
    for custom_id, record in online.items():
        assert (
            batched[custom_id]["result"]
            == record["result"]
            == {"label": "bug", "confidence": float(f"0.{custom_id[1]}")}
        )
        body, plain = batched[custom_id]["response"]["body"], record["response"]["body"]
        assert {k: v for k, v in body.items() if k not in ("id", "created")} == {
            k: v for k, v in plain.items() if k not in ("id", "created")
        }


async def test_errored_rows_follow_the_online_classification(tmp_path: Path, provider: FakeProvider) -> None:
    """invalid_request_error: the row's error record at once, as online (no second call); overloaded and
    api_error: asked again online, where the answer comes."""
    rows = tickets(6)
    rows[1]["text"] += " [[fail:503:times=1]]"  # 529 overloaded_error in the batch, answered online
    rows[2]["text"] += " [[fail:400]]"  # invalid everywhere
    rows[3]["text"] += " [[fail:500:times=1]]"  # api_error in the batch, answered online
    done = await claude_run(tmp_path / "b", provider, rows)
    assert sorted(r["custom_id"] for r in done.results) == ["t-0000", "t-0001", "t-0003", "t-0004", "t-0005"]
    assert via(done.results) == {"batch": 3, "online": 2}
    by_key = provider.anthropic.stats().by_key  # ("times" counts per lane: each fails its first online call too)
    assert provider.anthropic.stats().online == 4 and f"online:{rows[2]['text']}" not in by_key  # t-0002: once
    [error] = done.errors
    assert error["custom_id"] == "t-0002" and error["meta"]["via"] == "batch"

    online = await claude_run(tmp_path / "o", provider, [rows[2]], options=None)  # the same row, online
    [alone] = online.errors
    assert (error["error"]["code"], error["error"]["status"]) == (alone["error"]["code"], alone["error"]["status"])


async def test_an_expired_batch_keeps_its_answers_and_the_rest_go_again_or_online(
    tmp_path: Path, provider: FakeProvider
) -> None:
    """--no-wait submits; the batch expires with 6 of 10 answered; the next invocation keeps the 6 and
    resubmits the 4 (a new batch); past the deadline, an expired batch's rest goes online instead."""
    provider.anthropic.configure(held=True, expire_after=6)
    submitted = await claude_run(tmp_path / "a", provider, tickets(10), BatchOptions(wait=False, poll_s=0.02))
    assert submitted.results == [] and submitted.report.status == "interrupted"
    provider.anthropic.release()
    provider.anthropic.wait_for(lambda s: list(s.statuses.values()) == ["ended"])
    provider.anthropic.configure(expire_after=None)
    done = await claude_run(tmp_path / "a", provider, None)
    assert done.report.status == "completed" and len(by_id(done.results)) == 10
    assert via(done.results) == {"batch": 10} and done.manifest["batches"]["resubmitted"] == 4
    stats = provider.anthropic.stats()
    assert stats.batches == 2 and stats.lines == 10 and stats.online == 0

    provider.anthropic.configure(held=True, expire_after=6)
    await claude_run(tmp_path / "b", provider, tickets(10, "x"), BatchOptions(wait=False, poll_s=0.02))
    provider.anthropic.release()
    provider.anthropic.wait_for(lambda s: s.batches == 3 and "in_progress" not in s.statuses.values())
    rescued = await claude_run(tmp_path / "b", provider, None, BatchOptions(poll_s=0.02, deadline_s=0.001))
    assert rescued.report.status == "completed" and len(by_id(rescued.results)) == 10
    assert via(rescued.results) == {"batch": 6, "online": 4} and provider.anthropic.stats().batches == 3
    lanes = rescued.manifest["lanes"]
    assert lanes["batch"]["requests"] == 6 and lanes["online"]["requests"] == 4


async def test_near_the_deadline_a_running_batch_is_cancelled_and_its_rows_go_online(
    tmp_path: Path, provider: FakeProvider
) -> None:
    provider.anthropic.configure(held=True)
    done = await claude_run(tmp_path, provider, tickets(8), BatchOptions(poll_s=0.02, deadline_s=0.5))
    assert done.report.status == "completed" and via(done.results) == {"online": 8}
    stats = provider.anthropic.stats()
    assert stats.cancelled == 1 and stats.online == 8 and stats.lines == 0
    assert done.manifest["batches"]["by_status"] == {"cancelled": 1} and done.manifest["batches"]["open"] == []


async def test_no_wait_across_invocations(tmp_path: Path, provider: FakeProvider) -> None:
    """The command submits and exits 0; a later invocation collects; nothing is submitted twice."""
    write_jsonl(tmp_path / "in.jsonl", tickets(20))
    run_dir = tmp_path / "runs" / "classify" / "in"
    provider.anthropic.configure(held=True)
    first = await asyncio.to_thread(runner, *cli_args(provider, "--no-wait", "--batch-size", "10"), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert provider.anthropic.stats().batches == 2 and line_count(run_dir / "results.jsonl") == 0
    status = runner("status", "classify", "--run-id", "in", "--runs-dir", "runs", "--json", cwd=tmp_path)
    remote = json.loads(status.stdout)["batches"]
    assert [b["status"] for b in remote] == ["in_progress", "in_progress"]
    assert all(b["batch_id"].startswith("msgbatch_") for b in remote)

    provider.anthropic.release()
    provider.anthropic.wait_for(lambda s: list(s.statuses.values()) == ["ended", "ended"])
    collect = BatchOptions(wait=False, poll_s=0.02, batch_size=10)
    second = await claude_run(tmp_path, provider, None, collect, as_cli=True)
    assert second.report.status == "completed" and len(by_id(read_jsonl(run_dir / "results.jsonl"))) == 20
    stats = provider.anthropic.stats()
    assert stats.batches == 2 and stats.lines == 20 and stats.online == 0
    ids = provider.anthropic.custom_ids  # the run's token, the chunk, the row's place: never the row's own id
    assert len(set(ids)) == 20 and all(re.fullmatch(r"[0-9a-f]{16}_0000[12]_0000[0-9][0-9]", i) for i in ids)
    no_secret_in(tmp_path / "runs")


@pytest.mark.slow
async def test_sigkill_between_creating_a_message_batch_and_recording_it_pays_once(
    tmp_path: Path, provider: FakeProvider
) -> None:
    """The create call's answer is parked (the batch exists, runner never learned its id) and runner is
    SIGKILLed. The next start finds the batch by its time, size and request ids and waits for it: no
    batch is created twice, every row is journaled once, nothing is asked online."""
    rows = tickets(30)
    write_jsonl(tmp_path / "in.jsonl", rows)
    run_dir = tmp_path / "runs" / "classify" / "in"
    provider.anthropic.configure(hold_create=True, held=True)
    killed = start_quietly(cli_args(provider), tmp_path)
    try:
        await asyncio.to_thread(provider.anthropic.wait_for, lambda s: s.parked == 1 and s.batches == 1)
        killed.send_signal(signal.SIGKILL)
    finally:
        killed.wait()
    provider.anthropic.configure(hold_create=False)  # the batch still runs (held) when runner starts again

    async def release_once_waiting() -> None:  # once the restarted run has taken the batch as its chunk's
        ledger = run_dir / "batches" / "ledger.jsonl"
        await asyncio.to_thread(wait_until, lambda: '"event":"created"' in text_of(ledger), "the batch found")
        provider.anthropic.release()

    releasing = asyncio.create_task(release_once_waiting())
    last = await claude_run(tmp_path, provider, None, BatchOptions(poll_s=0.02), as_cli=True)
    await releasing
    assert last.report.status == "completed"
    assert sorted(by_id(read_jsonl(run_dir / "results.jsonl"))) == sorted(r["id"] for r in rows)
    stats = provider.anthropic.stats()
    assert stats.batches == 1 and stats.lines == 30 and stats.online == 0  # paid once
    ledger = (run_dir / "batches" / "ledger.jsonl").read_text()
    assert ledger.count('"event":"created"') == 1 and '"event":"void"' not in ledger


@pytest.mark.slow
async def test_sigkill_while_downloading_results_journals_each_row_once_and_pays_once(
    tmp_path: Path, provider: FakeProvider
) -> None:
    """Three batches; the first two's results are read and journaled, the third's download is parked and runner
    is SIGKILLed. The same command again reads the third batch's results (it was paid for): every row is
    journaled once, no batch is created twice, nothing is asked online, no answer is counted as a duplicate."""
    rows = tickets(60)
    write_jsonl(tmp_path / "in.jsonl", rows)
    run_dir = tmp_path / "runs" / "classify" / "in"
    provider.anthropic.configure(hold_results_after=2)
    killed = start_quietly(cli_args(provider, "--batch-size", "20"), tmp_path)
    try:
        await asyncio.to_thread(provider.anthropic.wait_for, lambda s: s.parked == 1 and s.batches == 3)
        await asyncio.to_thread(wait_until, lambda: line_count(run_dir / "results.jsonl") == 40, "two batches read")
        killed.send_signal(signal.SIGKILL)
    finally:
        killed.wait()
    provider.anthropic.release()

    last = await claude_run(tmp_path, provider, None, BatchOptions(poll_s=0.02, batch_size=20), as_cli=True)
    assert last.report.status == "completed"
    assert sorted(by_id(read_jsonl(run_dir / "results.jsonl"))) == sorted(r["id"] for r in rows)
    stats = provider.anthropic.stats()
    assert stats.batches == 3 and stats.lines == 60 and stats.online == 0  # paid once
    batches = last.manifest["batches"]
    assert batches["by_status"] == {"completed": 3} and batches["open"] == [] and batches["duplicates_ignored"] == 0


async def test_find_tells_this_runs_ended_batch_from_a_strangers_of_the_same_size(
    tmp_path: Path, provider: FakeProvider
) -> None:
    """Two ended batches of the same size created after the intent: the one whose request ids carry the
    run's token and chunk is it. Two still running: runner can't tell yet and stops, submitting nothing."""
    api = AnthropicBatches(provider.root)
    body = {"model": "claude-haiku-4-5", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    tag = Tag("abcdef0123456789", 3, 2, since=0.0, started_at=0.0)
    other = dataclasses.replace(tag, token="0123456789abcdef")
    ours = await api.submit(tag, [json.dumps({"params": body, "betas": [], "json": False}).encode()] * 2, "24h", "")
    await api.submit(other, [json.dumps({"params": body, "betas": [], "json": False}).encode()] * 2, "24h", "")
    provider.anthropic.wait_for(lambda s: s.lines == 4)
    found = await api.find(tag)
    assert found is not None and found.id == ours.id and found.status == "completed"
    assert await api.find(dataclasses.replace(tag, number=4)) is None
    assert await api.find(dataclasses.replace(tag, rows=3)) is None

    provider.anthropic.configure(held=True)
    await api.submit(other, [json.dumps({"params": body, "betas": [], "json": False}).encode()] * 5, "24h", "")
    await api.submit(tag, [json.dumps({"params": body, "betas": [], "json": False}).encode()] * 5, "24h", "")
    with pytest.raises(FatalProviderError, match="may be any of the running Message Batches"):
        await api.find(dataclasses.replace(tag, rows=5))
    assert provider.anthropic.stats().batches == 4


def test_request_ids_fit_anthropics_pattern_whatever_the_row_ids() -> None:
    from runner.executors.anthropic_lines import custom_id, read_id

    tag = Tag("f" * 16, 99999, 100_000, since=0.0, started_at=0.0)
    for index, json_mode in ((0, False), (99_999, True)):
        made = custom_id(tag, index, json_mode)
        assert re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", made) and read_id(tag, made) == (index, json_mode)
    assert read_id(dataclasses.replace(tag, number=1), custom_id(tag, 5, False)) is None


def test_anthropic_batches_refuse_a_non_chat_job_at_start(tmp_path: Path, provider: FakeProvider) -> None:
    from runner.executors.batch import batch_limits

    assert batch_limits(CLAUDE).max_requests == 100_000
    with pytest.raises(UsageError, match="--batch-api and a /v1/embeddings job with model 'anthropic/"):
        batch_limits(CLAUDE, "/v1/embeddings")


def test_a_non_chat_job_with_batch_api_and_an_anthropic_model_exits_2_at_start(
    tmp_path: Path, provider: FakeProvider
) -> None:
    """From the command line, before litellm is imported or a run directory made, naming both."""
    write_jsonl(tmp_path / "in.jsonl", tickets(2))
    proc = runner("run", "embed", "--jobs-dir", str(ROOT / "jobs"), "--input", "in.jsonl", "--model", CLAUDE,
                  "--api-base", provider.root, "--batch-api", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "--batch-api and a /v1/embeddings job with model 'anthropic/claude-haiku-4-5'" in proc.stderr
    assert not (tmp_path / "runs").exists() and provider.anthropic.stats().batches == 0


async def test_a_strangers_running_batch_taken_for_a_lost_chunk_costs_a_delay_not_a_second_payment(
    tmp_path: Path, provider: FakeProvider
) -> None:
    """runner died after the intent but before its create reached Anthropic, while another run's batch of the
    same size was created: the next start takes that batch as the chunk's (it can't read a running batch's
    ids), waits for it, finds no answer of its own in it (ignored, not counted) and submits the rows again."""
    from runner.executors.batch_ledger import Ledger

    rows = tickets(4)
    write_jsonl(tmp_path / "in.jsonl", rows)
    ledger = Ledger(tmp_path / "run")
    ledger.intent(CLAUDE, [r["id"] for r in rows], 0.0)  # the crash: no batch made, no "created" line
    ledger.close()
    provider.anthropic.configure(held=True)
    stranger = Tag("0123456789abcdef", 1, 4, since=0.0, started_at=0.0)
    body = {"model": "claude-haiku-4-5", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    await AnthropicBatches(provider.root).submit(stranger, [json.dumps({"params": body, "betas": [], "json": False})
                                                            .encode()] * 4, "24h", "")  # fmt: skip
    provider.anthropic.configure(held=False)

    async def release_once_taken() -> None:
        taken = tmp_path / "run" / "batches" / "ledger.jsonl"
        await asyncio.to_thread(wait_until, lambda: '"event":"created"' in text_of(taken), "the stranger taken")
        provider.anthropic.release()

    releasing = asyncio.create_task(release_once_taken())
    done = await claude_run(tmp_path, provider, None)
    await releasing
    assert done.report.status == "completed" and via(done.results) == {"batch": 4}
    assert sorted(by_id(done.results)) == [r["id"] for r in rows]
    batches = done.manifest["batches"]
    assert batches["resubmitted"] == 4 and batches["duplicates_ignored"] == 0 and batches["duplicates_cost_usd"] == 0
    stats = provider.anthropic.stats()
    assert stats.batches == 2 and stats.online == 0


async def test_max_cost_reserves_a_message_batchs_worst_case_before_creating_it(
    tmp_path: Path, provider: FakeProvider
) -> None:
    from runner.permits.budget import Budget
    from runner.provider.provider import aclose

    write_jsonl(tmp_path / "in.jsonl", tickets(5))
    caller = dataclasses.replace(caller_for(provider), model=CLAUDE, api_base=provider.root, budget=Budget(0.00001))
    settings = RunSettings(tmp_path / "in.jsonl", tmp_path / "run", "run", concurrency=4)
    try:
        report = await run(caller, settings, executor=BatchExecutor(caller, tmp_path / "run", 4, FAST))
    finally:
        await aclose()
    assert report.stop_reason == "max_cost" and provider.anthropic.stats().batches == 0
