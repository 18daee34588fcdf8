"""The short way (runner.provider.wire) and litellm.acompletion give the same records, row for row.

The same rows go through a Caller whose completion function is ``wire.Sender`` and one that calls
``litellm.acompletion``, against the fake provider: plain, with tools, with ``response_format``,
and every kind of failure (400, 401, 403, 404, 429 with Retry-After, 500, 503, a time-out, a dropped
connection, a broken body), one at a time and then answered. The records are compared field by
field, apart from ids and timings; so are the waits the retry policy chose (Retry-After honoured),
the classification of each failure, and the cost, which must also be litellm's ``completion_cost``.
A small server of the test's own checks what goes over the wire, and cached tokens' price.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import litellm
import orjson
import pytest
from aiohttp import web

from runner.call.assemble import build_caller
from runner.call.retry import RetryPolicy
from runner.permits.limits import Limits
from runner.plan import CallPlan
from runner.provider import wire
from runner.provider.failures import ProviderFailure, mapped
from runner.provider.provider import aclose, acompletion
from runner.rows import Row
from tests.doubles.provider import FakeProvider
from tests.support.wire import (
    FATAL,
    JOB,
    MODEL,
    PROVIDERS,
    SCHEMA,
    TOOLS,
    Counted,
    caller_with,
    comparable,
    on,
    send_all,
    user_turn,
)

ROWS: list[tuple[str, dict[str, Any]]] = [
    ("plain", {"messages": user_turn("my invoice is wrong")}),
    (
        "sampling",
        {
            "messages": user_turn("the app crashes"),
            "temperature": 0.2,
            "max_tokens": 5,
            "seed": 7,
            "top_p": 0.9,
            "stop": ["\n"],
            "user": "u-1",
        },
    ),
    ("tools", {"messages": user_turn('refund please [[tool:label:{"label":"billing"}]]'), "tools": TOOLS}),
    (
        "forced_tool",
        {
            "messages": user_turn("add dark mode"),
            "tools": TOOLS,
            "tool_choice": {"type": "function", "function": {"name": "label"}},
        },
    ),
    ("response_format", {"messages": user_turn('x [[answer:{"label":"bug"}]]'), "response_format": SCHEMA}),
    ("bad_request", {"messages": user_turn("x [[fail:400]]")}),
    ("rate_limited_once", {"messages": user_turn("x [[fail:429:retry_after=0.25:times=1]]")}),
    ("rate_limited_ms", {"messages": user_turn("x [[fail:429:retry_after_ms=300:times=2]]")}),
    ("rate_limited_always", {"messages": user_turn("x [[fail:429:retry_after=0.2]]")}),
    ("server_error", {"messages": user_turn("x [[fail:500:times=1]]")}),
    ("bad_gateway", {"messages": user_turn("x [[fail:502:times=1]]")}),
    ("unavailable", {"messages": user_turn("x [[fail:503:retry_after=0.4:times=1]]")}),
    ("unavailable_always", {"messages": user_turn("x [[fail:503]]")}),
    ("timeout", {"messages": user_turn("x [[fail:timeout:sleep=2:times=1]]")}),
    ("dropped", {"messages": user_turn("x [[fail:drop:times=1]]")}),
    ("dropped_always", {"messages": user_turn("x [[fail:drop]]")}),
    ("cut_off", {"messages": user_turn("x [[fail:break:times=1]]")}),
    ("truncated", {"messages": user_turn("x [[fail:truncate:times=1]]")}),
    ("malformed", {"messages": user_turn("x [[fail:malformed:times=1]]")}),
    ("rejected", {"messages": user_turn("x [[answer:not a label]]")}),
]


OUTCOMES = {
    "plain": "ok", "sampling": "ok", "tools": "ok", "forced_tool": "ok", "response_format": "ok",
    "bad_request": "bad_request", "rate_limited_once": "ok", "rate_limited_ms": "ok",
    "rate_limited_always": "rate_limited", "server_error": "ok", "bad_gateway": "ok", "unavailable": "ok",
    "unavailable_always": "server_error", "timeout": "ok", "dropped": "ok", "dropped_always": "connection_error",
    "cut_off": "ok", "truncated": "ok", "malformed": "ok", "rejected": "invalid_result",
    "authentication": "authentication_failed", "permission": "permission_denied", "not_found": "model_not_found",
}  # fmt: skip
# litellm's own HTTP handler (hosted_vllm) makes other exceptions than the openai SDK's: litellm maps its 403 to a
# BadRequestError, a dropped connection to a made-up 500, and a body that is not JSON to an APIError of status 200.
OUTCOMES_OF = {
    "hosted_vllm": {"permission": "bad_request", "dropped_always": "server_error", "truncated": "http_error",
                    "malformed": "http_error"},
}  # fmt: skip


async def _both(provider: FakeProvider, rows: list[tuple[str, dict[str, Any]]]) -> tuple[dict, dict, list, list]:
    """The rows through litellm, then (the fake's fault counters reset) through the short way."""
    waits_litellm: list[float] = []
    waits_wire: list[float] = []
    through_litellm = await send_all(caller_with(provider.url, acompletion, waits_litellm), rows)
    provider.reset()
    fallback = Counted(acompletion)
    through_wire = await send_all(caller_with(provider.url, wire.Sender(fallback), waits_wire), rows)
    assert fallback.calls == 0, "every one of these requests can go the short way"
    return through_litellm, through_wire, waits_litellm, waits_wire


@pytest.mark.parametrize("prefix", PROVIDERS)
async def test_the_same_records_whichever_way_a_request_went(provider: FakeProvider, prefix: str) -> None:
    through_litellm, through_wire, waits_litellm, waits_wire = await _both(provider, on(prefix, ROWS + FATAL))
    assert list(through_wire) == list(through_litellm)
    for name in through_litellm:
        assert comparable(through_wire[name]) == comparable(through_litellm[name]), name
    assert waits_wire == waits_litellm  # the same retries, each after the same wait (Retry-After honoured)
    assert any(w >= 0.4 for w in waits_wire) and sum(w >= 0.2 for w in waits_wire) >= 5
    outcomes = {name: r if isinstance(r, str) else r.line["error"]["code"] if not r.ok else "ok"
                for name, r in through_wire.items()}  # fmt: skip
    assert {n: o.split(" calling ")[0] for n, o in outcomes.items()} == {**OUTCOMES, **OUTCOMES_OF.get(prefix, {})}
    assert through_wire["tools"].line["result"] == "billing" and through_wire["response_format"].line["result"] == "bug"
    model = on(prefix, ROWS)[0][1]["model"]
    for name, record in through_wire.items():  # the cost is litellm's, for the model and the usage answered
        if isinstance(record, str) or record.line["response"] is None:
            continue
        body = record.line["response"]["body"]
        cost = record.line["meta"]["cost_usd"]
        if prefix == "hosted_vllm":  # litellm has no price for a model of a server of one's own
            assert cost is None, name
            continue
        expected = litellm.completion_cost(completion_response=litellm.ModelResponse(**body), model=model)
        assert cost == pytest.approx(expected, rel=1e-12) and expected > 0, name


@pytest.mark.parametrize("prefix", PROVIDERS)
async def test_each_failure_is_classified_as_litellm_s_would_be(provider: FakeProvider, prefix: str) -> None:
    """One attempt each, no retries: litellm's exception class, the ProviderFailure's every field (the message
    apart from the seconds a time-out took), and whether the endpoint counts as unreachable."""
    sender = wire.Sender(Counted(acompletion))
    rows = on(prefix, ROWS + FATAL)
    requests = [request for _, request in rows if "[[fail" in request["messages"][-1]["content"]]
    refused = {**rows[0][1], "api_base": "http://127.0.0.1:9/v1"}  # nothing listens on port 9
    for request in [*requests, refused]:
        failures = []
        for complete in (acompletion, sender):
            provider.reset()
            params = {"api_base": provider.url, "timeout": 1.0, "max_retries": 0, "api_key": "sk-1", **request}
            with pytest.raises(ProviderFailure) as caught, mapped():
                await complete(**params)
            f = caught.value
            headers = {k: v for k, v in f.headers.items() if k not in ("date", "x-request-id", "request-id")}
            failures.append((type(f.__cause__), f.disposition, f.code, comparable(f.message), f.status,
                             f.retry_after, f.unreachable, headers))  # fmt: skip
        assert failures[1] == failures[0], request["messages"][-1]["content"]
    await aclose()  # litellm's clients and the short way's session: this test's loop ends with it
    assert sender.fallback.calls == 0  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("request_", "short"),
    [
        ({"messages": user_turn("x")}, True),
        ({"messages": user_turn("x"), "api_key": "sk-1", "custom_llm_provider": "openai"}, True),
        ({"messages": user_turn("x"), "stream": True}, False),  # streaming: litellm's stream_chunk_builder
        ({"messages": user_turn("x"), "service_tier": "flex"}, False),  # priced by the tier served
        ({"messages": user_turn("x"), "extra_headers": {"x": "1"}}, False),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}]}, False),
        ({"messages": user_turn("x"), "model": "openai/o3-mini"}, False),  # litellm rewrites max_tokens for it
        ({"messages": user_turn("x"), "model": "anthropic/claude-sonnet-4-5"}, False),
        ({"messages": user_turn("x"), "model": "local/zero-shot"}, False),
        ({"messages": user_turn("x"), "model": "openai/meta-llama/Llama-3-8B"}, True),  # any --api-base server
    ],
)
def test_which_requests_go_the_short_way(request_: dict[str, Any], short: bool) -> None:
    assert (wire.eligible({"model": MODEL, "timeout": 5.0, "max_retries": 0, **request_}) is not None) is short


