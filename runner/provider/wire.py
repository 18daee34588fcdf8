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

import asyncio
import functools
import json
import os
import time
import urllib.parse
import urllib.request
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

import aiohttp
import httpx
import httpx2
import litellm
import openai
import orjson
from litellm.litellm_core_utils.exception_mapping_utils import exception_type
from litellm.litellm_core_utils.llm_response_utils.convert_dict_to_response import convert_to_model_response_object
from litellm.llms.custom_httpx.aiohttp_transport import map_aiohttp_exceptions
from litellm.llms.openai.common_utils import OpenAIError, upstream_error_response
from litellm.llms.openai.openai import OpenAIUnknownModelConfig
from litellm.types.utils import ModelResponse, Usage

from runner.provider.prices import prices

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
_ALLOWED: Final = _PASSED | _CALL
_MESSAGE_KEYS: Final = frozenset({"role", "content", "name", "tool_calls", "tool_call_id"})
_STATUS_ERRORS: Final[dict[int, type[openai.APIStatusError]]] = {
    400: openai.BadRequestError,
    401: openai.AuthenticationError,
    403: openai.PermissionDeniedError,
    404: openai.NotFoundError,
    409: openai.ConflictError,
    422: openai.UnprocessableEntityError,
    429: openai.RateLimitError,
}


# litellm's configs for OpenAI chat that send the parameters above unchanged (an unknown name, as a vLLM
# server's, only adds reasoning_effort, which is not among them).
_PLAIN_CONFIGS: Final = (litellm.OpenAIGPTConfig, OpenAIUnknownModelConfig)


@functools.lru_cache(maxsize=1024)
def _openai_chat(model: str, provider: str | None) -> str | None:
    """The model name sent on the wire when litellm would send ``model`` through its plain OpenAI chat
    config (no parameter rewriting), else None."""
    try:
        name, found, *_ = litellm.get_llm_provider(model, custom_llm_provider=provider)
        config = litellm.ProviderConfigManager.get_provider_chat_config(name, litellm.LlmProviders(found))
    except Exception:
        return None
    if found != "openai" or type(config) not in _PLAIN_CONFIGS:
        return None  # o-series and GPT-5 configs rewrite max_tokens and temperature
    return name


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


def eligible(request: Mapping[str, Any]) -> str | None:
    """The wire model name when ``request`` can go the short way, else None (it goes through litellm)."""
    if request.get("stream") or not request.keys() <= _ALLOWED or not _plain(request.get("messages")):
        return None
    if litellm.ssl_verify is not True or litellm.headers or litellm.callbacks or litellm.success_callback:
        return None
    return _openai_chat(request["model"], request.get("custom_llm_provider"))


# One per event loop (the coordinator's, each Ray worker's, a test's); a loop that is gone takes its own.
_sessions: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aiohttp.ClientSession] = weakref.WeakKeyDictionary()


def _session() -> aiohttp.ClientSession:
    """This event loop's session: one connection pool, unlimited (runner's permits bound concurrency)."""
    loop = asyncio.get_running_loop()
    session = _sessions.get(loop)
    if session is None or session.closed:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
        # trust_env=False: aiohttp would otherwise look .netrc up in a thread for every request; proxies
        # come from the environment as litellm's transport reads them (``_proxy``).
        session = _sessions[loop] = aiohttp.ClientSession(connector=connector, json_serialize=None)  # type: ignore[arg-type]
    return session


@functools.lru_cache(maxsize=256)
def _proxy(url: str) -> str | None:
    """The proxy for a URL from HTTP(S)_PROXY/ALL_PROXY and NO_PROXY, read once per URL, as litellm does."""
    split = urllib.parse.urlsplit(url)
    scheme, host = split.scheme, split.hostname or ""
    if litellm.disable_aiohttp_trust_env or os.getenv("DISABLE_AIOHTTP_TRUST_ENV", "").lower() in ("true", "1"):
        return None
    if urllib.request.proxy_bypass(host):
        return None
    proxies = urllib.request.getproxies()
    proxy = proxies.get(scheme) or proxies.get("all")
    return f"http://{proxy}" if proxy and "://" not in proxy else proxy


async def aclose() -> None:
    """Close this event loop's session (the next call opens a new one)."""
    session = _sessions.pop(asyncio.get_running_loop(), None)
    if session is not None:
        await session.close()


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


class Sender:
    """A completion function: eligible requests sent straight to the server, the others to ``fallback``."""

    def __init__(self, fallback: Complete) -> None:
        self.fallback = fallback

    async def __call__(self, **request: Any) -> Any:
        name = eligible(request)
        if name is None:
            return await self.fallback(**request)
        try:
            return await _send(request, name)
        except Exception as exc:  # as litellm.acompletion does: its own mapping, from the SDK's error
            raise exception_type(model=request["model"], custom_llm_provider="openai", original_exception=exc,
                                 completion_kwargs={}, extra_kwargs={}) from exc  # fmt: skip


