"""Which OpenAI-wire providers go the short way: openai/ (and any --api-base); hosted_vllm/, litellm_proxy/ and
azure/ stay on litellm, because their records would not be the same (runner/provider/wire.py says why: litellm
makes hosted_vllm's errors with their whole body, names litellm_proxy's answers "litellm_proxy/<model>", and
azure has its own URL shape). ``test_they_would_differ`` keeps that reason true: the day it fails, they can go.
"""

from __future__ import annotations

from typing import Any

import pytest

from runner.provider import wire
from runner.provider.provider import acompletion
from tests.doubles.provider import FakeProvider
from tests.support.wire import TOOLS, caller_with, comparable, send_all, user_turn

ROWS: list[tuple[str, dict[str, Any]]] = [
    ("plain", {"messages": user_turn("my invoice is wrong")}),
    ("rate_limited", {"messages": user_turn("billing [[fail:429:retry_after=0.25:times=1]]")}),
    ("server_error", {"messages": user_turn("billing [[fail:500:times=1]]")}),
    ("dropped", {"messages": user_turn("billing [[fail:drop:times=1]]")}),
    ("cut_off", {"messages": user_turn("billing [[fail:break:after=2:times=1]]")}),
    ("bad_request", {"messages": user_turn("billing [[fail:400]]")}),
]


def _untimed(outcome: Any) -> Any:
    line = comparable(outcome)
    if isinstance(line, dict):
        line["meta"].pop("ttft_s", None)
        line["meta"].pop("output_tokens_per_s", None)
    return line


@pytest.mark.parametrize(
    ("request_", "short"),
    [
        ({"model": "openai/m", "api_base": "http://127.0.0.1:1/v1"}, True),
        ({"model": "hosted_vllm/m", "api_base": "http://127.0.0.1:1/v1"}, False),
        ({"model": "hosted_vllm/m", "api_base": "http://127.0.0.1:1/v1", "tools": TOOLS}, False),
        ({"model": "litellm_proxy/m", "api_base": "http://127.0.0.1:1/v1", "api_key": "sk-1"}, False),
        ({"model": "azure/gpt-4o-mini", "api_base": "http://127.0.0.1:1", "api_key": "k"}, False),  # litellm's
    ],
)
def test_which_providers_go_the_short_way(request_: dict[str, Any], short: bool) -> None:
    request = {"timeout": 5.0, "max_retries": 0, "messages": user_turn("x"), **request_}
    assert (wire.eligible(request) is not None) is short


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


async def test_they_would_differ(provider: FakeProvider, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through litellm: hosted_vllm's 400 carries the error body in its message, litellm_proxy's answer is
    named after the route, unlike openai/'s (which the short way reproduces)."""
    monkeypatch.setenv("LITELLM_PROXY_API_KEY", "sk-proxy")
    seen = {}
    for prefix, text in (("hosted_vllm", "billing [[fail:400]]"), ("litellm_proxy", "billing"), ("openai", "x")):
        request = {**ROWS[0][1], "messages": user_turn(text), "model": f"{prefix}/gpt-4o-mini"}
        seen[prefix] = (await send_all(caller_with(provider.url, acompletion, []), [("r", request)]))["r"].line
    assert seen["hosted_vllm"]["error"]["message"].count('"invalid_request_error"') == 1
    assert seen["litellm_proxy"]["response"]["body"]["model"] == "litellm_proxy/gpt-4o-mini"
    assert seen["openai"]["response"]["body"]["model"] == "gpt-4o-mini"
