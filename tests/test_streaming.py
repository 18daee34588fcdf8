"""The streaming lane, tool calls and structured outputs, through litellm's real HTTP path."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
from openai.types.chat import ChatCompletion
from pydantic import BaseModel

from runner.call.caller import Caller
from runner.call.retry import RetryPolicy
from runner.job.definition import load_job
from runner.provider.provider import aclose
from runner.run.coordinator import RunSettings, run
from tests.doubles.provider import FakeProvider
from tests.support.files import ROOT, read_jsonl, write_jsonl
from tests.support.run import CLASSIFY, MODEL, run_rows

pytestmark = pytest.mark.filterwarnings("ignore:Accessing the 'model_.*' attribute on the instance:DeprecationWarning")

EXTRACT = load_job("extract", ROOT / "jobs")
SUMMARIZE = load_job("summarize", ROOT / "jobs")
ARGS = {"product": "api", "severity": "high", "summary": "Tokens return 401.", "customer_email": "ann@example.com"}


async def test_streamed_records_match_plain_ones(tmp_path: Path, provider: FakeProvider) -> None:
    text = "[[answer:The export button fails on large boards, and the user wants a fix.]] [[chunk:3]] long text"
    plain = await run_rows(tmp_path / "plain", provider, [{"id": "a", "text": text}], job=SUMMARIZE)
    streamed = await run_rows(tmp_path / "stream", provider, [{"id": "a", "text": text}],
                              job=replace(SUMMARIZE, stream=True))  # fmt: skip
    assert plain.results and streamed.results
    a, b = plain.results[0], streamed.results[0]
    assert a["result"] == b["result"] == "The export button fails on large boards, and the user wants a fix."
    body = ChatCompletion.model_validate(b["response"]["body"])
    assert body.usage is not None and body.usage.completion_tokens > 0
    assert body.usage.completion_tokens == a["response"]["body"]["usage"]["completion_tokens"]
    assert b["meta"]["ttft_s"] is not None and b["meta"]["ttft_s"] <= b["meta"]["latency_s"]
    assert b["meta"]["output_tokens_per_s"] > 0


@pytest.mark.parametrize("split", [1, 2, 3, 7, 50])
async def test_tool_call_arguments_split_anywhere_assemble_whole(
    tmp_path: Path, provider: FakeProvider, split: int
) -> None:
    text = f"my API tokens fail [[tool:record_ticket:{json.dumps(ARGS)}]] [[split:{split}]]"
    done = await run_rows(tmp_path, provider, [{"id": "t", "text": text}], job=EXTRACT)
    assert done.errors == [] and done.results[0]["result"] == ARGS
    call = done.results[0]["response"]["body"]["choices"][0]["message"]["tool_calls"][0]
    assert json.loads(call["function"]["arguments"]) == ARGS
    assert done.results[0]["response"]["body"]["choices"][0]["finish_reason"] == "tool_calls"


@pytest.mark.parametrize("fault", ["break", "truncate", "malformed"])
async def test_a_broken_stream_is_retried_as_a_whole_request(
    tmp_path: Path, provider: FakeProvider, fault: str
) -> None:
    text = f"[[answer:A short summary.]] [[chunk:2]] [[fail:{fault}:after=2:times=1]] text"
    done = await run_rows(tmp_path, provider, [{"id": "s", "text": text}], job=SUMMARIZE)
    assert done.errors == [], done.errors
    assert done.results[0]["result"] == "A short summary." and done.results[0]["meta"]["attempts"] == 2
    assert provider.stats().by_key[text] == 2


async def test_invalid_tool_arguments_are_reasked_then_recorded(tmp_path: Path, provider: FakeProvider) -> None:
    bad = {**ARGS, "severity": "urgent"}
    text = f"login broken [[tool:record_ticket:{json.dumps(bad)}]]"
    done = await run_rows(tmp_path, provider, [{"id": "t", "text": text}], job=EXTRACT)
    assert done.results == []
    error = done.errors[0]
    assert error["error"]["code"] == "invalid_result" and "severity" in error["error"]["message"]
    assert len(error["meta"]["reasked"]) == 1  # one bounded re-ask, then the error record
    assert provider.stats().total == 2
    assert done.manifest["reasks"] == 1
    # Both answers were paid for: the totals count the re-asked one too.
    bodies_tokens = (
        error["response"]["body"]["usage"]["total_tokens"] + error["meta"]["reasked"][0]["usage"]["total_tokens"]
    )
    assert done.manifest["usage"]["total_tokens"] == bodies_tokens


class Verdict(BaseModel):
    label: str
    confidence: float


async def test_structured_output_is_parsed_and_a_bad_one_reasked(tmp_path: Path, provider: FakeProvider) -> None:
    build = CLASSIFY.build_request
    job = replace(CLASSIFY, name="verdict", build_request=lambda r: {**build(r), "max_tokens": 50}, parse_result=None,
                  schema=Verdict, reasks=1)  # fmt: skip
    rows = [
        {"id": "ok", "text": '[[answer:{"label": "bug", "confidence": 0.9}]] it crashes'},
        {"id": "bad", "text": "[[answer:not json at all]] hmm"},
    ]
    done = await run_rows(tmp_path, provider, rows, job=job)
    assert done.results[0]["result"] == {"label": "bug", "confidence": 0.9}
    assert done.errors[0]["custom_id"] == "bad"
    assert done.errors[0]["error"]["message"].startswith("the answer: not valid JSON")
    assert done.manifest["reasks"] == 1 and done.manifest["error_codes"] == {"invalid_result": 1}


async def test_a_cut_off_answer_is_counted_and_reasked_with_more_room(tmp_path: Path, provider: FakeProvider) -> None:
    long = " ".join(["word"] * 1000)  # ~1,250 tokens: too long for 300, and for 600
    done = await run_rows(tmp_path, provider, [{"id": "x", "text": f"[[answer:{long}]] text"}], job=SUMMARIZE)
    error = done.errors[0]
    assert error["error"]["message"] == "the summary was cut off at max_tokens"
    assert error["meta"]["reasked"][0]["finish_reason"] == "length"
    assert done.manifest["finish_reasons"] == {"length": 2}
    assert provider.stats().last_request_for(f"[[answer:{long}]] text").max_tokens == 600  # doubled once


# Issue 30: a stream that ends cleanly at every position, from the first chunk to [DONE]. "billing" streams
# as role, "bill", "ing", the finish chunk, the usage chunk: five events. The tool call's arguments
# ({"city":"Paris"}, 16 characters, 5 a chunk) make role, four pieces, finish, usage: seven.
TOOLS = [{"type": "function", "function": {"name": "get_city", "parameters": {"type": "object",
          "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]  # fmt: skip


def _cut_rows(kind: str, events: int) -> list[dict[str, Any]]:
    rows = []
    for after in range(events + 1):
        answer = '[[tool:get_city:{"city":"Paris"}]]' if kind == "tool" else "[[answer:billing]] [[chunk:4]]"
        text = f"{answer} [[fail:end:after={after}:times=1]] cut {kind} {after}"
        body: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": text}]}
        if kind == "tool":
            body["tools"] = TOOLS
        rows.append({"custom_id": f"{kind}-{after}", "method": "POST", "url": "/v1/chat/completions", "body": body})
    return rows


@pytest.mark.parametrize(("kind", "events"), [("text", 5), ("tool", 7)])
async def test_a_stream_cut_anywhere_is_retried_or_its_record_says_its_usage_is_an_estimate(
    tmp_path: Path, provider: FakeProvider, kind: str, events: int
) -> None:
    from runner.job.definition import BATCH

    write_jsonl(tmp_path / "in.jsonl", _cut_rows(kind, events))
    caller = Caller(BATCH, RetryPolicy(max_attempts=3, base_wait=0.01, max_wait=0.02), 5.0, api_base=provider.url,
                    stream=True)  # fmt: skip
    try:
        report = await run(caller, RunSettings(tmp_path / "in.jsonl", tmp_path / "run", "run", 4))
    finally:
        await aclose()
    records = {r["custom_id"]: r for r in read_jsonl(tmp_path / "run" / "results.jsonl")}
    finish_at = events - 2  # the index of the finish chunk; the usage chunk follows it
    for after in range(events + 1):
        meta = records[f"{kind}-{after}"]["meta"]
        if after <= finish_at:  # cut before the finish chunk: not an answer, asked again
            assert meta["attempts"] == 2 and "usage_estimated" not in meta, (after, meta)
        elif after == finish_at + 1:  # the finish chunk came, the usage chunk did not: kept, and said so
            assert meta["attempts"] == 1 and meta["usage_estimated"] is True, (after, meta)
        else:  # only [DONE] is missing: the provider's own usage came, nothing to say
            assert meta["attempts"] == 1 and "usage_estimated" not in meta, (after, meta)
        if "usage_estimated" not in meta:  # never an unmarked estimate: the usage is what the provider counted
            record = records[f"{kind}-{after}"]
            sent = provider.stats().usage_by_key[_cut_rows(kind, events)[after]["body"]["messages"][-1]["content"]]
            assert record["response"]["body"]["usage"]["total_tokens"] == sent["total_tokens"], (after, sent)
    manifest = orjson.loads((tmp_path / "run" / "manifest.json").read_bytes())
    assert manifest["usage_estimated"]["rows"] == 1 and manifest["usage_estimated"]["tokens"] > 0
    assert report.status == "completed"


async def test_a_plain_answer_whose_body_has_no_usage_is_marked_too(tmp_path: Path, provider: FakeProvider) -> None:
    """Issue 30: a non-streamed body without ``usage`` (litellm fills in zeros) is not presented as the provider's."""
    from runner.job.definition import BATCH

    def line(custom_id: str, text: str) -> dict[str, Any]:
        body = {"model": MODEL, "messages": [{"role": "user", "content": text}]}
        return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}

    rows = [line("n-1", "[[answer:billing]] [[fail:end]] x"), line("n-2", "[[answer:billing]] y")]
    write_jsonl(tmp_path / "in.jsonl", rows)
    caller = Caller(BATCH, RetryPolicy(max_attempts=1), 5.0, api_base=provider.url)
    try:
        await run(caller, RunSettings(tmp_path / "in.jsonl", tmp_path / "run", "run", 2))
    finally:
        await aclose()
    records = {r["custom_id"]: r for r in read_jsonl(tmp_path / "run" / "results.jsonl")}
    assert records["n-1"]["meta"]["usage_estimated"] is True and "usage_estimated" not in records["n-2"]["meta"]
    usage = records["n-1"]["response"]["body"]["usage"]  # litellm's count, not the zeros litellm reads it as
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0 and records["n-1"]["meta"]["cost_usd"] > 0


