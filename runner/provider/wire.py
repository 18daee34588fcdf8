"""The short way to an OpenAI-wire server: one aiohttp POST, orjson, and litellm's own types around it.

``litellm.acompletion`` spends ~3.5 ms of CPU per call on an OpenAI-compatible server, most of it
building the request in layers of model objects, the openai SDK over httpx, pricing every answer
inline and queueing a logging payload (bench/RESULTS.md, "Close to the wire"). For the requests
where none of that changes what is sent or what comes back, ``Sender`` sends the JSON itself and
hands back what litellm would have: a ``ModelResponse`` made by litellm's own converter from the
provider's JSON, its headers where litellm puts them, the cost from ``runner.provider.prices`` (litellm's
``cost_per_token`` on the same usage, remembered per usage), and on failure the exception litellm
raises, made by litellm's own mapping (``exception_type``) from the openai SDK's error for that
status. So ``runner.provider.failures`` classifies one set of exceptions, and a record is the same
whichever way its request went (tests/test_wire.py sends the same rows both ways).

Which requests: non-streaming chat to litellm's ``openai`` provider (``openai/...`` and any
OpenAI-compatible ``--api-base``), with only the parameters litellm passes through unchanged and
plain-text messages; litellm's globals that would change the call left at their defaults. Anything
else (streaming, other providers, the offline ``local/`` models, a reasoning model whose parameters
litellm rewrites, ``service_tier``, extra headers) goes to ``litellm.acompletion`` as before.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

import aiohttp
import httpx
import httpx2
import litellm
import orjson
from litellm.litellm_core_utils.exception_mapping_utils import exception_type
from litellm.litellm_core_utils.llm_response_utils.convert_dict_to_response import convert_to_model_response_object
from litellm.llms.custom_httpx.aiohttp_transport import map_aiohttp_exceptions
from litellm.llms.openai.openai import OpenAIUnknownModelConfig
from litellm.types.utils import ModelResponse, Usage

from runner.provider.prices import prices
from runner.provider.wire_errors import litellm_error, status_error, transport_error
from runner.provider.wire_http import (
    Route,
    aclose,
    litellm_leaves_calls_alone,
    lowered,
    proxy,
    route,
    session,
    timeouts,
)
from runner.provider.wire_stream import WireStream

if TYPE_CHECKING:
    from runner.provider.provider import Complete

__all__ = ["Sender", "aclose", "eligible"]

# What litellm sends to an OpenAI chat model exactly as given (its OpenAIGPTConfig passes them through).
_PASSED: Final = frozenset({
    "messages", "model", "temperature", "top_p", "n", "stop", "max_tokens", "max_completion_tokens",
    "presence_penalty", "frequency_penalty", "logit_bias", "user", "seed", "tools", "tool_choice",
    "response_format", "logprobs", "top_logprobs", "parallel_tool_calls",
})  # fmt: skip
# What runner adds to every call, for litellm rather than for the provider.
_CALL: Final = frozenset({"timeout", "max_retries", "api_base", "api_key", "custom_llm_provider"})
_STREAM: Final = frozenset({"stream", "stream_options"})  # sent as given too, when the request streams
_ALLOWED: Final = _PASSED | _CALL | _STREAM
_MESSAGE_KEYS: Final = frozenset({"role", "content", "name", "tool_calls", "tool_call_id"})


# litellm's configs for OpenAI-wire chat that send the parameters above unchanged, by provider (for OpenAI, an
# unknown name, as a vLLM server's, only adds reasoning_effort, which is not among them). Not here, so through
# litellm, because their records would differ (tests/test_wire_providers.py): hosted_vllm/ goes through
# litellm's own HTTP handler, whose error messages carry the whole error body, and rewrites tools' schemas;
# litellm_proxy/ answers say "litellm_proxy/<model>" as their model; azure/ has its own URL, api-version and
# api-key header.
_PLAIN_CONFIGS: Final[dict[str, tuple[type, ...]]] = {"openai": (litellm.OpenAIGPTConfig, OpenAIUnknownModelConfig)}


@functools.lru_cache(maxsize=1024)
def _openai_chat(model: str, provider: str | None) -> tuple[str, str] | None:
    """The model name sent on the wire and litellm's provider, when litellm would send ``model`` through a
    plain OpenAI-wire chat config (no parameter rewriting), else None."""
    try:
        name, found, *_ = litellm.get_llm_provider(model, custom_llm_provider=provider)
        config = litellm.ProviderConfigManager.get_provider_chat_config(name, litellm.LlmProviders(found))
    except Exception:
        return None
    if type(config) not in _PLAIN_CONFIGS.get(found, ()):
        return None  # o-series and GPT-5 configs rewrite max_tokens and temperature
    return name, found


def _plain(messages: Any) -> bool:
    """Messages litellm passes through as they are: text content, no parts to fetch or convert."""
    if not isinstance(messages, list) or not messages:
        return False
    for message in messages:
        if not isinstance(message, dict) or not message.keys() <= _MESSAGE_KEYS:
            return False
        content = message.get("content")
        if content is not None and not isinstance(content, str):
            return False
    return True


def _streamed(request: Mapping[str, Any]) -> bool:
    """Not streamed, or streamed as runner asks for every stream: ``stream=True`` with the usage chunk."""
    stream, options = request.get("stream"), request.get("stream_options")
    if not stream:
        return stream in (None, False) and options is None
    return stream is True and options == {"include_usage": True}


def eligible(request: Mapping[str, Any]) -> Route | None:
    """Where ``request`` goes when it can go the short way, else None (it goes through litellm)."""
    if not request.keys() <= _ALLOWED or not _plain(request.get("messages")) or not _streamed(request):
        return None
    if not litellm_leaves_calls_alone():
        return None
    found = _openai_chat(request["model"], request.get("custom_llm_provider"))
    if found is None or (found[1] == "hosted_vllm" and "tools" in request):
        return None
    return route(request, *found)


class Sender:
    """A completion function: eligible requests sent straight to the server, the others to ``fallback``."""

    def __init__(self, fallback: Complete) -> None:
        self.fallback = fallback

    async def __call__(self, **request: Any) -> Any:
        to = eligible(request)
        if to is None:
            return await self.fallback(**request)
        try:
            return await (_stream(request, to) if request.get("stream") else _send(request, to))
        except Exception as exc:  # as litellm.acompletion does: its own mapping, from the SDK's error
            raise exception_type(model=request["model"], custom_llm_provider=to.provider, original_exception=exc,
                                 completion_kwargs={}, extra_kwargs={}) from exc  # fmt: skip


@functools.lru_cache(maxsize=65536)
def _cost(model: str, usage: bytes) -> float | None:
    """What litellm prices an answer with this usage at (``cost_per_token``), or None if it has no price."""
    known = prices(model)
    if known is None:
        return None
    try:
        return float(sum(litellm.cost_per_token(model=model, usage_object=Usage(**orjson.loads(usage)))))
    except Exception:
        return None


async def _post(request: Mapping[str, Any], to: Route) -> tuple[aiohttp.ClientResponse, str, float]:
    """The chat request sent: its response once its status and headers came (the caller releases it), its URL
    and when it was sent. An HTTP error answer raises the error litellm's handler would."""
    url, headers = to.url("/chat/completions"), to.headers()
    body = {k: v for k, v in request.items() if k in _PASSED or k in _STREAM}
    body["model"] = to.name
    seconds, limits = timeouts(request)
    started = time.time()
    try:
        with map_aiohttp_exceptions():  # aiohttp's errors as httpx's, as litellm's transport raises them
            reply = await session().post(url, data=orjson.dumps(body), headers=headers, timeout=limits,
                                         proxy=proxy(url))  # fmt: skip
            if reply.status >= 400:
                async with reply:
                    raw, pairs = await reply.read(), list(reply.headers.items())
                refused = status_error(reply.status, httpx2.Headers(pairs), raw, url)
                raise litellm_error(refused) from refused
    except httpx.HTTPError as exc:
        lost = transport_error(exc, url, seconds, started, streamed=bool(request.get("stream")))
        raise lost from lost.__cause__
    return reply, url, started


