"""Checks the fake provider through litellm's real HTTP path, the way the runner calls it.

conftest has put litellm in offline mode before this module imports it."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import asdict
from typing import Any

import aiohttp
import litellm
import openai
import pytest
from litellm.llms.custom_httpx.async_client_cleanup import close_litellm_async_clients
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from tests.doubles.answers import classify, count_tokens, example_arguments, truncate_to_tokens
from tests.doubles.config import FaultConfig
from tests.doubles.directives import ToolCallSpec, parse_directives
from tests.doubles.provider import FakeProvider
from tests.doubles.quota import reset_duration

litellm.suppress_debug_info = True

# litellm's first call lazily imports a module whose pydantic TypedDicts warn on import.
pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.filterwarnings("ignore:Items? .* the `ReadOnly` qualifier:UserWarning"),
    # looptime's pytest plugin (used by test_limits) makes an event loop in the session's first test
    # and never closes it; the garbage collector frees it, with its AF_UNIX self-pipe, in whichever
    # later test it happens to run, and under -W error that test fails. Not a leak of this module.
    pytest.mark.filterwarnings("ignore:unclosed event loop:ResourceWarning"),
    pytest.mark.filterwarnings("ignore:unclosed <socket.socket fd=[0-9]+, family=1,:ResourceWarning"),
]

MODEL = "openai/gpt-4o-mini"

# litellm's stream handler reads pydantic's deprecated instance attributes (model_fields...)
# when a usage chunk arrives; under -W error it would turn that into MidStreamFallbackError.
STREAM_WARNING = pytest.mark.filterwarnings(
    "ignore:Accessing the 'model_.*' attribute on the instance:DeprecationWarning"
)

TICKET_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "record_ticket",
        "parameters": {
            "type": "object",
            "properties": {
                "product": {"type": "string", "enum": ["api", "web", "mobile"]},
                "severity": {"type": "string", "enum": ["low", "high"]},
                "summary": {"type": "string", "maxLength": 40},
                "customer_email": {"type": ["string", "null"]},
            },
            "required": ["product", "severity", "summary", "customer_email"],
        },
    },
}
# Quotes, a backslash, non-ASCII and nesting, so split points land inside escapes and keys.
TOOL_ARGS = json.dumps(
    {"product": "api", "severity": "high", "summary": 'Tokens "401" \\ é', "customer_email": None, "n": {"k": [1]}}
)


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeProvider]:
    """One server for the module; tests use distinct messages so counts don't collide."""
    with FakeProvider() as fp:
        yield fp


@pytest.fixture
async def fp(fake: FakeProvider) -> AsyncIterator[FakeProvider]:
    """The module's server with counters cleared and default faults restored afterwards."""
    fake.reset()
    yield fake
    fake.configure(**asdict(FaultConfig()))
    # litellm caches one HTTP client per event loop and never closes it; each test gets a
    # fresh loop, so close them here or their sockets leak (ResourceWarning at exit).
    await close_litellm_async_clients()


async def complete(fp: FakeProvider, content: str, **kwargs: Any) -> Any:
    """Call litellm exactly as the runner does, with one user message."""
    kwargs.setdefault("timeout", 5)
    return await litellm.acompletion(
        model=MODEL,
        api_base=fp.url,
        api_key="sk-test",
        max_retries=0,
        messages=[{"role": "system", "content": "Classify the support ticket."}, {"role": "user", "content": content}],
        **kwargs,
    )


def context_chain(exc: BaseException) -> list[type[BaseException]]:
    """Exception types along ``__context__``, outermost first."""
    chain: list[type[BaseException]] = []
    current: BaseException | None = exc
    while current is not None and len(chain) < 20:
        chain.append(type(current))
        current = current.__context__
    return chain


# -- pure helpers ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ticket", "label"),
    [
        ("I was charged twice, please refund me", "billing"),
        ("The app crashes with an error after the refund", "billing"),
        ("Export fails with error 500", "bug"),
        ("It would be nice to add dark mode", "feature"),
        ("Please update my address", "other"),
        ("我被重复扣费了", "billing"),
        ("打开就闪退", "bug"),
        ("希望增加导出功能", "feature"),
        ("你好", "other"),
    ],
)
def test_classify(ticket: str, label: str) -> None:
    assert classify(ticket) == label


