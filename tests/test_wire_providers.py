"""Which OpenAI-wire providers go the short way, and what each one's litellm handler does that the short way repeats.

openai/ (and any --api-base), litellm_proxy/, azure/ and hosted_vllm/ go the short way. litellm sends the first
three through the openai SDK (a litellm_proxy answer is named "litellm_proxy/<model>"; azure to the deployment's URL
with an api-version and an ``api-key`` header, its failures mapped as azure's) and hosted_vllm through its own
HTTP handler (an error's whole body is its message, a stall mid-stream is a broken stream, tools are rewritten);
tests/test_wire.py and tests/test_wire_stream.py send the fake provider's rows both ways for each of them. Here a
server of the test's own shows what the fake provider does not: the request each sends (path, body, key,
organization), a server that names its model otherwise than asked (and litellm prices the answer as the model the
server named, where it has a price for it), and streams that end or misbehave in ways of their own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import litellm
import orjson
import pytest
from aiohttp import web

import runner
from runner.errors import UsageError
from runner.provider import wire
from runner.provider.provider import acompletion
from runner.rows import Row
from tests.doubles.provider import FakeProvider
from tests.support.run import INLINE, tickets
from tests.support.wire import PROVIDERS, SCHEMA, TOOLS, Counted, caller_with, comparable, user_turn

STRICT = [{"type": "function", "function": {"name": "label", "strict": True, "parameters": {
    "type": "object", "additionalProperties": False, "properties": {"label": {"type": "string"}},
    "required": ["label"]}}}]  # fmt: skip
CONVERSATION: list[dict[str, Any]] = [
    {"role": "system", "content": "Label the ticket.", "name": None},
    {"role": "user", "content": "refund please"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "label", "arguments": '{"label":"billing"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "noted"},
    {"role": "user", "content": "and the label?"},
]  # fmt: skip


@pytest.mark.parametrize(
    ("request_", "short"),
    [
        ({"model": "openai/m", "api_base": "http://127.0.0.1:1/v1"}, True),
        ({"model": "hosted_vllm/m", "api_base": "http://127.0.0.1:1/v1"}, True),
        ({"model": "hosted_vllm/m", "api_base": "http://127.0.0.1:1/v1", "tools": TOOLS}, True),
        ({"model": "hosted_vllm/m", "api_base": "http://127.0.0.1:1/v1", "tools": STRICT}, False),  # rewritten
        ({"model": "hosted_vllm/m", "api_base": "http://127.0.0.1:1/v1", "user": "u"}, False),  # dropped
        ({"model": "openai/m", "api_base": "http://127.0.0.1:1/v1", "user": "u"}, False),  # dropped too
        ({"model": "openai/gpt-4o-mini", "api_base": "http://127.0.0.1:1/v1", "user": "u"}, True),
        ({"model": "litellm_proxy/m", "api_base": "http://127.0.0.1:1/v1", "api_key": "sk-1", "user": "u"}, True),
        ({"model": "litellm_proxy/m", "api_base": "http://127.0.0.1:1/v1", "tools": STRICT}, True),
        ({"model": "hosted_vllm/m"}, False),  # no server: litellm says so
        ({"model": "azure/gpt-4o-mini", "api_base": "http://127.0.0.1:1", "api_key": "k"}, True),
        ({"model": "azure/my-gpt", "api_base": "http://127.0.0.1:1", "api_version": "2024-10-21"}, True),
        ({"model": "azure/gpt-4o-mini", "api_base": "http://127.0.0.1:1", "api_version": "v1"}, False),  # /openai/v1
        ({"model": "azure/gpt-4o-mini", "api_base": "http://127.0.0.1:1/openai/deployments/d"}, False),  # base_url
        ({"model": "azure/a/b", "api_base": "http://127.0.0.1:1"}, False),  # a name the SDK would quote
        (
            {
                "model": "azure/gpt-4o-mini",
                "api_base": "http://127.0.0.1:1",
                "api_version": "2024-02-01",
                "response_format": SCHEMA,
            },
            False,
        ),  # litellm makes it a tool for that version
        (
            {
                "model": "azure/gpt-4o-mini",
                "api_base": "http://127.0.0.1:1",
                "api_version": "2024-05-01-preview",
                "tools": TOOLS,
                "tool_choice": "required",
            },
            False,
        ),  # litellm refuses it for that version
        ({"model": "azure/gpt-4o-mini", "api_base": "http://127.0.0.1:1", "tool_choice": "auto"}, False),  # dropped
        ({"model": "azure/gpt-5-mini", "api_base": "http://127.0.0.1:1"}, False),  # its reasoning config
        ({"model": "openai/m", "api_base": "http://127.0.0.1:1/v1", "api_version": "2024-10-21"}, False),
        ({"model": "openai/m", "messages": [{"content": "x"}]}, False),  # litellm would make it the assistant's
    ],
)
def test_which_providers_go_the_short_way(request_: dict[str, Any], short: bool) -> None:
    request = {"timeout": 5.0, "max_retries": 0, "messages": user_turn("x"), **request_}
    assert (wire.eligible(request) is not None) is short


@pytest.mark.parametrize("variable", ["AZURE_AD_TOKEN", "AZURE_USERNAME"])
def test_azure_with_entra_id_credentials_goes_through_litellm(variable: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """litellm would authorise such a call with an Entra ID token (a Bearer header, not the key): its way."""
    request = {"model": "azure/gpt-4o-mini", "api_base": "http://127.0.0.1:1", "messages": user_turn("x")}
    assert wire.eligible(request) is not None
    monkeypatch.setenv(variable, "x")
    assert wire.eligible(request) is None


def test_a_gemini_call_in_the_same_process_leaves_the_short_way_open() -> None:
    """litellm's Gemini context caching module makes a Cache when imported (by a gemini/ call, online or
    in a batch), which adds an idle "cache" success callback: before, every later request went through
    litellm (a test order seen in one CI-like run made 15 equivalence tests fail)."""
    import litellm
    import litellm.llms.vertex_ai.context_caching.vertex_ai_context_caching

    assert "cache" in litellm.success_callback and litellm.cache is None
    request = {"model": "openai/m", "api_base": "http://127.0.0.1:1/v1", "messages": user_turn("x")}
    assert wire.eligible(request) is not None
    litellm.cache = litellm.Cache()  # a cache that is set does change calls: litellm's way then
    try:
        assert wire.eligible(request) is None
    finally:
        litellm.cache = None


# -- a server of the test's own --------------------------------------------------------------------------

USAGE = {"prompt_tokens": 2000, "completion_tokens": 40, "total_tokens": 2040,
         "prompt_tokens_details": {"cached_tokens": 1536, "audio_tokens": 0}}  # fmt: skip
SERVED = "served-model-v2"  # the server names its model otherwise than it was asked (as OpenAI's dated names)
BUDGET = ("Could not finish the message because max_tokens or model output limit was reached. Please try again "
          "with higher max_tokens.")  # fmt: skip


def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"id": "chatcmpl-9", "object": "chat.completion.chunk", "created": 1, "model": SERVED,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}  # fmt: skip


def _data(value: Any) -> bytes:
    return b"data: " + (value if isinstance(value, bytes) else orjson.dumps(value)) + b"\n\n"


ROLE, TEXT, FINISH = _chunk({"role": "assistant", "content": ""}), _chunk({"content": "billing"}), _chunk({}, "stop")
TAIL = _data({**_chunk({}), "choices": [], "usage": USAGE}) + _data(b"[DONE]")
# Streams as the server sends them, by the user's text: the ordinary one, and ways of their own.
STREAMS: dict[str, bytes] = {
    "named": _data(ROLE) + _data(TEXT) + _data(FINISH) + TAIL,
    "reasoning": _data(ROLE) + _data(_chunk({"reasoning": "a refund"})) + _data(TEXT) + _data(FINISH) + TAIL,
    "comments": b": keep-alive\n\n" + _data(ROLE) + _data(TEXT) + b": keep-alive\n\n" + _data(FINISH) + TAIL,
    "done_early": _data(ROLE) + _data(TEXT) + _data(b"[DONE]"),
    "error_event": _data(ROLE) + _data({"error": {"message": "the engine failed", "code": 500}}),
    "error_event_400": _data(ROLE) + _data({"error": {"message": "bad prompt", "code": 400}}),
    "aborted": _data(ROLE) + _data(TEXT) + _data(_chunk({}, "abort")) + TAIL,
}


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """A server that keeps every request (its body, key and organization) and answers with another model's name,
    cached tokens in its usage, and the streams above."""
    seen: list[dict[str, Any]] = []

    async def chat(request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        seen.append({"body": body, "auth": request.headers.get("Authorization"), "path": request.path_qs,
                     "api-key": request.headers.get("api-key"),
                     "organization": request.headers.get("OpenAI-Organization")})  # fmt: skip
        if body.get("stream"):
            reply = web.StreamResponse(headers={"Content-Type": "text/event-stream", "x-request-id": "req_1"})
            await reply.prepare(request)
            await reply.write(STREAMS[body["messages"][-1]["content"]])
            await reply.write_eof()
            return reply
        text = body["messages"][-1]["content"]
        if text == "budget":  # GPT-5's refusal of an output budget too small for one visible token
            return web.json_response({"error": {"message": BUDGET, "type": "invalid_request_error",
                                                "param": "max_tokens", "code": None}}, status=400)  # fmt: skip
        served = text.removeprefix("served:") if text.startswith("served:") else SERVED
        answer = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": served,
                  "choices": [{"index": 0, "message": {"role": "assistant", "content": "billing", "refusal": None},
                               "logprobs": None, "finish_reason": "stop"}], "usage": USAGE}  # fmt: skip
        return web.json_response(answer, headers={"x-request-id": "req_1", "x-ratelimit-remaining-requests": "9"})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/openai/deployments/{deployment}/chat/completions", chat)  # Azure OpenAI's, at …/v1
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/v1", seen
    finally:
        await runner.cleanup()
        await wire.aclose()


def _untimed(outcome: Any) -> Any:
    line = comparable(outcome)
    if isinstance(line, dict):
        line["meta"].pop("ttft_s", None)
        line["meta"].pop("output_tokens_per_s", None)
    return line


# name -> (model, request, whether it goes the short way for each of PROVIDERS)
REQUESTS: dict[str, tuple[str, dict[str, Any], tuple[bool, ...]]] = {
    "plain": ("gpt-4o-mini", {"messages": user_turn("x")}, (True, True, True, True)),
    "tools": ("gpt-4o-mini", {"messages": user_turn("x"), "tools": TOOLS, "tool_choice": "auto"},
              (True, True, True, True)),
    "strict_tools": ("gpt-4o-mini", {"messages": user_turn("x"), "tools": STRICT}, (True, False, True, True)),
    "schema": ("gpt-4o-mini", {"messages": user_turn("x"), "response_format": SCHEMA}, (True, True, True, True)),
    "conversation": ("gpt-4o-mini", {"messages": CONVERSATION, "tools": TOOLS}, (True, True, True, True)),
    "user": ("meta-llama/Llama-3-8B", {"messages": user_turn("x"), "user": "u-1"}, (False, False, True, False)),
    # a deployment or alias of no price of its own, answered by a model litellm has one for
    "served": ("my-gpt", {"messages": user_turn("served:gpt-4o-2024-05-13")}, (True, True, True, True)),
    "dated": ("gpt-4o", {"messages": user_turn("served:gpt-4o-2024-05-13")}, (True, True, True, True)),
    # litellm's OpenAI and Azure handlers answer it with an empty answer cut for "length"; its HTTP handler refuses
    "budget": ("gpt-4o-mini", {"messages": user_turn("budget"), "max_tokens": 1}, (True, True, True, True)),
}  # fmt: skip


@pytest.mark.parametrize("prefix", PROVIDERS)
async def test_the_same_request_on_the_wire_and_the_same_record(
    server: tuple[str, list[dict[str, Any]]], prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The body, key and organization header litellm sends, and the record it makes of the answer (named by the
    server, priced by litellm for the model asked), whichever way the request went."""
    url, seen = server
    monkeypatch.setenv("OPENAI_ORGANIZATION", "org-1")  # the openai SDK sends it, to litellm_proxy too
    for name, (model, request, shorts) in REQUESTS.items():
        fallback = Counted(acompletion)
        records = []
        for complete in (acompletion, wire.Sender(fallback)):
            row = Row(1, "r", {"request": {**request, "model": f"{prefix}/{model}"}})
            records.append(await caller_with(url, complete, [])(row))
        assert seen[-1] == seen[-2], name  # the same JSON body, key and organization
        assert comparable(records[1]) == comparable(records[0]), name
        assert (fallback.calls == 0) is shorts[PROVIDERS.index(prefix)], name
    answered = records[1].line["response"]  # the last of REQUESTS: "budget"
    assert answered["body"]["choices"][0]["finish_reason"] == "length" if prefix != "hosted_vllm" else answered is None
    without_nones = [{k: v for k, v in m.items() if v is not None} for m in CONVERSATION]  # as litellm sends them
    assert without_nones in [s["body"]["messages"] for s in seen]
    assert {s["organization"] for s in seen} == ({None} if prefix in ("hosted_vllm", "azure") else {"org-1"})
    if prefix == "azure":  # the deployment's URL with the API version, the key in its own header
        assert {(s["path"].split("?")[1], s["auth"], s["api-key"] is not None) for s in seen} == {
            (f"api-version={litellm.AZURE_DEFAULT_API_VERSION}", None, True)
        }
        assert {s["path"].split("/")[4] for s in seen} == {
            "gpt-4o-mini",
            "my-gpt",
            "gpt-4o",
            "meta-llama%2FLlama-3-8B",
        }  # as the SDK quotes it