def _endpoint(request: Mapping[str, Any]) -> tuple[str, dict[str, str]]:
    """The URL and headers, from the request or where litellm looks for them (its globals, the environment)."""
    base = (request.get("api_base") or litellm.api_base or os.environ.get("OPENAI_BASE_URL")
            or os.environ.get("OPENAI_API_BASE") or "https://api.openai.com/v1")  # fmt: skip
    key = request.get("api_key") or litellm.api_key or litellm.openai_key or os.environ.get("OPENAI_API_KEY")
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    organization = litellm.organization or os.environ.get("OPENAI_ORGANIZATION")
    if organization:
        headers["OpenAI-Organization"] = organization
    return base.rstrip("/") + "/chat/completions", headers


async def _send(request: Mapping[str, Any], name: str) -> ModelResponse:
    """One POST; the answer as litellm's ModelResponse, or the error the openai SDK and litellm would raise."""
    url, headers = _endpoint(request)
    body = {k: v for k, v in request.items() if k in _PASSED}
    body["model"] = name
    timeout = request.get("timeout")
    seconds = float(timeout) if isinstance(timeout, int | float) else None
    limits = aiohttp.ClientTimeout(total=None, sock_connect=seconds, sock_read=seconds)
    started = time.time()
    try:
        with map_aiohttp_exceptions():  # aiohttp's errors as httpx's, as litellm's transport raises them
            post = _session().post(url, data=orjson.dumps(body), headers=headers, timeout=limits, proxy=_proxy(url))
            async with post as reply:
                status, raw, pairs = reply.status, await reply.read(), list(reply.headers.items())
    except httpx.TimeoutException as exc:
        timed_out = openai.APITimeoutError(request=httpx2.Request("POST", url))
        timed_out.message += f" - timeout value={seconds}, time taken={round(time.time() - started, 2)} seconds"
        raise _litellm_error(timed_out, exc) from timed_out
    except httpx.HTTPError as exc:
        lost = openai.APIConnectionError(request=httpx2.Request("POST", url))
        raise _litellm_error(lost, exc) from lost
    if status >= 400:
        refused = _status_error(status, httpx2.Headers(pairs), raw, url)
        raise _litellm_error(refused) from refused
    try:
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError:
            parsed = json.loads(raw)  # the SDK's parser, so a broken body fails with the same message
        response_headers = _lower(pairs)
        hidden = {
            "headers": response_headers,
            "response_cost": _cost(request["model"], orjson.dumps(parsed.get("usage"))),
        }
        return convert_to_model_response_object(response_object=parsed, model_response_object=ModelResponse(),
                                                hidden_params=hidden, _response_headers=response_headers)  # fmt: skip
    except Exception as exc:
        raise _litellm_error(exc) from exc


def _lower(pairs: list[tuple[str, str]]) -> dict[str, str]:
    """Response headers as litellm keeps them (``dict(httpx.Headers)``): lower-case names, repeats joined."""
    headers: dict[str, str] = {}
    for name, value in pairs:
        name = name.lower()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers


def _status_error(status: int, headers: httpx2.Headers, raw: bytes, url: str) -> openai.APIStatusError:
    """The openai SDK's error for an HTTP error answer (its ``_make_status_error_from_response``): the
    status and the error's own message in the text, the whole error object as its body."""
    response = httpx2.Response(status, headers=headers, content=raw, request=httpx2.Request("POST", url))
    text = raw.decode(errors="replace").strip()
    message = f"Error code: {status}"
    body: Any = text
    try:
        body = json.loads(text)
    except ValueError:
        pass
    else:
        error = body.get("error", body) if isinstance(body, Mapping) else None
        said = error.get("message") if isinstance(error, Mapping) else None
        if isinstance(said, str) and said:
            message += f" - {said}"
    data = body.get("error", body) if isinstance(body, Mapping) else body
    kind = _STATUS_ERRORS.get(status, openai.InternalServerError if status >= 500 else openai.APIStatusError)
    return kind(message, response=response, body=data)


def _litellm_error(exc: Exception, cause: BaseException | None = None) -> OpenAIError:
    """What litellm's OpenAI chat handler raises for ``exc`` (``OpenAIChatCompletion.acompletion``); the
    SDK's error keeps the transport's underneath (``cause``), as the SDK raises it."""
    if cause is not None:
        exc.__cause__ = cause
    response = getattr(exc, "response", None)
    headers = getattr(exc, "headers", None) or getattr(response, "headers", None)
    status, message = getattr(exc, "status_code", 500), getattr(exc, "message", str(exc))
    return OpenAIError(status_code=status, message=message, response=upstream_error_response(exc), headers=headers,
                       body=getattr(exc, "body", None))  # fmt: skip