def test_tokens_and_truncation() -> None:
    assert count_tokens("abcdefgh") == 2
    assert count_tokens("退款退款") == 4
    assert truncate_to_tokens("abcdefghij", 2) == "abcdefgh"
    assert truncate_to_tokens("退款abcd", 3) == "退款abcd"
    assert truncate_to_tokens("退款abcd", 2) == "退款"


def test_parse_directives() -> None:
    parsed = parse_directives("[[fail:429:retry_after=2:times=3]] [[latency:50]] hi")
    assert parsed.fault is not None
    assert (parsed.fault.kind, parsed.fault.retry_after, parsed.fault.times) == ("429", 2.0, 3)
    assert parsed.latency_ms == 50
    assert parsed.text == "hi"
    with pytest.raises(ValueError, match="unknown fail kind"):
        parse_directives("[[fail:418]]")


def test_parse_stream_and_tool_directives() -> None:
    parsed = parse_directives('[[tool:f:{"a": [1], "b": "x:y"}]] [[split:3]] [[chunk:1]] [[fail:break:after=0]] hi')
    assert parsed.tool == ToolCallSpec("f", '{"a": [1], "b": "x:y"}')
    assert (parsed.split_chars, parsed.chunk_chars, parsed.text) == (3, 1, "hi")
    assert parsed.fault is not None
    assert (parsed.fault.kind, parsed.fault.after, parsed.fault.status) == ("break", 0, "stream_break")
    default = parse_directives("[[fail:truncate]]").fault
    assert default is not None and default.after == 2
    for bad in ("[[tool:f:[1]]]", "[[tool:f:{oops}]]", "[[tool::{}]]", "[[split:0]]", "[[chunk:x]]"):
        with pytest.raises(ValueError):
            parse_directives(bad)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (0.0001, "1ms"), (0.25, "250ms"), (1, "1s"), (1.5, "1.5s"), (360, "6m0s"), (3723.5, "1h2m3.5s")],
)
def test_reset_duration_is_openai_style(seconds: float, text: str) -> None:
    assert reset_duration(seconds) == text


def test_example_arguments_follow_the_schema() -> None:
    parameters = {
        **TICKET_TOOL["function"]["parameters"],
        "$defs": {"Item": {"type": "object", "properties": {"qty": {"type": "integer", "minimum": 1}}}},
    }
    parameters["properties"] = {
        **parameters["properties"],
        "items": {"type": "array", "items": {"$ref": "#/$defs/Item"}},
        "note": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        "urgent": {"type": "boolean"},
        "score": {"type": "number"},
    }
    text = "My API tokens fail with 401 since this morning"
    assert json.loads(example_arguments(parameters, text)) == {
        "product": "api",
        "severity": "low",
        "summary": text[:40],
        "customer_email": None,
        "items": [{"qty": 1}],
        "note": None,
        "urgent": False,
        "score": 0,
    }


@pytest.mark.parametrize(
    "bad", [{"rpm_limit": 0}, {"tpm_limit": 1.5}, {"rpm_limit": True}, {"window_s": 0}, {"window_s": -1}]
)
def test_quota_config_is_validated(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        FaultConfig().merged(bad)


# -- through litellm -----------------------------------------------------------------


async def test_happy_path(fp: FakeProvider) -> None:
    ticket = "My card was charged twice this month"
    resp = await complete(fp, ticket, temperature=0.2, max_tokens=50)
    assert resp.choices[0].message.content == "billing"
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage.prompt_tokens > 0
    assert resp.usage.completion_tokens == count_tokens("billing")
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + 2
    ChatCompletion.model_validate(resp.model_dump())

    stats = fp.stats()
    assert (stats.total, stats.by_status, stats.by_key) == (1, {"200": 1}, {ticket: 1})
    assert stats.by_peer == {"127.0.0.1": 1}  # who sent it: a machine's (or a network namespace's) address
    seen = stats.last_request_for(ticket)
    assert seen.has_authorization
    assert (seen.model, seen.temperature, seen.max_tokens, seen.stream) == ("gpt-4o-mini", 0.2, 50, False)
    assert seen.client_read_timeout == 5.0


async def test_answer_directive(fp: FakeProvider) -> None:
    resp = await complete(fp, "[[answer:Hello, world]] the app crashes")
    assert resp.choices[0].message.content == "Hello, world"


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("429", litellm.RateLimitError),
        ("500", litellm.InternalServerError),
        ("502", litellm.BadGatewayError),
        ("503", litellm.ServiceUnavailableError),
        ("400", litellm.BadRequestError),
        ("401", litellm.AuthenticationError),
        # litellm 1.110.2's OpenAI mapping has no 403 branch, so it falls through to a
        # generic APIError (status 403) rather than PermissionDeniedError.
        ("403", litellm.APIError),
        ("404", litellm.NotFoundError),
    ],
)
async def test_status_faults(fp: FakeProvider, kind: str, expected: type[Exception]) -> None:
    message = f"[[fail:{kind}]] status fault"
    with pytest.raises(expected) as caught:
        await complete(fp, message)
    assert type(caught.value) is expected
    assert getattr(caught.value, "status_code", None) == int(kind)
    assert fp.stats().by_status == {kind: 1}


