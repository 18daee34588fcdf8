"""``--batch-api`` with ``gemini/`` models: Gemini's Batch Mode over its REST endpoints (issue #25 item 2).

Every run goes through runner's real HTTP path (aiohttp for the batch calls, litellm's httpx for the
online lane and the rescue) to the fake Gemini API in tests/doubles/gemini.py, which speaks the wire
format the google-genai SDK does. Batches end when a test releases them; the crash test SIGKILLs
the CLI while the fake parks the create call's answer (the batch exists, runner never learned its name).
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
from runner.errors import UsageError
from runner.executors.batch import BatchExecutor, BatchOptions
from runner.executors.batch_seam import Tag
from runner.executors.gemini_batches import GeminiBatches
from runner.job.definition import load_job
from runner.run.coordinator import RunSettings, run
from tests.doubles.provider import FakeProvider
from tests.support.batch import by_id, canonical, no_secret_in, via
from tests.support.cli import runner, start_quietly
from tests.support.files import ROOT, SECRET, line_count, read_jsonl, text_of, wait_until, write_jsonl
from tests.support.run import CLASSIFY, Finished, caller_for, finished, tickets

GEMINI = "gemini/gemini-2.5-flash"  # litellm's map has its batch prices: half the online ones
FAST = BatchOptions(poll_s=0.02)


@pytest.fixture(autouse=True)
def _gemini_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEMINI_API_KEY", SECRET)


def base(provider: FakeProvider) -> str:
    return provider.root + "/v1beta"


async def gemini_run(
    tmp_path: Path,
    provider: FakeProvider,
    rows: list[Any] | None,
    options: BatchOptions | None = FAST,
    as_cli: bool = False,
    job: Any = None,
) -> Finished:
    """``rows`` (None: keep the input) through the Batch API (``options`` None: online) with GEMINI."""
    from runner.provider.provider import aclose

    if rows is not None:
        tmp_path.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240
        write_jsonl(tmp_path / "in.jsonl", rows)
    caller = dataclasses.replace(caller_for(provider, job=job or CLASSIFY), model=GEMINI, api_base=base(provider))
    run_dir = tmp_path / "run"
    if as_cli:  # the caller and run directory the CLI's command makes
        policy = RetryPolicy(max_attempts=CLASSIFY.max_attempts)
        caller = Caller(job=CLASSIFY, policy=policy, timeout=CLASSIFY.timeout, model=GEMINI, api_base=base(provider))
        run_dir = tmp_path / "runs" / "classify" / "in"
    settings = RunSettings(tmp_path / "in.jsonl", run_dir, run_dir.name, concurrency=8)
    executor = None if options is None else BatchExecutor(caller, run_dir, 8, options)
    try:
        report = await run(caller, settings, executor=executor)
    finally:
        await aclose()
    return finished(report, run_dir)


def cli_args(provider: FakeProvider, *extra: str) -> list[str]:
    return ["run", "classify", "--jobs-dir", str(ROOT / "jobs"), "--input", "in.jsonl", "--model", GEMINI,
            "--api-base", base(provider), "--batch-api", "--batch-poll", "0.05", *extra]  # fmt: skip


def same_body(batch: dict[str, Any], online: dict[str, Any]) -> None:
    drop = ("id", "created")
    assert {k: v for k, v in batch.items() if k not in drop} == {k: v for k, v in online.items() if k not in drop}


@pytest.mark.parametrize("n", [40, pytest.param(2000, marks=pytest.mark.slow)])  # 2,000: as the issue asks
async def test_rows_through_gemini_batches_give_the_online_records_at_half_price(
    tmp_path: Path, provider: FakeProvider, n: int
) -> None:
    rows = tickets(n)
    batched = await gemini_run(tmp_path / "b", provider, rows, BatchOptions(poll_s=0.02, batch_size=-(-n // 3)))
    assert batched.report.status == "completed" and batched.errors == []
    stats = provider.gemini.stats()
    assert stats.batches == 3 and stats.lines == n and stats.online == 0  # not one online call
    assert via(batched.results) == {"batch": n}
    sent_in_batches = list(provider.gemini.bodies)
    token = json.loads((tmp_path / "b" / "run" / "batches" / "ledger.jsonl").read_text().splitlines()[0])["token"]
    assert provider.gemini.display_names == [f"runner-{token}-0000{k} run" for k in (1, 2, 3)]

    plain = await gemini_run(tmp_path / "p", provider, rows, options=None)
    assert provider.gemini.stats().online == n
    # Each request in a batch is the body litellm's online call posted to :generateContent for the same row.
    assert canonical(sent_in_batches) == canonical(provider.gemini.bodies[n:])

    got = by_id(batched.results)
    assert sorted(got) == sorted(r["id"] for r in rows)
    cost = 0.0
    for record in plain.results:  # the same record as online, but for meta and the ids each answer has
        batch = got[record["custom_id"]]
        assert list(batch) == list(record) and batch["result"] == record["result"]
        ChatCompletion.model_validate(batch["response"]["body"])
        same_body(batch["response"]["body"], record["response"]["body"])
        assert batch["meta"]["via"] == "batch" and batch["meta"]["batch_id"].startswith("batches/")
        assert batch["meta"]["cost_usd"] == pytest.approx(record["meta"]["cost_usd"] / 2)
        cost += batch["meta"]["cost_usd"]
    assert cost == pytest.approx(plain.manifest["cost_usd"] / 2) and cost > 0
    print(f"gemini batch/online cost: {cost:.8f} / {plain.manifest['cost_usd']:.8f}")
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
    extract = dataclasses.replace(load_job("extract", ROOT / "jobs"), stream=False)
    rows = tickets(6)
    batched = await gemini_run(tmp_path / "b", provider, rows, job=extract)
    online = await gemini_run(tmp_path / "o", provider, rows, options=None, job=extract)
    assert provider.gemini.stats().online == 6 and provider.gemini.stats().batches == 1
    assert "toolConfig" in provider.gemini.bodies[0]
    assert canonical(provider.gemini.bodies[:6]) == canonical(provider.gemini.bodies[6:])
    got, plain = by_id(batched.results), by_id(online.results)
    assert len(got) == 6 and via(batched.results) == {"batch": 6}
    for custom_id, record in plain.items():
        body, expected = got[custom_id]["response"]["body"], record["response"]["body"]
        assert got[custom_id]["result"] == record["result"] and body["choices"][0]["finish_reason"] == "tool_calls"
        calls = [c["function"] for c in body["choices"][0]["message"]["tool_calls"]]
        assert calls == [c["function"] for c in expected["choices"][0]["message"]["tool_calls"]]
        without = ("choices", "id", "created")
        assert {k: v for k, v in body.items() if k not in without} == {
            k: v for k, v in expected.items() if k not in without
        }


async def test_errored_rows_follow_the_online_classification(tmp_path: Path, provider: FakeProvider) -> None:
    """INVALID_ARGUMENT: the row's error record at once, as online (no second call); UNAVAILABLE and
    INTERNAL: asked again online, where the answer comes."""
    rows = tickets(6)
    rows[1]["text"] += " [[fail:503:times=1]]"  # UNAVAILABLE in the batch, answered online
    rows[2]["text"] += " [[fail:400]]"  # invalid everywhere
    rows[3]["text"] += " [[fail:500:times=1]]"  # INTERNAL in the batch, answered online
    done = await gemini_run(tmp_path / "b", provider, rows)
    assert sorted(r["custom_id"] for r in done.results) == ["t-0000", "t-0001", "t-0003", "t-0004", "t-0005"]
    assert via(done.results) == {"batch": 3, "online": 2}
    by_key = provider.gemini.stats().by_key  # ("times" counts per lane: each fails its first online call too)
    assert provider.gemini.stats().online == 4 and f"online:{rows[2]['text']}" not in by_key  # t-0002: once
    [error] = done.errors
    assert error["custom_id"] == "t-0002" and error["meta"]["via"] == "batch"

    online = await gemini_run(tmp_path / "o", provider, [rows[2]], options=None)  # the same row, online
    [alone] = online.errors
    assert (error["error"]["code"], error["error"]["status"]) == (alone["error"]["code"], alone["error"]["status"])


async def test_an_expired_batch_keeps_its_answers_and_the_rest_go_again_or_online(
    tmp_path: Path, provider: FakeProvider
) -> None:
    """--no-wait submits; the batch expires with 6 of 10 answered; the next invocation keeps the 6 and
    resubmits the 4 (a new batch); past the deadline, an expired batch's rest goes online instead."""
    provider.gemini.configure(held=True, expire_after=6)
    submitted = await gemini_run(tmp_path / "a", provider, tickets(10), BatchOptions(wait=False, poll_s=0.02))
    assert submitted.results == [] and submitted.report.status == "interrupted"
    provider.gemini.release()
    provider.gemini.wait_for(lambda s: list(s.states.values()) == ["BATCH_STATE_EXPIRED"])
    provider.gemini.configure(expire_after=None)
    done = await gemini_run(tmp_path / "a", provider, None)
    assert done.report.status == "completed" and len(by_id(done.results)) == 10
    assert via(done.results) == {"batch": 10} and done.manifest["batches"]["resubmitted"] == 4
    stats = provider.gemini.stats()
    assert stats.batches == 2 and stats.lines == 10 and stats.online == 0

    provider.gemini.configure(held=True, expire_after=6)
    await gemini_run(tmp_path / "b", provider, tickets(10, "x"), BatchOptions(wait=False, poll_s=0.02))
    provider.gemini.release()
    provider.gemini.wait_for(lambda s: s.batches == 3 and "BATCH_STATE_RUNNING" not in s.states.values())
    rescued = await gemini_run(tmp_path / "b", provider, None, BatchOptions(poll_s=0.02, deadline_s=0.001))
    assert rescued.report.status == "completed" and len(by_id(rescued.results)) == 10
    assert via(rescued.results) == {"batch": 6, "online": 4} and provider.gemini.stats().batches == 3
    lanes = rescued.manifest["lanes"]
    assert lanes["batch"]["requests"] == 6 and lanes["online"]["requests"] == 4


