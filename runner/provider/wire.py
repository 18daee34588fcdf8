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

Which requests: chat to litellm's ``openai`` provider (``openai/...`` and any OpenAI-compatible
``--api-base``), ``hosted_vllm``, ``litellm_proxy`` and ``azure``, streamed or not, with only the parameters
litellm passes through unchanged for that model and plain-text messages; litellm's globals that would change
the call left at their defaults. Each answers and fails as litellm's handler for it does: the openai SDK's
(openai, litellm_proxy, whose answers litellm names "litellm_proxy/<model>"; azure, to the deployment's URL
with its API version and an ``api-key`` header, failing as litellm's Azure handler fails: ``wire_azure``) or
litellm's own HTTP handler (hosted_vllm: an error's whole body is its message, a body that is not JSON is not
retried, tools are sent only when litellm would not rewrite their schemas). An answer is priced as litellm
prices it: as the model the server named where litellm has a price for it, else as the model asked. Anything
else (other providers, the offline ``local/`` models, a reasoning model whose parameters litellm rewrites,
``service_tier``, extra headers, an Azure call litellm would authorise with Entra ID) goes to
``litellm.acompletion`` as before.
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
from litellm.cost_calculator import _select_model_name_for_cost_calc
from litellm.litellm_core_utils.exception_mapping_utils import exception_type
from litellm.litellm_core_utils.llm_response_utils.convert_dict_to_response import convert_to_model_response_object
from litellm.llms.custom_httpx.aiohttp_transport import map_aiohttp_exceptions
from litellm.llms.hosted_vllm.chat.transformation import HostedVLLMChatConfig
from litellm.llms.openai.openai import OpenAIUnknownModelConfig
from litellm.types.utils import ModelResponse, Usage

from runner.provider import wire_azure
from runner.provider.prices import prices
from runner.provider.wire_errors import (
    handler_error,
    handler_json_error,
    handler_status_error,
    handler_timeout,
    litellm_error,
    output_limit_answer,
    status_error,
    transport_error,
)
from runner.provider.wire_http import (
    Route,
    aclose,
    litellm_leaves_calls_alone,
    lowered,
    post,
    route,
    timeouts,
)
from runner.provider.wire_stream import WireStream

if TYPE_CHECKING:
    from runner.provider.provider import Complete

__all__ = ["Sender", "aclose", "eligible"]

# What litellm sends to an OpenAI-wire chat model exactly as given, when its config lists them as supported
# for the model (OpenAIGPTConfig passes them through; ``user`` only for OpenAI's own models).
_PARAMS: Final = frozenset({
    "temperature", "top_p", "n", "stop", "max_tokens", "max_completion_tokens", "presence_penalty",
    "frequency_penalty", "logit_bias", "user", "seed", "tools", "tool_choice", "response_format", "logprobs",
    "top_logprobs", "parallel_tool_calls",
})  # fmt: skip
_SENT: Final = frozenset({"messages", "model"})
# What runner adds to every call, for litellm rather than for the provider.
_CALL: Final = frozenset({"timeout", "max_retries", "api_base", "api_key", "custom_llm_provider", "api_version"})
_STREAM: Final = frozenset({"stream", "stream_options"})  # sent as given too, when the request streams
_ALLOWED: Final = _PARAMS | _SENT | _CALL | _STREAM
_MESSAGE_KEYS: Final = frozenset({"role", "content", "name", "tool_calls", "tool_call_id"})


# litellm's configs for OpenAI-wire chat that send the parameters above unchanged, by provider (for OpenAI, an
# unknown name, as a vLLM server's, only adds reasoning_effort, which is not among them; hosted_vllm's rewrites
# tools, which ``_tools_as_given`` checks; azure's some parameters by API version, which ``wire_azure`` checks).
_PLAIN_CONFIGS: Final[dict[str, tuple[type, ...]]] = {
    "openai": (litellm.OpenAIGPTConfig, OpenAIUnknownModelConfig),
    "hosted_vllm": (HostedVLLMChatConfig,),
    "litellm_proxy": (litellm.LiteLLMProxyChatConfig,),
    "azure": (litellm.AzureOpenAIConfig,),
}


@functools.lru_cache(maxsize=1024)
def _openai_chat(model: str, provider: str | None) -> tuple[str, str, frozenset[str]] | None:
    """The model name sent on the wire, litellm's provider and the request keys it sends as given, when
    litellm would send ``model`` through a plain OpenAI-wire chat config (no parameter rewriting), else None."""
    try:
        name, found, *_ = litellm.get_llm_provider(model, custom_llm_provider=provider)
        config = litellm.ProviderConfigManager.get_provider_chat_config(name, litellm.LlmProviders(found))
        if config is None or type(config) not in _PLAIN_CONFIGS.get(found, ()):
            return None  # o-series and GPT-5 configs rewrite max_tokens and temperature
        supported = frozenset(config.get_supported_openai_params(name))
    except Exception:
        return None
    return name, found, (_PARAMS & supported) | _SENT | _CALL | _STREAM