async def test_403_chain_shows_permission_denied(fp: FakeProvider) -> None:
    with pytest.raises(litellm.APIError) as caught:
        await complete(fp, "[[fail:403]] chain")
    assert openai.PermissionDeniedError in context_chain(caught.value)


async def test_rate_limit_exposes_retry_after(fp: FakeProvider) -> None:
    with pytest.raises(litellm.RateLimitError) as caught:
        await complete(fp, "[[fail:429:retry_after=2:retry_after_ms=1500]] slow down")
    err = caught.value
    assert err.response.headers["retry-after"] == "2"
    assert err.response.headers["retry-after-ms"] == "1500"
    # litellm sets this attribute dynamically; its classes don't declare it.
    headers = getattr(err, "litellm_response_headers", None)
    assert headers is not None
    assert headers["retry-after"] == "2"


async def test_timeout(fp: FakeProvider) -> None:
    started = time.monotonic()
    with pytest.raises(litellm.Timeout) as caught:
        await complete(fp, "[[fail:timeout:sleep=5]] stall", timeout=0.5)
    assert time.monotonic() - started < 3
    assert openai.APITimeoutError in context_chain(caught.value)
    assert fp.stats().by_status == {"timeout": 1}


async def test_dropped_connection(fp: FakeProvider) -> None:
    with pytest.raises(litellm.InternalServerError) as caught:
        await complete(fp, "[[fail:drop]] hang up")
    # litellm 1.110.2 maps openai's APIConnectionError (httpx.ReadError "Server disconnected"
    # underneath) to InternalServerError with status_code 500, not to litellm.APIConnectionError.
    assert openai.APIConnectionError in context_chain(caught.value)
    assert caught.value.status_code == 500
    assert fp.stats().by_status == {"drop": 1}


async def test_stream_wire_format(fp: FakeProvider) -> None:
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "[[answer:Hello there]]"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    async with aiohttp.ClientSession() as session, session.post(f"{fp.url}/chat/completions", json=body) as resp:
        assert resp.content_type == "text/event-stream"
        events = [line.removeprefix("data: ") for line in (await resp.text()).split("\n\n") if line]
    assert events[-1] == "[DONE]"
    chunks = [ChatCompletionChunk.model_validate_json(event) for event in events[:-1]]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello there"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert len({c.id for c in chunks}) == 1


async def test_times_fails_first_attempts_only(fp: FakeProvider) -> None:
    message = "[[fail:503:times=2]] flaky row"
    for _ in range(2):
        with pytest.raises(litellm.ServiceUnavailableError):
            await complete(fp, message)
    resp = await complete(fp, message)
    assert resp.choices[0].message.content == "other"
    stats = fp.stats()
    assert stats.by_key[message] == 3
    assert stats.by_status == {"503": 2, "200": 1}


@STREAM_WARNING
async def test_streaming_matches_non_streaming(fp: FakeProvider) -> None:
    message = "[[answer:The quick brown fox jumps over the lazy dog.]] stream me"
    plain = await complete(fp, message)
    stream = await complete(fp, message, stream=True, stream_options={"include_usage": True})
    chunks = [chunk async for chunk in stream]
    assert len(chunks) > 5
    built = litellm.stream_chunk_builder(chunks)
    assert built is not None
    assembled = ChatCompletion.model_validate(built.model_dump())
    assert assembled.choices[0].message.content == plain.choices[0].message.content
    assert assembled.choices[0].finish_reason == "stop"
    assert assembled.usage is not None
    assert assembled.usage.completion_tokens == plain.usage.completion_tokens
    assert assembled.usage.prompt_tokens == plain.usage.prompt_tokens
    seen = fp.stats().last_request_for(message)
    assert seen.stream and seen.include_usage