async def test_near_the_deadline_a_running_batch_is_cancelled_and_its_rows_go_online(
    tmp_path: Path, provider: FakeProvider
) -> None:
    provider.gemini.configure(held=True)
    done = await gemini_run(tmp_path, provider, tickets(8), BatchOptions(poll_s=0.02, deadline_s=0.5))
    assert done.report.status == "completed" and via(done.results) == {"online": 8}
    stats = provider.gemini.stats()
    assert stats.cancelled == 1 and stats.online == 8 and stats.lines == 0
    assert done.manifest["batches"]["by_status"] == {"cancelled": 1} and done.manifest["batches"]["open"] == []


async def test_no_wait_across_invocations(tmp_path: Path, provider: FakeProvider) -> None:
    """The command submits and exits 0; a later invocation collects; nothing is submitted twice."""
    write_jsonl(tmp_path / "in.jsonl", tickets(20))
    run_dir = tmp_path / "runs" / "classify" / "in"
    provider.gemini.configure(held=True)
    first = await asyncio.to_thread(runner, *cli_args(provider, "--no-wait", "--batch-size", "10"), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert provider.gemini.stats().batches == 2 and line_count(run_dir / "results.jsonl") == 0
    status = runner("status", "classify", "--run-id", "in", "--runs-dir", "runs", "--json", cwd=tmp_path)
    remote = json.loads(status.stdout)["batches"]
    assert [b["status"] for b in remote] == ["in_progress", "in_progress"]
    assert all(b["batch_id"].startswith("batches/") for b in remote)

    provider.gemini.release()
    provider.gemini.wait_for(lambda s: list(s.states.values()) == ["BATCH_STATE_SUCCEEDED"] * 2)
    collect = BatchOptions(wait=False, poll_s=0.02, batch_size=10)
    second = await gemini_run(tmp_path, provider, None, collect, as_cli=True)
    assert second.report.status == "completed" and len(by_id(read_jsonl(run_dir / "results.jsonl"))) == 20
    stats = provider.gemini.stats()
    assert stats.batches == 2 and stats.lines == 20 and stats.online == 0
    keys = provider.gemini.keys  # the run's token, the chunk, the row's place: never the row's own id
    assert len(set(keys)) == 20 and all(re.fullmatch(r"[0-9a-f]{16}_0000[12]_0000[0-9][0-9]", k) for k in keys)
    no_secret_in(tmp_path / "runs")
    assert SECRET not in first.stderr + first.stdout


@pytest.mark.slow
async def test_sigkill_between_creating_a_gemini_batch_and_recording_it_pays_once(
    tmp_path: Path, provider: FakeProvider
) -> None:
    """The create call's answer is parked (the batch exists, runner never learned its name) and runner is
    SIGKILLed. The next start finds the batch by its display name and waits for it: no batch is created
    twice, every row is journaled once, nothing is asked online."""
    rows = tickets(30)
    write_jsonl(tmp_path / "in.jsonl", rows)
    run_dir = tmp_path / "runs" / "classify" / "in"
    provider.gemini.configure(hold_create=True, held=True)
    killed = start_quietly(cli_args(provider), tmp_path)
    try:
        await asyncio.to_thread(provider.gemini.wait_for, lambda s: s.parked == 1 and s.batches == 1)
        killed.send_signal(signal.SIGKILL)
    finally:
        killed.wait()
    provider.gemini.configure(hold_create=False)  # the batch still runs (held) when runner starts again

    async def release_once_waiting() -> None:  # once the restarted run has taken the batch as its chunk's
        ledger = run_dir / "batches" / "ledger.jsonl"
        await asyncio.to_thread(wait_until, lambda: '"event":"created"' in text_of(ledger), "the batch found")
        provider.gemini.release()

    releasing = asyncio.create_task(release_once_waiting())
    last = await gemini_run(tmp_path, provider, None, BatchOptions(poll_s=0.02), as_cli=True)
    await releasing
    assert last.report.status == "completed"
    assert sorted(by_id(read_jsonl(run_dir / "results.jsonl"))) == sorted(r["id"] for r in rows)
    stats = provider.gemini.stats()
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
    provider.gemini.configure(hold_results_after=2)
    killed = start_quietly(cli_args(provider, "--batch-size", "20"), tmp_path)
    try:
        await asyncio.to_thread(provider.gemini.wait_for, lambda s: s.parked == 1 and s.batches == 3)
        await asyncio.to_thread(wait_until, lambda: line_count(run_dir / "results.jsonl") == 40, "two batches read")
        killed.send_signal(signal.SIGKILL)
    finally:
        killed.wait()
    provider.gemini.release()

    last = await gemini_run(tmp_path, provider, None, BatchOptions(poll_s=0.02, batch_size=20), as_cli=True)
    assert last.report.status == "completed"
    assert sorted(by_id(read_jsonl(run_dir / "results.jsonl"))) == sorted(r["id"] for r in rows)
    stats = provider.gemini.stats()
    assert stats.batches == 3 and stats.lines == 60 and stats.online == 0  # paid once
    batches = last.manifest["batches"]
    assert batches["by_status"] == {"completed": 3} and batches["open"] == [] and batches["duplicates_ignored"] == 0


async def test_find_matches_the_display_name_across_pages(tmp_path: Path, provider: FakeProvider) -> None:
    """Among strangers' batches and other chunks of the run, ``find`` takes the one named by the run's token and
    chunk, following nextPageToken; a chunk that never became a batch is None."""
    from runner.provider.provider import aclose

    api = GeminiBatches(base(provider))
    line = json.dumps({"model": "gemini-2.5-flash", "request": {"contents": [{"role": "user", "parts": [
        {"text": "hi"}]}]}}).encode()  # fmt: skip
    try:
        tag = Tag("abcdef0123456789", 3, 2, since=0.0, started_at=0.0, run_name="in")
        ours = await api.submit(tag, [line] * 2, "24h", "")
        for n in range(5):
            await api.submit(dataclasses.replace(tag, token="0123456789abcdef", number=n), [line] * 2, "24h", "")
        listed = [r async for r in api.listed(page=2)]
        assert len(listed) == 6
        found = await api.find(tag)
        assert found is not None and found.id == ours.id
        assert await api.find(dataclasses.replace(tag, number=4)) is None
    finally:
        await aclose()


def test_gemini_batches_refuse_a_non_chat_job_and_vertex_and_bedrock_name_what_they_need() -> None:
    from runner.executors.batch import batch_limits

    assert batch_limits(GEMINI).max_bytes == 200_000_000
    with pytest.raises(UsageError, match="--batch-api and a /v1/embeddings job with model 'gemini/"):
        batch_limits(GEMINI, "/v1/embeddings")
    with pytest.raises(UsageError, match=r"GCS_BUCKET_NAME.*VERTEXAI_PROJECT.*VERTEXAI_LOCATION"):
        batch_limits("vertex_ai/gemini-2.5-flash")
    with pytest.raises(UsageError, match=r"S3 bucket.*IAM role.*AWS_BATCH_ROLE_ARN"):
        batch_limits("bedrock/anthropic.claude-3-haiku-20240307-v1:0")


@pytest.mark.parametrize(
    ("model", "needs"),
    [("vertex_ai/gemini-2.5-flash", "GCS_BUCKET_NAME"), ("bedrock/anthropic.claude-3-haiku-20240307-v1:0",
                                                          "AWS_BATCH_ROLE_ARN")],
)  # fmt: skip
def test_batch_api_with_vertex_or_bedrock_exits_2_at_start_naming_what_it_needs(
    tmp_path: Path, provider: FakeProvider, model: str, needs: str
) -> None:
    write_jsonl(tmp_path / "in.jsonl", tickets(2))
    proc = runner("run", "classify", "--jobs-dir", str(ROOT / "jobs"), "--input", "in.jsonl", "--model", model,
                  "--api-base", base(provider), "--batch-api", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert needs in proc.stderr and "--batch-api" in proc.stderr
    assert not (tmp_path / "runs").exists()


async def test_max_cost_reserves_a_gemini_batchs_worst_case_before_creating_it(
    tmp_path: Path, provider: FakeProvider
) -> None:
    from runner.permits.budget import Budget
    from runner.provider.provider import aclose

    write_jsonl(tmp_path / "in.jsonl", tickets(5))
    caller = dataclasses.replace(caller_for(provider), model=GEMINI, api_base=base(provider), budget=Budget(0.00001))
    settings = RunSettings(tmp_path / "in.jsonl", tmp_path / "run", "run", concurrency=4)
    try:
        report = await run(caller, settings, executor=BatchExecutor(caller, tmp_path / "run", 4, FAST))
    finally:
        await aclose()
    assert report.stop_reason == "max_cost" and provider.gemini.stats().batches == 0


class Verdict(BaseModel):
    label: str
    confidence: float


async def test_a_schema_job_goes_with_its_response_schema_and_comes_back_as_online(
    tmp_path: Path, provider: FakeProvider
) -> None:
    """A job with a schema: litellm sends it as the generationConfig's response schema; the batch sends the
    same bodies and the records are the online ones."""
    build = CLASSIFY.build_request
    job = dataclasses.replace(CLASSIFY, name="verdict", build_request=lambda r: {**build(r), "max_tokens": 50},
                              parse_result=None, schema=Verdict, reasks=1)  # fmt: skip
    rows = [{"id": f"v{i}", "text": f'[[answer:{{"label": "bug", "confidence": 0.{i}}}]] it crashes'} for i in range(4)]
    batched = await gemini_run(tmp_path / "b", provider, rows, job=job)
    online = await gemini_run(tmp_path / "o", provider, rows, options=None, job=job)
    config = provider.gemini.bodies[0]["generationConfig"]
    assert "response_json_schema" in config or "response_schema" in config or "responseSchema" in config, config
    assert canonical(provider.gemini.bodies[:4]) == canonical(provider.gemini.bodies[4:])
    got, plain = by_id(batched.results), by_id(online.results)
    assert via(batched.results) == {"batch": 4} and len(plain) == 4
    for custom_id, record in plain.items():
        assert (
            got[custom_id]["result"] == record["result"] == {"label": "bug", "confidence": float(f"0.{custom_id[1]}")}
        )
        same_body(got[custom_id]["response"]["body"], record["response"]["body"])


async def test_a_batch_beyond_the_inline_limit_goes_as_an_uploaded_file(tmp_path: Path, provider: FakeProvider) -> None:
    """Past the inline limit (20 MB; here 1 KB) the requests go as a JSONL file through the resumable upload, and
    the results come back as a file, read back into the same output lines as an inline batch's."""
    from runner.executors.gemini_lines import request_line
    from runner.provider.provider import aclose

    requests = [CLASSIFY.build_request(row) | {"model": GEMINI} for row in tickets(12)]
    lines = [line for line in map(request_line, requests) if line is not None]
    tag = Tag("abcdef0123456789", 1, 12, since=0.0, started_at=0.0, run_name="in")
    ids = [f"t-{i:04d}" for i in range(12)]
    found: dict[str, list[dict[str, Any]]] = {}
    try:
        for how, inline in (("file", 1000), ("inline", 20_000_000)):
            api = GeminiBatches(base(provider), inline=inline)
            made = await api.submit(tag, lines, "24h", "")
            ended = {made.id: "BATCH_STATE_SUCCEEDED"}
            provider.gemini.wait_for(lambda s: ended.items() <= s.states.items())  # noqa: B023
            remote = await api.retrieve(made.id)
            assert remote.status == "completed" and remote.counts == {"total": 12, "completed": 12, "failed": 0}
            found[how] = [line for content in await api.download(remote) for line in api.lines(content, tag, ids)]
    finally:
        await aclose()
    uploaded = [name for name in provider.gemini.files if not name.endswith("-results")]
    assert len(uploaded) == 1 and len(provider.gemini.files) == 2  # one upload, one result file
    keys = [json.loads(line)["key"] for line in provider.gemini.files[uploaded[0]].splitlines()]
    assert keys == provider.gemini.keys[:12] == provider.gemini.keys[12:]
    assert [line["custom_id"] for line in found["file"]] == ids
    for by_file, by_inline in zip(found["file"], found["inline"], strict=True):
        assert by_file["response"]["status_code"] == by_inline["response"]["status_code"] == 200
        same_body(by_file["response"]["body"], by_inline["response"]["body"])