async def _send(request: Mapping[str, Any], to: Route) -> ModelResponse:
    """One POST; the answer as litellm's ModelResponse, or the error the openai SDK and litellm would raise."""
    reply, url, started = await _post(request, to)
    seconds, _ = timeouts(request)
    try:
        with map_aiohttp_exceptions():
            async with reply:
                raw, pairs = await reply.read(), list(reply.headers.items())
    except httpx.HTTPError as exc:
        lost = transport_error(exc, url, seconds, started)
        raise lost from lost.__cause__
    try:
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError:
            parsed = json.loads(raw)  # the SDK's parser, so a broken body fails with the same message
        response_headers = lowered(pairs)
        hidden = {
            "headers": response_headers,
            "response_cost": _cost(request["model"], orjson.dumps(parsed.get("usage"))),
        }
        return convert_to_model_response_object(response_object=parsed, model_response_object=ModelResponse(),
                                                hidden_params=hidden, _response_headers=response_headers)  # fmt: skip
    except Exception as exc:
        raise litellm_error(exc) from exc


async def _stream(request: Mapping[str, Any], to: Route) -> WireStream:
    """One streamed POST: its chunks, read as the caller asks for them."""
    reply, url, _ = await _post(request, to)
    return WireStream(reply, to.name, to.provider, url, lowered(list(reply.headers.items())))
