"""litellm's request building on the loop's own thread (``runner.provider.loop``), and the heap settings."""

from __future__ import annotations

import asyncio
import functools
import threading
from pathlib import Path

import litellm
import pytest

from runner.provider.loop import InlineDispatch, inline_dispatch
from runner.provider.provider import aclose
from tests.doubles.provider import FakeProvider
from tests.support.run import MODEL, run_rows, tickets


def _as_litellm_calls_it(model: str, **keywords: object) -> functools.partial[str]:
    """What litellm's acompletion hands to the default executor: partial(ctx.run, partial(completion, ...))."""

    def completion(**_: object) -> str:
        return threading.current_thread().name

    completion.__module__ = "litellm.main"
    import contextvars

    return functools.partial(contextvars.copy_context().run, functools.partial(completion, model=model, **keywords))


@pytest.mark.parametrize(
    ("model", "keywords", "inline"),
    [
        ("openai/gpt-4o-mini", {}, True),
        ("gpt-4o-mini", {"api_base": "http://127.0.0.1:9"}, True),
        ("some-model", {"custom_llm_provider": "hosted_vllm"}, True),
        ("anthropic/claude-3-5-sonnet-20241022", {}, True),
        ("vertex_ai/gemini-1.5-pro", {}, False),  # may refresh credentials over the network there
        ("bedrock/anthropic.claude-3", {}, False),
        ("no-such-provider/x", {}, False),  # litellm's error comes from the call itself, as before
    ],
)
def test_only_providers_that_build_requests_without_io_run_inline(
    model: str, keywords: dict[str, object], inline: bool
) -> None:
    pool = InlineDispatch(thread_name_prefix="test")
    try:
        ran_on = pool.submit(_as_litellm_calls_it(model, **keywords)).result(timeout=10)
    finally:
        pool.shutdown()
    assert (ran_on == threading.current_thread().name) is inline
    assert (pool.inline, pool.threaded) == ((1, 0) if inline else (0, 1))


def test_anything_else_still_goes_to_a_thread_and_errors_reach_the_caller() -> None:
    pool = InlineDispatch(thread_name_prefix="test")
    try:
        assert pool.submit(lambda: threading.current_thread().name).result(timeout=10).startswith("test")

        def fails(**_: object) -> None:
            raise ValueError("bad request")

        fails.__module__ = "litellm.main"
        future = pool.submit(functools.partial(lambda f: f(), functools.partial(fails, model="openai/x")))
        with pytest.raises(ValueError, match="bad request"):
            future.result(timeout=10)
    finally:
        pool.shutdown()
    assert pool.inline == 1 and pool.threaded == 1


async def test_litellm_builds_every_request_inline_over_real_http(provider: FakeProvider) -> None:
    dispatch = inline_dispatch()
    assert inline_dispatch() is dispatch  # once per loop
    try:
        asks = [[{"role": "user", "content": f"hi {i}"}] for i in range(5)]
        answers = await asyncio.gather(
            *(litellm.acompletion(model=MODEL, api_base=provider.url, api_key="sk-test", max_retries=0, messages=m)
              for m in asks)
        )  # fmt: skip
    finally:
        await aclose()
    assert all(a.choices[0].message.content for a in answers)
    assert dispatch.inline == 5 and provider.stats().total == 5


async def test_a_run_builds_its_requests_on_the_loop_thread(tmp_path: Path, provider: FakeProvider) -> None:
    done = await run_rows(tmp_path, provider, tickets(20))
    assert len(done.results) == 20
    assert inline_dispatch().inline == 20  # run() installed it on this loop; one request per row