def test_the_plan_chooses_the_sender() -> None:
    policy = RetryPolicy(max_attempts=1)
    auto = build_caller(CallPlan(job=JOB, policy=policy, timeout=5.0), Limits(1))
    forced = build_caller(CallPlan(job=JOB, policy=policy, timeout=5.0, sender="litellm"), Limits(1))
    assert isinstance(auto.complete, wire.Sender) and auto.complete.fallback is acompletion
    assert forced.complete is acompletion


# -- what goes over the wire, and cached tokens, against a server of this test's own ---------------

DETAILS = {"reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
CACHED_USAGE = {"prompt_tokens": 2000, "completion_tokens": 40, "total_tokens": 2040,
                "prompt_tokens_details": {"cached_tokens": 1536, "audio_tokens": 0},
                "completion_tokens_details": DETAILS}  # fmt: skip


@pytest.fixture
async def echo() -> AsyncIterator[tuple[str, list[dict[str, Any]], Callable[[], None]]]:
    """A server that keeps every request body and answers with cached tokens in its usage."""
    seen: list[dict[str, Any]] = []

    async def chat(request: web.Request) -> web.Response:
        seen.append({"body": orjson.loads(await request.read()), "auth": request.headers.get("Authorization")})
        answer = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini-2024-07-18",
                  "choices": [{"index": 0, "message": {"role": "assistant", "content": "billing", "refusal": None,
                                                       "annotations": []}, "logprobs": None, "finish_reason": "stop"}],
                  "usage": CACHED_USAGE, "service_tier": "default", "system_fingerprint": None}  # fmt: skip
        return web.json_response(answer, headers={"x-request-id": "req_1", "x-ratelimit-remaining-requests": "9"})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/v1", seen, seen.clear
    finally:
        await runner.cleanup()
        await wire.aclose()


async def test_the_same_request_on_the_wire_and_cached_tokens_priced(
    echo: tuple[str, list[dict[str, Any]], Callable[[], None]],
) -> None:
    url, seen, _ = echo
    for _, request in ROWS[:5]:
        records = []
        for complete in (acompletion, wire.Sender(Counted(acompletion))):
            records.append(await caller_with(url, complete, [])(Row(1, "r", {"request": request})))
        litellm_sent, wire_sent = seen[-2:]
        assert wire_sent == litellm_sent  # the same JSON body and key
        assert comparable(records[1]) == comparable(records[0])
        body = records[1].line["response"]["body"]
        assert body["usage"]["prompt_tokens_details"]["cached_tokens"] == 1536
        expected = litellm.completion_cost(completion_response=litellm.ModelResponse(**body), model=MODEL)
        uncached = litellm.cost_per_token(model=MODEL, prompt_tokens=2000, completion_tokens=40)
        assert records[1].line["meta"]["cost_usd"] == pytest.approx(expected, rel=1e-12)
        assert expected < sum(uncached)
