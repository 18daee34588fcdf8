"""Every Batch API endpoint: embeddings, responses and completions next to chat, through litellm's real
HTTP path against the fake provider (same faults), a SIGKILL mid-run, the offline embedding job, a
vLLM-style file with --api-base, and the per-row refusals (streaming and tools are chat-only)."""

from __future__ import annotations

import base64
import logging
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from openai.types import Completion, CreateEmbeddingResponse
from openai.types.chat import ChatCompletion
from openai.types.responses import Response
from pydantic import BaseModel

from runner import api
from runner.call.caller import Caller
from runner.call.retry import RetryPolicy
from runner.errors import JobDefinitionError, RowError
from runner.job.definition import BATCH, Job, load_job
from runner.job.endpoints import EMBEDDINGS, ENDPOINT, RESPONSES, chat_usage, finish_reasons, split
from runner.permits.limits import Limits
from runner.provider.endpoints import estimate_tokens
from runner.provider.provider import aclose
from runner.run.coordinator import RunSettings, run
from runner.run.source import Row
from tests.doubles.endpoints import embedding_of
from tests.doubles.provider import FakeProvider
from tests.support.files import ROOT, Lines, read_jsonl, wait_until, write_jsonl
from tests.support.run import Finished, finished

TYPES: dict[str, type[BaseModel]] = {
    "/v1/chat/completions": ChatCompletion,
    "/v1/embeddings": CreateEmbeddingResponse,
    "/v1/responses": Response,
    "/v1/completions": Completion,
}