async def test_max_tokens_truncates(fp: FakeProvider) -> None:
    answer = "one two three four five six seven eight nine ten"
    resp = await complete(fp, f"[[answer:{answer}]] long", max_tokens=3)
    content = resp.choices[0].message.content
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage.completion_tokens == 3
    assert content and answer.startswith(content) and len(content) < len(answer)


async def test_random_faults_are_seeded(fp: FakeProvider) -> None:
    fp.configure(seed=7, p429=0.3, p500=0.3)

    async def statuses(session: aiohttp.ClientSession) -> list[int]:
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}
        out = []
        for _ in range(30):
            async with session.post(f"{fp.url}/chat/completions", json=body) as resp:
                out.append(resp.status)
        return out

    async with aiohttp.ClientSession() as session:
        fp.reset()  # restarts the seeded sequence
        first = await statuses(session)
        fp.reset()
        second = await statuses(session)
    assert first == second
    assert {200, 429, 500} <= set(first)
    # A [[fail]] directive opts out of random faults even after its `times` are used up.
    fp.configure(p500=0.7, p429=0.3)
    for _ in range(3):
        resp = await complete(fp, "[[fail:429:times=0]] exempt")
        assert resp.choices[0].message.content == "other"


async def test_server_wide_latency(fp: FakeProvider) -> None:
    fp.configure(latency_ms=150)
    started = time.monotonic()
    await complete(fp, "slow server")
    assert time.monotonic() - started >= 0.15


async def test_admin_endpoints(fp: FakeProvider) -> None:
    root = fp.url.removesuffix("/v1")
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{fp.url}/models") as resp:
            models = await resp.json()
        assert "gpt-4o-mini" in [m["id"] for m in models["data"]]

        async with session.post(f"{root}/_config", json={"latency_ms": 5}) as resp:
            assert (await resp.json())["latency_ms"] == 5
        async with session.post(f"{root}/_config", json={"bogus": 1}) as resp:
            assert resp.status == 400
            assert "bogus" in (await resp.json())["error"]["message"]

        body = {"model": "m", "messages": [{"role": "user", "content": "[[fail:500]]"}]}
        async with session.post(f"{root}/chat/completions", json=body) as resp:
            assert resp.status == 500
            error = (await resp.json())["error"]
            assert set(error) == {"message", "type", "param", "code"}
        async with session.get(f"{root}/_stats") as resp:
            stats = await resp.json()
        assert stats["by_key"] == {"[[fail:500]]": 1}
        assert stats["last_request"]["[[fail:500]]"]["has_authorization"] is False

        async with session.post(f"{root}/_reset") as resp:
            assert resp.status == 200
    assert fp.stats().total == 0


async def test_concurrent_load_is_counted(fp: FakeProvider) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "load"}]}
    async with aiohttp.ClientSession() as session:

        async def one() -> int:
            async with session.post(f"{fp.url}/chat/completions", json=body) as resp:
                return resp.status

        statuses = await asyncio.gather(*(one() for _ in range(200)))
    assert set(statuses) == {200}
    assert fp.stats().by_key == {"load": 200}


# -- streaming, tool calls and stream faults -------------------------------------------


async def sse_events(fp: FakeProvider, content: str, **body: Any) -> list[str]:
    """POST a streamed request with aiohttp and return the raw ``data:`` payloads."""
    request = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}], "stream": True, **body}
    async with aiohttp.ClientSession() as session, session.post(f"{fp.url}/chat/completions", json=request) as resp:
        text = await resp.text()
    return [event.removeprefix("data: ") for event in text.split("\n\n") if event]


async def collect(stream: Any) -> list[Any]:
    """Read a litellm stream to the end."""
    return [chunk async for chunk in stream]


def assemble(chunks: list[Any]) -> Any:
    """litellm.stream_chunk_builder's response, after checking it against OpenAI's schema."""
    built = litellm.stream_chunk_builder(chunks)
    assert built is not None
    ChatCompletion.model_validate(built.model_dump())
    return built