@pytest.mark.parametrize("prefix", PROVIDERS)
async def test_the_same_streamed_record_whatever_the_stream_does(
    server: tuple[str, list[dict[str, Any]]], prefix: str
) -> None:
    """Streams the fake provider does not send, through litellm and the short way: a server naming its model
    otherwise (litellm names a stream's answer after the model asked), a ``reasoning`` delta, SSE comments, a
    ``[DONE]`` before any finish reason, error events, an aborted generation."""
    url, _ = server
    for text in STREAMS:
        fallback = Counted(acompletion)
        records = []
        for complete in (acompletion, wire.Sender(fallback)):
            caller = dataclasses.replace(caller_with(url, complete, [], max_attempts=1), stream=True)
            row = Row(1, "r", {"request": {"messages": user_turn(text), "model": f"{prefix}/gpt-4o-mini"}})
            records.append(_untimed(await caller(row)))
        assert records[1] == records[0], text
        assert fallback.calls == 0, text


def test_an_azure_run_sends_the_key_it_finds(
    tmp_path: Path, provider: FakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run of azure/ with ``--api-base`` and the key in ``AZURE_API_KEY`` (or ``AZURE_OPENAI_API_KEY``), no version
    set (litellm has a default): before, runner sent "no-key" in its place (litellm's check names all three of azure's
    variables whenever one is missing), and the server refused every row."""
    provider.configure(api_key="az-key-1")
    monkeypatch.delenv("AZURE_API_KEY")
    for variable in ("AZURE_API_KEY", "AZURE_OPENAI_API_KEY"):
        with monkeypatch.context() as env:
            env.setenv(variable, "az-key-1")
            result = runner.run(INLINE, tickets(4, variable), runs_dir=tmp_path / "runs", api_base=provider.url,  # type: ignore[operator]
                                model="azure/gpt-4o-mini", no_cache=True)  # fmt: skip
        assert result.counts == {"total": 4, "completed": 4, "failed": 0}, variable
        assert result.cost_usd > 0
    with pytest.raises(UsageError, match="AZURE_API_BASE and AZURE_API_KEY are not set"):
        runner.run(INLINE, tickets(1), runs_dir=tmp_path / "runs", model="azure/gpt-4o-mini")  # type: ignore[operator]