def line(custom_id: str, url: str, **body: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


def mixed(n: int, tag: str = "") -> list[dict[str, Any]]:
    """``n`` lines of each endpoint (embeddings alternately as floats and base64, two inputs)."""
    lines = []
    for i in range(n):
        lines += [
            line(f"chat-{i}", "/v1/chat/completions", model="gpt-4o-mini", max_tokens=5,
                 messages=[{"role": "user", "content": f"the app crashes {tag}{i}"}]),
            line(f"emb-{i}", "/v1/embeddings", model="text-embedding-3-small", input=f"I was charged twice {tag}{i}"),
            line(f"emb64-{i}", "/v1/embeddings", model="text-embedding-3-small", encoding_format="base64",
                 input=[f"please add dark mode {tag}{i}", f"office hours {tag}{i}"]),
            line(f"resp-{i}", "/v1/responses", model="gpt-4o-mini", instructions="Label the ticket.",
                 input=f"refund my invoice {tag}{i}", max_output_tokens=5),
            line(f"cmpl-{i}", "/v1/completions", model="gpt-3.5-turbo-instruct", prompt=f"add an export {tag}{i}",
                 max_tokens=5),
        ]  # fmt: skip
    return lines


async def run_batch(tmp_path: Path, provider: FakeProvider, lines: list[dict[str, Any]], **caller: Any) -> Finished:
    """Run ``lines`` as batch input against the fake provider, each with its body's own model."""
    write_jsonl(tmp_path / "in.jsonl", lines)
    run_dir = tmp_path / "run"
    settings = RunSettings(input_path=tmp_path / "in.jsonl", run_dir=run_dir, run_id="run", concurrency=4)
    policy = RetryPolicy(max_attempts=4, base_wait=0.01, max_wait=0.05)
    try:
        return finished(await run(Caller(BATCH, policy, 5.0, api_base=provider.url, **caller), settings), run_dir)
    finally:
        await aclose()


def decoded(body: dict[str, Any]) -> dict[str, Any]:
    """An embedding list with base64 vectors turned into numbers (float32, little-endian), as export does."""
    data = [{**d, "embedding": np.frombuffer(base64.b64decode(d["embedding"]), "<f4").tolist()}
            if isinstance(d["embedding"], str) else d for d in body["data"]]  # fmt: skip
    return {**body, "data": data}


def check_bodies(records: list[dict[str, Any]], urls: dict[str, str]) -> None:
    """Every body is its endpoint's object, and every embedding is the provider's vector for its text."""
    for record in records:
        body = record["response"]["body"]
        url = urls[record["custom_id"]]
        TYPES[url].model_validate(decoded(body) if url == EMBEDDINGS else body)
        if url == EMBEDDINGS:
            for item in decoded(body)["data"]:
                assert len(item["embedding"]) == 1536


async def test_a_mixed_batch_file_runs_every_line_once_with_the_same_retries_usage_and_cost(
    tmp_path: Path, provider: FakeProvider
) -> None:
    lines = mixed(3)
    lines[1]["body"]["input"] += " [[fail:429:retry_after_ms=20:times=1]]"  # an embedding rate-limited once
    lines[3]["body"]["input"] += " [[fail:500:times=2]]"  # a response failing twice
    lines[4]["body"]["prompt"] += " [[fail:drop:times=1]]"  # a completion whose connection drops
    lines[6]["body"]["input"] += " [[fail:400]]"  # an embedding (emb-1) the provider refuses: no retry
    lines += [
        line("emb-stream", "/v1/embeddings", model="text-embedding-3-small", input="x", stream=True),
        line("resp-tools", "/v1/responses", model="gpt-4o-mini", input="x", tools=[{"type": "function"}]),
        line("image", "/v1/images/generations", model="dall-e-3", prompt="x"),
    ]
    urls = {ln["custom_id"]: ln["url"] for ln in lines}
    done = await run_batch(tmp_path, provider, lines)

    ids = [r["custom_id"] for r in done.results + done.errors]
    assert sorted(ids) == sorted(urls)  # every line once
    codes = {e["custom_id"]: e["error"]["code"] for e in done.errors}
    assert codes == {"emb-1": "bad_request", "emb-stream": "unsupported_parameter",
                     "resp-tools": "unsupported_parameter", "image": "unsupported_url"}  # fmt: skip
    assert "streaming and tool calls are supported on /v1/chat/completions only" in done.errors[-3]["error"]["message"]
    check_bodies(done.results, urls)
    meta = {r["custom_id"]: r["meta"] for r in done.results}
    assert (meta["emb-0"]["attempts"], meta["emb-0"]["rate_limited"]) == (2, 1)
    assert meta["resp-0"]["attempts"] == 3 and meta["cmpl-0"]["attempts"] == 2
    stats = provider.stats()
    assert stats.total == len(done.results) + 1 + 1 + 2 + 1  # + the 400, the 429, two 500s, the drop
    # Usage and cost: the manifest is the sum of the records, whatever each endpoint calls its tokens.
    usage = [chat_usage(r["response"]["body"]["usage"]) for r in done.results]
    assert done.manifest["usage"]["input_tokens"] == sum(u["prompt_tokens"] for u in usage) > 0
    assert done.manifest["usage"]["output_tokens"] == sum(u.get("completion_tokens") or 0 for u in usage) > 0
    assert all(m["cost_usd"] > 0 for m in meta.values())
    assert done.manifest["cost_usd"] == pytest.approx(sum(m["cost_usd"] for m in meta.values()))
    assert done.manifest["cost_known"] and done.manifest["models"]["text-embedding-3-small"]["requests"] == 5
    assert done.manifest["finish_reasons"] == {"stop": 9}  # chat, responses, completions; embeddings have none
    vector = decoded(next(r for r in done.results if r["custom_id"] == "emb64-1")["response"]["body"])["data"][1]
    assert vector["embedding"] == pytest.approx(embedding_of("office hours 1"))  # base64 float32 little-endian


async def test_tpm_counts_embedding_input_and_the_stream_flag_streams_chat_only(
    tmp_path: Path, provider: FakeProvider
) -> None:
    big = " ".join(f"word{i}" for i in range(3000))
    lines = [
        line("big", "/v1/embeddings", model="text-embedding-3-small", input=big),
        line("small", "/v1/embeddings", model="text-embedding-3-small", input="hello"),
        line("chat", "/v1/chat/completions", model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]),
    ]
    done = await run_batch(tmp_path, provider, lines, limits=Limits(2, tpm=2000))
    assert [(e["custom_id"], e["error"]["code"]) for e in done.errors] == [("big", "request_too_large")]
    assert "big" not in str(provider.stats().by_key)  # refused before it was sent
    streaming = Caller(BATCH, RetryPolicy(), 5.0, api_base=provider.url, stream=True)  # --stream
    chat, _ = streaming.request(Row(3, "chat", lines[2]))
    embedding, _ = streaming.request(Row(2, "small", lines[1]))
    assert chat is not None and chat["stream"] and embedding is not None and "stream" not in embedding
    assert {r["custom_id"] for r in done.results} == {"small", "chat"}
    assert estimate_tokens({ENDPOINT: EMBEDDINGS, "model": "text-embedding-3-small", "input": [big, "hello"]})[0] > 3000