@STREAM_WARNING
@pytest.mark.parametrize("chunk", [1, 3, 100])
async def test_streamed_content_equals_plain_content(fp: FakeProvider, chunk: int) -> None:
    message = f"[[answer:Grüße — the export fails on boards over 10 MB.]] [[chunk:{chunk}]] stream {chunk}"
    plain = await complete(fp, message)
    chunks = await collect(await complete(fp, message, stream=True, stream_options={"include_usage": True}))
    content_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content_chunks) == math.ceil(len(plain.choices[0].message.content) / chunk)
    built = assemble(chunks)
    assert built.choices[0].message.content == plain.choices[0].message.content
    assert built.usage.completion_tokens == plain.usage.completion_tokens


async def test_usage_chunk_only_with_include_usage(fp: FakeProvider) -> None:
    with_usage = await sse_events(fp, "[[answer:Hi there]] u", stream_options={"include_usage": True})
    without = await sse_events(fp, "[[answer:Hi there]] u")
    for events in (with_usage, without):
        assert events[-1] == "[DONE]"
        chunks = [json.loads(event) for event in events[:-1]]
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
    last = json.loads(with_usage[-2])
    assert last["choices"] == [] and last["usage"]["total_tokens"] > 0
    assert all("usage" not in json.loads(event) for event in without[:-1])


