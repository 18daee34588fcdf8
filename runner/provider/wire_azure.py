"""``azure/`` the short way: where litellm sends an Azure OpenAI chat request, and what it fails with.

litellm sends ``azure/<deployment>`` through the openai SDK's ``AsyncAzureOpenAI`` (``AzureChatCompletion``):
``<api_base>/openai/deployments/<deployment>/chat/completions?api-version=<version>`` with the key in an
``api-key`` header, the server, key and version found in the call, litellm's globals and the ``AZURE_*``
variables (``main._complete_azure``). The body is OpenAI's, but ``AzureOpenAIConfig`` rewrites some
parameters by API version (``tool_choice`` refused before 2023-12-01, ``"required"`` before 2024-06, a
``response_format`` turned into a tool where the version or model lacks it), ``max_tokens`` for the
reasoning families, and tool schemas (``sanitized_tools_update``): a request it would change goes
through litellm. So does one litellm would authorise with an Entra ID token (``AZURE_AD_TOKEN``, a user
and password) or send elsewhere (the v1 API versions, a ``base_url`` naming the deployment, Cloudflare's
gateway).

Its failures: an HTTP error answer is the SDK's error for that status, raised as it is; anything else
(a time-out, with how long it took, a lost connection, an answer that is not JSON) an ``AzureOpenAIError``
of status 500 (``AzureChatCompletion.acompletion``); a stream's failure to start is always an
``AzureOpenAIError`` (``async_streaming``). ``wire.Sender`` then maps each with ``exception_type`` for
``azure``, as ``acompletion`` does ("AzureException …").
"""

from __future__ import annotations

import functools
import os
import re
import time
from collections.abc import Mapping
from typing import Any, Final

import httpx
import httpx2
import litellm
import openai
import orjson
from litellm.llms.azure.chat.gpt_transformation import sanitized_tools_update
from litellm.llms.azure.common_utils import AzureOpenAIError
from litellm.llms.openai.common_utils import upstream_error_response

__all__ = ["lost", "not_json", "params_as_given", "refused", "route_parts"]

_CONFIG: Final = litellm.AzureOpenAIConfig()
_V1: Final = frozenset({"preview", "latest", "v1"})  # litellm sends these to <base>/openai/v1 with the plain SDK
_DEPLOYMENT: Final = re.compile(r"[A-Za-z0-9._-]+")  # a name the SDK puts in the URL as it is
# Entra ID credentials litellm would add to a call that has a key (a user and password), or use in its place.
_ENTRA: Final = ("AZURE_AD_TOKEN", "AZURE_USERNAME")


def _env(*names: str) -> str | None:
    return next((os.environ[v] for v in names if os.environ.get(v)), None)


def route_parts(request: Mapping[str, Any], name: str, embeddings: bool = False) -> tuple[str, str, str] | None:
    """The server, key and API version litellm would send ``azure/<name>`` with (chat, or ``embeddings``), or None
    when it would send it otherwise than with a key to the deployment's URL (see the module docstring)."""
    if any(os.environ.get(v) for v in _ENTRA) or not _DEPLOYMENT.fullmatch(name):
        return None
    base = request.get("api_base") or litellm.api_base or _env("AZURE_API_BASE")
    key = request.get("api_key") or litellm.api_key or litellm.azure_key
    if embeddings:  # ``main.embedding`` reads AZURE_API_KEY alone; the SDK, given no key, an Entra ID token first
        key = key or os.environ.get("AZURE_API_KEY")
        if key is None and "AZURE_OPENAI_AD_TOKEN" not in os.environ:
            key = os.environ.get("AZURE_OPENAI_API_KEY")
    else:  # ``main._complete_azure``
        key = key or _env("AZURE_OPENAI_API_KEY", "AZURE_API_KEY")
    version = (request.get("api_version") or litellm.api_version or _env("AZURE_API_VERSION")
               or litellm.AZURE_DEFAULT_API_VERSION)  # fmt: skip
    if not base or not key or not isinstance(version, str) or version in _V1:
        return None
    if "/openai/deployments" in base or "gateway.ai.cloudflare.com" in base:
        return None
    return base, key, version


