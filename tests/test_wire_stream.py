"""Streamed chat the short way (``WireStream``) and through litellm give the same records, row for row.

The same streamed rows go through a Caller whose completion function is ``wire.Sender`` and one that calls
``litellm.acompletion``, against the fake provider: text, tool calls split anywhere, ``response_format``,
and every way a stream can go wrong (cut by a dropped connection, ended cleanly before its finish chunk or
anywhere after it, a chunk that is not JSON, a stall longer than the time-out, before its first byte or in
the middle), plus the HTTP errors. The records are compared field by field apart from ids and timings (the
usage, ``usage.cost``, ``meta.usage_estimated``, the error's code, status and message), and so are the
waits the retry policy chose and, one attempt at a time, every field of each classified failure.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import litellm
import pytest

from runner.provider import wire
from runner.provider.failures import ProviderFailure, mapped
from runner.provider.provider import aclose, acompletion, collect_stream
from tests.doubles.provider import FakeProvider
from tests.support.wire import (
    FATAL,
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

STREAMED = {"stream": True, "stream_options": {"include_usage": True}}
TOOL = '[[tool:label:{"label":"billing"}]]'  # role, 4 argument pieces, finish, usage: 7 events
ROWS: list[tuple[str, dict[str, Any]]] = [
    ("plain", {"messages": user_turn("my invoice is wrong [[chunk:2]]")}),
    ("sampling", {"messages": user_turn("the app crashes"), "temperature": 0.2, "max_tokens": 5, "seed": 7}),
    ("tools", {"messages": user_turn(f"refund please {TOOL} [[split:3]]"), "tools": TOOLS}),
    ("forced_tool", {"messages": user_turn("add dark mode"), "tools": TOOLS, "tool_choice": "required"}),
    ("response_format", {"messages": user_turn('x [[answer:{"label":"bug"}]]'), "response_format": SCHEMA}),
    ("broken", {"messages": user_turn("billing [[fail:break:after=2:times=1]]")}),
    ("broken_always", {"messages": user_turn("billing [[fail:break:after=3]]")}),
    ("truncated", {"messages": user_turn("billing [[fail:truncate:after=2:times=1]]")}),
    ("empty", {"messages": user_turn("billing [[fail:truncate:after=0:times=1]]")}),
    ("malformed", {"messages": user_turn("billing [[fail:malformed:after=1:times=1]]")}),
    ("stalled", {"messages": user_turn("billing [[fail:stall:after=2:sleep=2:times=1]]")}),
    ("stalled_always", {"messages": user_turn("billing [[fail:stall:after=1:sleep=2]]")}),
    ("timeout", {"messages": user_turn("billing [[fail:timeout:sleep=2:times=1]]")}),
    ("dropped", {"messages": user_turn("billing [[fail:drop:times=1]]")}),
    ("rate_limited", {"messages": user_turn("billing [[fail:429:retry_after=0.25:times=1]]")}),
    ("server_error", {"messages": user_turn("billing [[fail:500:times=1]]")}),
    ("bad_request", {"messages": user_turn("billing [[fail:400]]")}),
    ("rejected", {"messages": user_turn("x [[answer:not a label]]")}),
]
# A clean end after every event: before the finish chunk it is retried, after it the answer is kept and
# its usage is litellm's estimate ("billing" in 4-character chunks: role, 2 pieces, finish, usage; tools above).
ENDS: list[tuple[str, dict[str, Any]]] = [
    (f"end_text_{k}", {"messages": user_turn(f"billing [[chunk:4]] [[fail:end:after={k}:times=1]]")}) for k in range(6)
]
ENDS += [(f"end_tool_{k}", {"messages": user_turn(f"x {TOOL} [[fail:end:after={k}:times=1]]"), "tools": TOOLS})
         for k in range(8)]  # fmt: skip


def _streamed(rows: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    return [(name, {**request, **STREAMED}) for name, request in rows]


def _untimed(outcome: Any) -> Any:
    """``comparable``, less the stream's own timings (present on every answer either way). litellm's estimate
    of a tool call's output tokens counts the call's id, which the server draws anew for every request: the
    two sends' estimates differ by that; each must be litellm's price of its own count."""
    line = comparable(outcome)
    if isinstance(line, dict) and line.get("response"):  # answered (a rejected answer too)
        meta, body = line["meta"], line["response"]["body"]
        assert meta.pop("ttft_s") is not None
        meta.pop("output_tokens_per_s")
        if meta.get("usage_estimated") and body["choices"][0]["message"].get("tool_calls"):
            usage = body["usage"]
            paid = litellm.cost_per_token(model=MODEL, prompt_tokens=usage["prompt_tokens"],
                                          completion_tokens=usage["completion_tokens"])  # fmt: skip
            cost = meta.pop("cost_usd")  # written into the usage too, where litellm prices the model (not hosted_vllm)
            assert cost == usage.pop("cost", cost) == pytest.approx(sum(paid), rel=1e-12)
            assert usage.pop("total_tokens") == usage["prompt_tokens"] + usage.pop("completion_tokens")
    return line


@pytest.mark.parametrize("prefix", PROVIDERS)
async def test_the_same_streamed_records_whichever_way_a_request_went(provider: FakeProvider, prefix: str) -> None:
    rows = _streamed(on(prefix, ROWS + ENDS + FATAL))
    waits_litellm: list[float] = []
    waits_wire: list[float] = []
    through_litellm = await send_all(dataclasses.replace(caller_with(provider.url, acompletion, waits_litellm),
                                                          stream=True), rows)  # fmt: skip
    provider.reset()
    fallback = Counted(acompletion)
    caller = dataclasses.replace(caller_with(provider.url, wire.Sender(fallback), waits_wire), stream=True)
    through_wire = await send_all(caller, rows)
    assert fallback.calls == 0, "every one of these streamed requests can go the short way"
    assert list(through_wire) == list(through_litellm)
    for name in through_litellm:
        assert _untimed(through_wire[name]) == _untimed(through_litellm[name]), name
    assert waits_wire == waits_litellm
    records = {name: r for name, r in through_wire.items() if not isinstance(r, str)}
    codes = {name: r.line["error"]["code"] for name, r in records.items() if not r.ok}
    expected = {"broken_always": "stream_broken", "stalled_always": "timeout", "bad_request": "bad_request",
                "rejected": "invalid_result"}  # fmt: skip
    if prefix == "hosted_vllm":  # litellm's HTTP handler: a stall is a broken stream, a 403 a bad request
        expected |= {"stalled_always": "stream_broken", "permission": "bad_request"}
    assert codes == expected
    estimated = {name for name, r in records.items() if r.line["meta"].get("usage_estimated")}
    assert estimated == {"end_text_4", "end_tool_6"}  # after the finish chunk, before the usage chunk
    retried = {n for n, r in records.items() if n.startswith("end_") and r.line["meta"]["attempts"] == 2}
    assert retried == {f"end_text_{k}" for k in range(4)} | {f"end_tool_{k}" for k in range(6)}
    assert through_wire["tools"].line["result"] == "billing"
    for name in (
        ("authentication", "not_found") if prefix == "hosted_vllm" else ("authentication", "permission", "not_found")
    ):
        assert "stopped the run" in through_wire[name]


@pytest.mark.parametrize(
    "fault",
    ["break:after=0", "break:after=2", "break:after=5", "truncate:after=0", "truncate:after=2", "malformed:after=0",
     "malformed:after=3", "end:after=0", "end:after=2", "stall:after=0:sleep=2", "stall:after=3:sleep=2",
     "timeout:sleep=2", "drop", "429:retry_after=0.5", "503:retry_after_ms=300", "500", "400", "401", "404"],
)  # fmt: skip
@pytest.mark.parametrize("prefix", PROVIDERS)
async def test_each_stream_failure_is_classified_as_litellm_s_would_be(
    provider: FakeProvider, fault: str, prefix: str
) -> None:
    """One attempt each: litellm's exception class, the ProviderFailure's every field, and whether the endpoint
    counts as unreachable (or, each way, the answer: litellm's HTTP handler keeps a stream broken after its
    finish chunk)."""
    outcomes: list[Any] = []
    model = on(prefix, [("", {})])[0][1]["model"]
    sender = wire.Sender(Counted(acompletion))
    for complete in (acompletion, sender):
        provider.reset()
        messages = user_turn(f"billing [[fail:{fault}]]")
        params = {"model": model, "api_base": provider.url, "timeout": 1.0, "max_retries": 0, "api_key": "sk-1",
                  **STREAMED}  # fmt: skip
        try:
            with mapped():
                stream = await complete(**params, messages=messages)
                response, _ = await collect_stream(stream, messages, 0.0, lambda: 0.0)
        except ProviderFailure as f:
            headers = {k: v for k, v in f.headers.items() if k not in ("date", "x-request-id", "request-id")}
            outcomes.append((type(f.__cause__), f.disposition, f.code, comparable(f.message), f.status,
                             f.retry_after, f.unreachable, headers))  # fmt: skip
        else:
            body = response.model_dump()
            outcomes.append(("answered", body["choices"], body["usage"]))
    await aclose()  # litellm's clients and the short way's session: this test's loop ends with it
    assert outcomes[1] == outcomes[0]
    assert sender.fallback.calls == 0  # type: ignore[attr-defined]
    answered = prefix == "hosted_vllm" and fault == "break:after=5"  # the finish chunk came: litellm keeps it
    assert (outcomes[0][0] == "answered") is answered


@pytest.mark.parametrize(
    ("request_", "short"),
    [
        (STREAMED, True),
        ({"stream": True}, False),  # runner always asks for the usage chunk; without it, litellm's
        ({"stream": True, "stream_options": {"include_usage": False}}, False),
        ({"stream": False}, True),
        ({"stream": "yes", "stream_options": {"include_usage": True}}, False),
    ],
)
def test_which_streamed_requests_go_the_short_way(request_: dict[str, Any], short: bool) -> None:
    request = {"model": MODEL, "timeout": 5.0, "max_retries": 0, "messages": user_turn("x"), **request_}
    assert (wire.eligible(request) is not None) is short