def key_of(ln: dict[str, Any]) -> str:
    """The text the fake provider counts a line's requests under."""
    body = ln["body"]
    text = body.get("input") or body.get("prompt") or body["messages"][-1]["content"]
    return text if isinstance(text, str) else "\n".join(text)


def test_a_mixed_file_killed_mid_run_resumes_exactly_once(tmp_path: Path, provider: FakeProvider) -> None:
    lines = mixed(12)  # 60 lines; every text ends with its row number
    write_jsonl(tmp_path / "in.jsonl", lines)
    provider.hold(lambda text: int(text.rsplit(" ", 1)[1]) >= 6)  # lines[30:] wait until released
    command = [sys.executable, "-m", "runner", "run", "batch", "--input", "in.jsonl", "--api-base", provider.url,
               "--concurrency", "4"]  # fmt: skip
    results = tmp_path / "runs" / "batch" / "in" / "results.jsonl"
    first = subprocess.Popen(command, cwd=tmp_path, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        provider.wait_for(lambda s: s.held == 4)
        wait_until(lambda: Lines(results)() == 30, "the first 30 rows journaled")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    journaled = {r["custom_id"] for r in read_jsonl(results)}
    provider.release()
    # The resume, through the Python API in this process (the same run directory; one process start less).
    second = api.run("batch", tmp_path / "in.jsonl", api_base=provider.url, runs_dir=tmp_path / "runs", concurrency=4)
    assert second.status == "completed" and second.run_dir == results.parent
    records = read_jsonl(results)
    assert sorted(r["custom_id"] for r in records) == sorted(ln["custom_id"] for ln in lines)  # each exactly once
    sent = provider.stats().by_key
    assert len(journaled) == 30 and all(sent[key_of(ln)] == 1 for ln in lines if ln["custom_id"] in journaled)
    check_bodies(records, {ln["custom_id"]: ln["url"] for ln in lines})
    manifest = orjson.loads((results.parent / "manifest.json").read_bytes())
    assert manifest["request_counts"] == {"total": 60, "completed": 60, "failed": 0}
    usage = [chat_usage(r["response"]["body"]["usage"]) for r in records]
    assert manifest["usage"]["input_tokens"] == sum(u["prompt_tokens"] for u in usage)


async def test_the_embed_job_runs_offline_with_no_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    rows = [{"id": f"t-{i}", "text": text} for i, text in enumerate(["the app crashes", "退款", "dark mode please"])]
    write_jsonl(tmp_path / "in.jsonl", rows)
    job = load_job("embed", ROOT / "jobs")
    assert job.model == "local/multilingual-e5-small"
    settings = RunSettings(input_path=tmp_path / "in.jsonl", run_dir=tmp_path / "run", run_id="run", concurrency=4)
    caller = Caller(job, RetryPolicy(max_attempts=2), job.timeout)
    try:
        done = finished(await run(caller, settings), tmp_path / "run")
    finally:
        await aclose()
    assert sorted(r["custom_id"] for r in done.results) == ["t-0", "t-1", "t-2"] and done.errors == []
    for record in done.results:
        body = record["response"]["body"]
        assert isinstance(body["data"][0]["embedding"], str)  # base64, the compact encoding
        vector = np.array(decoded(body)["data"][0]["embedding"])
        CreateEmbeddingResponse.model_validate(decoded(body))
        assert vector.shape == (384,) and np.linalg.norm(vector) == pytest.approx(1, abs=1e-3)
        assert record["result"]["dimensions"] == 384 and body["usage"]["prompt_tokens"] > 0
    assert done.manifest["cost_usd"] == 0 and done.manifest["cost_known"]


async def test_a_vllm_batch_file_runs_unchanged_against_an_openai_compatible_server(
    tmp_path: Path, provider: FakeProvider, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")  # a self-hosted server: no key
    model = "meta-llama/Meta-Llama-3-8B-Instruct"
    lines = [line(f"request-{i}", "/v1/chat/completions", model=model, max_completion_tokens=1000,
                  messages=[{"role": "system", "content": "You are a helpful assistant."},
                            {"role": "user", "content": f"Hello world {i}!"}]) for i in range(3)]  # fmt: skip
    lines.append(line("embed-1", "/v1/embeddings", model="intfloat/e5-mistral-7b-instruct", input="Hello"))
    with caplog.at_level(logging.INFO, logger="runner"):
        done = await run_batch(tmp_path, provider, lines)
    assert done.errors == [] and len(done.results) == 4
    sent = provider.stats().last_request_for("Hello world 1!")
    assert sent.model == model and sent.max_completion_tokens == 1000  # the name as written, the limit as given
    said = [r.getMessage() for r in caplog.records if "is not one litellm knows" in r.getMessage()]
    assert len(said) == 2 and model in said[0] and "OpenAI-compatible" in said[0]  # once per model
    assert done.manifest["models"][model]["unpriced_requests"] == 3 and not done.manifest["cost_known"]


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({ENDPOINT: "/v1/embeddings", "input": "x", "stream": True}, "unsupported_parameter"),
        (
            {ENDPOINT: "/v1/completions", "prompt": "x", "stream_options": {"include_usage": True}},
            "unsupported_parameter",
        ),
        ({ENDPOINT: "/v1/responses", "input": "x", "tools": [{"type": "function"}]}, "unsupported_parameter"),
        ({ENDPOINT: "/v1/embeddings"}, "invalid_record"),
        ({ENDPOINT: "/v1/moderations", "input": "x"}, "unsupported_url"),
        ({"input": "x"}, "invalid_record"),  # a chat request needs messages
    ],
)
def test_refusals_name_the_parameter(params: dict[str, Any], code: str) -> None:
    with pytest.raises(RowError) as caught:
        split(params)
    assert caught.value.code == code