@STREAM_WARNING
@pytest.mark.parametrize("split", [1, 2, 3, 7, 50])
async def test_streamed_tool_call_assembles_for_any_split(fp: FakeProvider, split: int) -> None:
    message = f"tokens fail [[tool:record_ticket:{TOOL_ARGS}]] [[split:{split}]]"
    plain = await complete(fp, message, tools=[TICKET_TOOL])
    chunks = await collect(
        await complete(fp, message, tools=[TICKET_TOOL], stream=True, stream_options={"include_usage": True})
    )
    pieces = [c for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    assert len(pieces) == 1 + math.ceil(len(TOOL_ARGS) / split)  # the named first delta, then the pieces
    first = pieces[0].choices[0].delta.tool_calls[0]
    assert (first.index, first.type, first.function.name, first.function.arguments) == (
        0,
        "function",
        "record_ticket",
        "",
    )
    built = assemble(chunks)
    streamed = built.choices[0]
    expected = plain.choices[0]
    assert expected.finish_reason == streamed.finish_reason == "tool_calls"
    assert expected.message.content is None and not streamed.message.content
    for call in (streamed.message.tool_calls[0], expected.message.tool_calls[0]):
        assert call.id.startswith("call_") and call.type == "function"
        assert (call.function.name, call.function.arguments) == ("record_ticket", TOOL_ARGS)
    assert built.usage.completion_tokens == plain.usage.completion_tokens


async def test_forced_tool_choice_builds_arguments_from_the_schema(fp: FakeProvider) -> None:
    text = "My API tokens fail with 401"
    forced = {"type": "function", "function": {"name": "record_ticket"}}
    for choice in (forced, "required"):
        resp = await complete(fp, text, tools=[TICKET_TOOL], tool_choice=choice)
        call = resp.choices[0].message.tool_calls[0]
        assert call.function.arguments == example_arguments(TICKET_TOOL["function"]["parameters"], text)
        assert json.loads(call.function.arguments) == {
            "product": "api",
            "severity": "low",
            "summary": text,
            "customer_email": None,
        }
    resp = await complete(fp, text, tools=[TICKET_TOOL])  # "auto" without a directive: plain text
    assert resp.choices[0].message.content == classify(text) and not resp.choices[0].message.tool_calls
    with pytest.raises(litellm.BadRequestError, match="names no tool"):
        await complete(fp, '[[tool:other:{"a":1}]] x', tools=[TICKET_TOOL])


@STREAM_WARNING
@pytest.mark.parametrize(
    ("kind", "cause", "says"),
    [
        # The connection closes mid-body: aiohttp's TransferEncodingError under httpx.ReadError.
        ("break", openai.APIConnectionError, "Connection error"),
        # A clean end with no finish_reason: litellm itself raises (httpx.RemoteProtocolError inside).
        ("truncate", StopAsyncIteration, "Stream ended before a finish_reason was received"),
        ("malformed", json.JSONDecodeError, "Expecting property name"),
    ],
)
async def test_stream_faults_raise_mid_stream_fallback_then_recover(
    fp: FakeProvider, kind: str, cause: type[BaseException], says: str
) -> None:
    message = f"[[answer:Hello there world]] [[chunk:2]] [[fail:{kind}:after=2:times=1]] {kind}"
    stream = await complete(fp, message, stream=True, stream_options={"include_usage": True})
    with pytest.raises(litellm.exceptions.MidStreamFallbackError) as caught:
        await collect(stream)
    err = caught.value
    # litellm 1.110.2: every one is a MidStreamFallbackError wrapping a litellm.APIConnectionError
    # (status 500), after the role chunk and one content chunk ("He") went through.
    assert type(err) is litellm.exceptions.MidStreamFallbackError
    assert type(err.original_exception) is litellm.APIConnectionError
    assert err.status_code == 500 and says in str(err)
    assert err.generated_content == "He" and not err.is_pre_first_chunk
    assert cause in context_chain(err)
    chunks = await collect(await complete(fp, message, stream=True, stream_options={"include_usage": True}))
    assert assemble(chunks).choices[0].message.content == "Hello there world"
    assert fp.stats().by_status == {f"stream_{kind}": 1, "200": 1}


@STREAM_WARNING
async def test_an_empty_stream_is_not_an_error_to_litellm(fp: FakeProvider) -> None:
    # truncate:after=0 ends a 200 event stream before any event: litellm 1.110.2 raises nothing and
    # makes up a finish_reason "stop" chunk, so the caller sees an empty, apparently finished answer.
    chunks = await collect(await complete(fp, "[[fail:truncate:after=0]] empty", stream=True))
    assert [c.choices[0].finish_reason for c in chunks if c.choices] == ["stop"]
    assert not any(c.choices[0].delta.content for c in chunks if c.choices)


@pytest.mark.parametrize(
    ("kind", "cause"),
    [("break", openai.APIConnectionError), ("truncate", json.JSONDecodeError), ("malformed", json.JSONDecodeError)],
)
async def test_stream_faults_break_a_plain_body(fp: FakeProvider, kind: str, cause: type[BaseException]) -> None:
    with pytest.raises(litellm.InternalServerError) as caught:
        await complete(fp, f"[[fail:{kind}]] plain {kind}")
    assert type(caught.value) is litellm.InternalServerError and caught.value.status_code == 500
    assert cause in context_chain(caught.value)
    assert fp.stats().by_status == {f"stream_{kind}": 1}


# -- the rpm/tpm quota -------------------------------------------------------------------


def ratelimit_headers(resp: Any) -> dict[str, str]:
    """The x-ratelimit-* headers litellm kept on a successful response, as litellm names them."""
    headers = resp._hidden_params["additional_headers"]
    return {k: v for k, v in headers.items() if "x-ratelimit" in k}


class HandClock:
    """A clock that moves only when a test moves it: the quota window passes without waiting for it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(fp: FakeProvider, monkeypatch: pytest.MonkeyPatch) -> HandClock:
    """The server's quota window on a hand-moved clock, for this test."""
    hand = HandClock()
    monkeypatch.setattr(fp.server, "clock", hand)
    return hand


async def test_rpm_quota_refuses_then_admits_after_retry_after(fp: FakeProvider, clock: HandClock) -> None:
    fp.configure(rpm_limit=5, window_s=1)
    fp.reset()
    outcomes: list[Any] = []
    for i in range(8):
        try:
            outcomes.append(await complete(fp, f"rpm {i}"))
        except litellm.RateLimitError as exc:
            outcomes.append(exc)
        clock.now += 0.01  # requests some time apart, as they come in real time
    assert [isinstance(o, litellm.RateLimitError) for o in outcomes] == [False] * 5 + [True] * 3
    for i, resp in enumerate(outcomes[:5]):
        headers = ratelimit_headers(resp)
        # litellm keeps every header prefixed "llm_provider-", and the limit/remaining ones bare too.
        assert headers["llm_provider-x-ratelimit-limit-requests"] == headers["x-ratelimit-limit-requests"] == "5"
        assert headers["llm_provider-x-ratelimit-remaining-requests"] == str(4 - i)
        assert headers["x-ratelimit-remaining-requests"] == str(4 - i)
        assert headers["llm_provider-x-ratelimit-reset-requests"] == "1s"
        assert "x-ratelimit-reset-requests" not in headers
        assert not any("tokens" in k for k in headers)  # no tpm_limit, no -tokens headers
    err = outcomes[-1]
    assert err.status_code == 429 and "on requests per min (RPM): Limit 5, Used 5" in str(err)
    retry_after = float(err.response.headers["retry-after"])
    assert 0 < retry_after <= 1.0
    assert err.response.headers["retry-after-ms"] == str(round(retry_after * 1000))
    raw = getattr(err, "litellm_response_headers", None)  # httpx.Headers of the 429, unprefixed
    assert raw is not None and raw["x-ratelimit-remaining-requests"] == "0"
    assert raw["x-ratelimit-limit-requests"] == "5" and raw["x-ratelimit-reset-requests"].endswith("ms")
    clock.now += retry_after
    resp = await complete(fp, "rpm after the wait")
    assert resp.choices[0].message.content == "other"
    assert fp.stats().by_status == {"200": 6, "429": 3, "quota_429": 3}


async def test_tpm_quota_charges_prompt_plus_max_tokens(fp: FakeProvider, clock: HandClock) -> None:
    probe = await complete(fp, "tpm probe")
    unbounded, charge = probe.usage.total_tokens, probe.usage.prompt_tokens + 20
    limit = unbounded + 2 * charge + charge // 2
    fp.configure(tpm_limit=limit, window_s=1)
    fp.reset()
    # Without max_tokens the charge is the prompt plus the completion actually produced...
    plain = await complete(fp, "tpm probe")
    assert ratelimit_headers(plain)["llm_provider-x-ratelimit-remaining-tokens"] == str(limit - unbounded)
    # ...and with it, the prompt plus max_tokens.
    first = await complete(fp, "tpm probe", max_tokens=20)
    assert ratelimit_headers(first)["x-ratelimit-remaining-tokens"] == str(limit - unbounded - charge)
    await complete(fp, "tpm probe", max_tokens=20)
    with pytest.raises(litellm.RateLimitError, match=r"on tokens per min \(TPM\)") as caught:
        await complete(fp, "tpm probe", max_tokens=20)
    headers = caught.value.response.headers
    assert headers["x-ratelimit-remaining-tokens"] == str(limit - unbounded - 2 * charge)
    assert "x-ratelimit-limit-requests" not in headers  # no rpm_limit, no -requests headers
    retry_after = float(headers["retry-after"])
    assert 0 < retry_after <= 1.0
    clock.now += retry_after
    await complete(fp, "tpm probe", max_tokens=20)
    assert fp.stats().tokens_charged == unbounded + 3 * charge
    # More than the whole limit can never fit: OpenAI's "Request too large", with no Retry-After.
    with pytest.raises(litellm.RateLimitError, match="Request too large") as caught:
        await complete(fp, "tpm probe", max_tokens=limit)
    assert "retry-after" not in caught.value.response.headers
    assert fp.stats().by_status == {"200": 4, "429": 2, "quota_429": 2}


@STREAM_WARNING
async def test_quota_headers_on_every_answer_and_reset(fp: FakeProvider) -> None:
    no_limit = await complete(fp, "no quota")
    assert ratelimit_headers(no_limit) == {}
    fp.configure(rpm_limit=3, tpm_limit=10_000)  # the default 60 s window
    stream = await complete(fp, "quota stream", stream=True, stream_options={"include_usage": True})
    await collect(stream)
    # On a stream, litellm keeps the headers on the wrapper, and all six bare as well as prefixed.
    streamed = ratelimit_headers(stream)
    assert streamed["x-ratelimit-remaining-requests"] == streamed["llm_provider-x-ratelimit-remaining-requests"] == "2"
    assert streamed["x-ratelimit-reset-requests"] == streamed["x-ratelimit-reset-tokens"] == "1m0s"
    with pytest.raises(litellm.InternalServerError) as caught:
        await complete(fp, "[[fail:500]] quota fault")
    assert caught.value.response.headers["x-ratelimit-remaining-requests"] == "1"
    await complete(fp, "quota third")
    with pytest.raises(litellm.RateLimitError):
        await complete(fp, "quota fourth")
    fp.reset()  # forgets the window too
    resp = await complete(fp, "quota after reset")
    assert ratelimit_headers(resp)["x-ratelimit-remaining-requests"] == "2"