def _plain(messages: Any) -> bool:
    """Messages litellm passes through as they are: text content, no parts to fetch or convert."""
    if not isinstance(messages, list) or not messages:
        return False
    for message in messages:
        if not isinstance(message, dict) or not message.keys() <= _MESSAGE_KEYS:
            return False
        content, calls, role = message.get("content"), message.get("tool_calls"), message.get("role")
        if content is not None and not isinstance(content, str):
            return False
        if not role or not isinstance(role, str):
            return False  # litellm would make it "assistant"
        if calls is not None and not (isinstance(calls, list) and all(isinstance(c, dict) for c in calls)):
            return False
    return True


def _sent(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages as litellm sends them: without the fields set to None (``validate_and_fix_openai_messages``)."""
    if not any(None in m.values() for m in messages):
        return messages
    return [{k: v for k, v in m.items() if v is not None} for m in messages]


def _tools_as_given(tools: Any) -> bool:
    """Tools litellm's hosted_vllm config sends as given: function tools with no ``strict`` and no
    ``additionalProperties: false`` anywhere in them (it deletes both, wherever they are)."""
    if not isinstance(tools, list) or not all(isinstance(t, dict) and t.get("type") == "function" for t in tools):
        return False
    try:
        dumped = orjson.dumps(tools)
    except TypeError:
        return False
    return b'"strict":' not in dumped and b'"additionalProperties":false' not in dumped


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
    if found is None or not request.keys() <= found[2]:
        return None  # a parameter litellm drops for this model, or refuses: its way
    if found[1] == "hosted_vllm" and "tools" in request and not _tools_as_given(request["tools"]):
        return None
    if "api_version" in request and found[1] != "azure":
        return None
    to = route(request, found[0], found[1])
    if to is not None and to.version is not None and not wire_azure.params_as_given(request, to.name, to.version):
        return None
    return to


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


@functools.lru_cache(maxsize=1024)
def _priced_as(name: str, served: str | None, provider: str) -> str | None:
    """The model litellm prices an answer as (``_select_model_name_for_cost_calc``): the one the server named
    where litellm has a price for it (an Azure deployment's model, OpenAI's dated names), else the one asked."""
    try:
        answer = {"model": served} if served else None
        return _select_model_name_for_cost_calc(model=name, completion_response=answer, custom_llm_provider=provider)
    except Exception:
        return None


@functools.lru_cache(maxsize=65536)
def _cost(model: str | None, usage: bytes) -> float | None:
    """What litellm prices an answer with this usage at (``cost_per_token``), or None if it has no price."""
    known = prices(model) if model else None
    if known is None:
        return None
    try:
        return float(sum(litellm.cost_per_token(model=model, usage_object=Usage(**orjson.loads(usage)))))
    except Exception:
        return None


async def _open(url: str, body: bytes, to: Route, limits: aiohttp.ClientTimeout) -> aiohttp.ClientResponse:
    with map_aiohttp_exceptions():  # aiohttp's errors as httpx's, as litellm's transport raises them
        reply: aiohttp.ClientResponse = await post(url, body, to.headers(), limits)
        return reply


async def _post(request: Mapping[str, Any], to: Route) -> tuple[aiohttp.ClientResponse, str, float]:
    """The chat request sent: its response once its status and headers came (the caller releases it), its URL
    and when it was sent. An HTTP error answer raises the error litellm's handler would."""
    url = to.url("/chat/completions")
    body = {k: v for k, v in request.items() if k in _PARAMS or k in _STREAM}
    body["model"], body["messages"] = to.name, _sent(request["messages"])
    data = orjson.dumps(body)
    seconds, limits = timeouts(request)
    started = time.time()
    try:
        try:
            reply = await _open(url, data, to, limits)
        except httpx.ConnectError:
            if to.sdk:
                raise
            # litellm's HTTP client tries a connection that failed once more, on a new client, and whatever that
            # raises goes to its handler as it is (a time-out too).
            try:
                reply = await _open(url, data, to, limits)
            except httpx.HTTPError as again:
                raise handler_error(again) from again
        if reply.status >= 400:
            async with reply:
                with map_aiohttp_exceptions():
                    raw, pairs = await reply.read(), list(reply.headers.items())
            if to.sdk and reply.status == 400 and not request.get("stream"):
                made = output_limit_answer(body, pairs, raw, url)
                if made is not None:
                    raise _Answered(*made)
            raise _refused(to, reply.status, pairs, raw, url, bool(request.get("stream")))
    except httpx.HTTPError as exc:
        lost = _lost(exc, to, url, seconds, started, bool(request.get("stream")))
        raise lost from lost.__cause__
    return reply, url, started


def _refused(to: Route, status: int, pairs: list[tuple[str, str]], raw: bytes, url: str, streamed: bool) -> Exception:
    """What litellm's handler for ``to`` raises for an HTTP error answer."""
    if not to.sdk:
        return handler_status_error(status, pairs, raw, url)
    refused = status_error(status, httpx2.Headers(pairs), raw, url)
    if to.provider == "azure":
        return wire_azure.refused(refused, streamed)
    error = litellm_error(refused)
    error.__cause__ = refused
    return error


def _lost(
    exc: httpx.HTTPError, to: Route, url: str, seconds: float | None, started: float, streamed: bool
) -> Exception:
    """What litellm's handler for ``to`` raises for a request that got no (whole) answer, its cause kept below."""
    if to.provider == "azure":
        return wire_azure.lost(exc, url, seconds, started, streamed)
    if to.sdk:
        return transport_error(exc, url, seconds, started, streamed=streamed)
    cause: Exception = exc
    if isinstance(exc, httpx.TimeoutException):
        cause = handler_timeout(exc, seconds, started)
        cause.__cause__ = exc
    error = handler_error(cause)
    error.__cause__ = cause
    return error


def _json(raw: bytes) -> Any:
    """The answer read with orjson, or with ``json`` (the SDK's and litellm's parser) where orjson refuses it,
    so a body that is not JSON fails with the same message."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)


class _Answered(Exception):
    """An answer litellm's handler makes of a refusal (``wire_errors.output_limit_answer``), and its headers."""

    def __init__(self, parsed: dict[str, Any], pairs: list[tuple[str, str]]) -> None:
        super().__init__("answered by litellm's handler")
        self.parsed, self.pairs = parsed, pairs


async def _send(request: Mapping[str, Any], to: Route) -> ModelResponse:
    """One POST; the answer as litellm's ModelResponse, or the error litellm's handler would raise."""
    try:
        reply, url, started = await _post(request, to)
    except _Answered as made:
        return _converted(made.parsed, made.pairs, to)
    seconds, _ = timeouts(request)
    try:
        with map_aiohttp_exceptions():
            async with reply:
                raw, pairs = await reply.read(), list(reply.headers.items())
    except httpx.HTTPError as exc:
        lost = _lost(exc, to, url, seconds, started, False)
        raise lost from lost.__cause__
    try:
        parsed = _json(raw)
    except ValueError as exc:
        if to.provider == "azure":
            raise wire_azure.not_json(exc) from exc
        if to.sdk:
            raise litellm_error(exc) from exc
        raise handler_json_error(exc, reply.status, pairs, raw) from exc
    return _converted(parsed, pairs, to)


def _converted(parsed: Any, pairs: list[tuple[str, str]], to: Route) -> ModelResponse:
    """The provider's answer as litellm's ModelResponse, priced as litellm prices it."""
    try:
        response_headers = lowered(pairs)
        response = ModelResponse()
        response.model = to.answered_as  # litellm's OpenAI handler names another provider's answers after it
        answer = convert_to_model_response_object(response_object=parsed, model_response_object=response,
                                                  hidden_params={"headers": response_headers},
                                                  _response_headers=response_headers)  # fmt: skip
        priced_as = _priced_as(to.name, getattr(answer, "model", None), to.provider)
        answer._hidden_params["response_cost"] = _cost(priced_as, orjson.dumps(parsed.get("usage")))
        return answer
    except Exception as exc:
        if not to.sdk:
            raise  # litellm's HTTP handler lets its converter's error through
        raise (wire_azure.not_json(exc) if to.provider == "azure" else litellm_error(exc)) from exc


async def _stream(request: Mapping[str, Any], to: Route) -> WireStream:
    """One streamed POST: its chunks, read as the caller asks for them."""
    reply, url, _ = await _post(request, to)
    # litellm's stream wrapper: the OpenAI handler's names every stream's chunks "<provider>/<model>" for a provider
    # other than OpenAI and maps its failures as OpenAI's; the HTTP handler's, the name sent and its provider's.
    # The HTTP handler's bills the answer only at a price litellm has for the model as asked.
    model, provider = (to.answered_as or to.name, "openai") if to.sdk else (to.name, to.provider)
    if to.provider == "azure":  # litellm's Azure handler: the deployment's name, mapped as azure's
        model, provider = to.name, "azure"
    stamped = to.sdk or prices(request["model"]) is not None
    headers = lowered(list(reply.headers.items()))
    return WireStream(reply, model, provider, url, headers, sdk=to.sdk, stamped=stamped)