def test_endpoints_split_usage_and_finish_reasons() -> None:
    assert split({"messages": []}) == ("/v1/chat/completions", {"messages": []})  # chat carries nothing new
    assert split({ENDPOINT: "/embeddings", "input": "x", "stream": False})[1][ENDPOINT] == EMBEDDINGS
    usage = {"input_tokens": 7, "output_tokens": 2, "total_tokens": 9, "input_tokens_details": {"cached_tokens": 3}}
    assert chat_usage(usage)["prompt_tokens"] == 7 and chat_usage(usage)["prompt_tokens_details"]["cached_tokens"] == 3
    cut = {"object": "response", "status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"}}
    assert finish_reasons(cut) == ["length"] and finish_reasons({"object": "list", "data": []}) == []
    responses = {ENDPOINT: RESPONSES, "model": "gpt-4o-mini", "input": "a b c", "max_output_tokens": 9}
    assert estimate_tokens(responses)[1] == 9
    with pytest.raises(JobDefinitionError, match="stream"):
        Job(name="x", build_request=dict, endpoint=EMBEDDINGS, stream=True)
    with pytest.raises(JobDefinitionError, match="endpoint"):
        Job(name="x", build_request=dict, endpoint="/v1/images")


async def test_other_endpoints_call_the_callers_functions_without_the_endpoint_key() -> None:
    from litellm.types.utils import EmbeddingResponse, Usage

    seen: list[dict[str, Any]] = []

    async def embed(**params: Any) -> EmbeddingResponse:
        seen.append(params)
        data = [{"object": "embedding", "index": 0, "embedding": [0.5, -0.25]}]
        return EmbeddingResponse(model="m", data=data, usage=Usage(prompt_tokens=2, total_tokens=2))

    caller = Caller(BATCH, RetryPolicy(), 5.0, calls={EMBEDDINGS: embed})
    body = {"model": "text-embedding-3-small", "input": "x", "encoding_format": "base64"}
    record = await caller(Row(1, "e", line("e", "/v1/embeddings", **body)))
    assert ENDPOINT not in seen[0] and seen[0]["max_retries"] == 0
    sent = record.line["response"]["body"]
    # A provider that answered numbers to a base64 request: the body is encoded as asked (float32 LE).
    assert sent["data"][0]["embedding"] == base64.b64encode(np.array([0.5, -0.25], "<f4").tobytes()).decode()
    assert sent["usage"] == {"prompt_tokens": 2, "total_tokens": 2}