async def test_max_cost_counts_an_estimated_answer_with_the_budgets_margin(
    tmp_path: Path, provider: FakeProvider
) -> None:
    """Issue 30: an answer whose usage is litellm's count is charged at that count times the budget's margin."""
    from runner.job.definition import BATCH
    from runner.permits.budget import Budget

    body = {"model": MODEL, "messages": [{"role": "user", "content": "[[answer:billing]] [[fail:end]] x"}]}
    write_jsonl(tmp_path / "in.jsonl", [{"custom_id": "e", "method": "POST", "url": "/v1/chat/completions",
                                         "body": body}])  # fmt: skip
    budget = Budget(cap=1.0)
    caller = Caller(BATCH, RetryPolicy(max_attempts=1), 5.0, api_base=provider.url,
                    budget=budget)  # fmt: skip
    try:
        await run(caller, RunSettings(tmp_path / "in.jsonl", tmp_path / "run", "run", 2))
    finally:
        await aclose()
    [record] = read_jsonl(tmp_path / "run" / "results.jsonl")
    assert record["meta"]["usage_estimated"] is True and budget.prompt_margin == pytest.approx(1.1)
    assert budget.spent == pytest.approx(record["meta"]["cost_usd"] * 1.1) and budget.reserved == pytest.approx(0)