def _dated(version: str) -> tuple[str, str, str] | None:
    """An API version's year, month and day as litellm reads them (None: it reads none)."""
    parts = version.split("-")
    return (parts[0], parts[1], parts[2]) if len(parts) >= 3 else None


def params_as_given(request: Mapping[str, Any], name: str, version: str) -> bool:
    """Whether ``AzureOpenAIConfig`` sends the request's parameters as they are for this model and API version."""
    date = _dated(version)
    if "max_tokens" in request and _CONFIG.requires_max_completion_tokens(name):
        return False
    if "tool_choice" in request:
        if not request.get("tools"):
            return False  # litellm leaves it out
        if date is not None and (date < ("2023", "12", "01") or (
                request["tool_choice"] == "required" and date[0] == "2024" and date[1] <= "05")):  # fmt: skip
            return False  # litellm refuses it, or drops it
    response_format = request.get("response_format")
    if isinstance(response_format, dict):
        supported = _CONFIG._is_response_format_supported_model(name) and (
            date is None or _CONFIG._is_response_format_supported_api_version(date[0], date[1])
        )
        if not supported:
            return False  # litellm makes it a tool, or drops it
    tools = request.get("tools")
    if tools is not None:
        try:
            return _tools_as_given(orjson.dumps(tools))
        except TypeError:
            return False
    return True


@functools.lru_cache(maxsize=256)
def _tools_as_given(dumped: bytes) -> bool:
    """Tools whose schemas litellm's Azure config sends unchanged (it flattens combinators, drops some patterns)."""
    tools = orjson.loads(dumped)
    return bool(sanitized_tools_update({"tools": tools}).get("tools") == tools)


def refused(error: openai.APIStatusError, streamed: bool) -> Exception:
    """An HTTP error answer: litellm's Azure handler lets the SDK's error through as it is, but for a stream."""
    if not streamed:
        return error
    wrapped = _wrapped(error, True)
    wrapped.__cause__ = error
    return wrapped


def lost(exc: httpx.HTTPError, url: str, seconds: float | None, started: float, streamed: bool) -> AzureOpenAIError:
    """A request that got no (whole) answer: the SDK's time-out (saying how long it took) or connection error,
    made an ``AzureOpenAIError`` as litellm's Azure handler makes it."""
    sdk: openai.APIConnectionError
    if isinstance(exc, httpx.TimeoutException):
        sdk = openai.APITimeoutError(request=httpx2.Request("POST", url))
        sdk.message += f" - timeout value={seconds}, time taken={round(time.time() - started, 2)} seconds"
    else:
        sdk = openai.APIConnectionError(request=httpx2.Request("POST", url))
    sdk.__cause__ = exc
    error = _wrapped(sdk, streamed)
    error.__cause__ = sdk
    return error


def not_json(exc: Exception) -> AzureOpenAIError:
    """An answer the SDK could not read (or litellm could not convert), as litellm's Azure handler wraps it."""
    error = _wrapped(exc, False)
    error.__cause__ = exc
    return error


def _wrapped(exc: Exception, streamed: bool) -> AzureOpenAIError:
    message = getattr(exc, "message", str(exc))
    if not streamed:  # ``acompletion``: a status of 500, the message and body
        return AzureOpenAIError(status_code=500, message=message, body=getattr(exc, "body", None))
    response = getattr(exc, "response", None)
    headers = getattr(exc, "headers", None) or getattr(response, "headers", None)
    return AzureOpenAIError(status_code=getattr(exc, "status_code", 500), message=message,
                            response=upstream_error_response(exc), headers=headers,
                            body=getattr(exc, "body", None))  # fmt: skip
