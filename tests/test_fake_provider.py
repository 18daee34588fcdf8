"""Checks the fake provider through litellm's real HTTP path, the way the runner calls it."""

from __future__ import annotations

import os

# Must be set before litellm is imported: no network fetches, no dev-mode .env loading.
os.environ["LITELLM_OFFLINE_MODE"] = "true"
os.environ["LITELLM_MODE"] = "PRODUCTION"

import asyncio
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

from tests.fake_provider import FakeProvider, FaultConfig, classify, count_tokens, parse_directives, truncate_to_tokens

litellm.suppress_debug_info = True

# litellm's first call lazily imports a module whose pydantic TypedDicts warn on import.
pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.filterwarnings("ignore:Items? .* the `ReadOnly` qualifier:UserWarning"),
]

MODEL = "openai/gpt-4o-mini"


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


# litellm's stream handler reads pydantic's deprecated instance attributes (model_fields...)
# when a usage chunk arrives; under -W error it would turn that into MidStreamFallbackError.
@pytest.mark.filterwarnings("ignore:Accessing the 'model_.*' attribute on the instance:DeprecationWarning")
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
