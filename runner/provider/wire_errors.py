"""The short way's failures, made as litellm makes them, so ``runner.provider.failures`` sees one set of exceptions.

An HTTP error answer becomes the openai SDK's error for its status, then what litellm's OpenAI handler
raises for it (``OpenAIError``); a transport failure the SDK's time-out or connection error. A stream
that breaks after its 200 becomes what litellm's stream wrapper raises (``CustomStreamWrapper``): its
exception mapping of the cause, wrapped in ``MidStreamFallbackError`` unless it is a 4xx other than 429.
The caller (``wire.Sender``) passes every one through litellm's ``exception_type``, as ``acompletion`` does.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any, Final

import httpx
import httpx2
import openai
from litellm.exceptions import MidStreamFallbackError
from litellm.litellm_core_utils.exception_mapping_utils import exception_type
from litellm.llms.openai.common_utils import OpenAIError, upstream_error_response

__all__ = ["litellm_error", "status_error", "stream_ended", "stream_failure", "transport_error"]

_STATUS_ERRORS: Final[dict[int, type[openai.APIStatusError]]] = {
    400: openai.BadRequestError,
    401: openai.AuthenticationError,
    403: openai.PermissionDeniedError,
    404: openai.NotFoundError,
    409: openai.ConflictError,
    422: openai.UnprocessableEntityError,
    429: openai.RateLimitError,
}


def status_error(status: int, headers: httpx2.Headers, raw: bytes, url: str) -> openai.APIStatusError:
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


def litellm_error(exc: Exception, cause: BaseException | None = None) -> OpenAIError:
    """What litellm's OpenAI chat handler raises for ``exc`` (``OpenAIChatCompletion.acompletion``); the
    SDK's error keeps the transport's underneath (``cause``), as the SDK raises it."""
    if cause is not None:
        exc.__cause__ = cause
    response = getattr(exc, "response", None)
    headers = getattr(exc, "headers", None) or getattr(response, "headers", None)
    status, message = getattr(exc, "status_code", 500), getattr(exc, "message", str(exc))
    return OpenAIError(status_code=status, message=message, response=upstream_error_response(exc), headers=headers,
                       body=getattr(exc, "body", None))  # fmt: skip


def transport_error(
    exc: httpx.HTTPError, url: str, seconds: float | None, started: float, streamed: bool = False
) -> OpenAIError:
    """A request that got no answer (httpx's error, as litellm's aiohttp transport maps aiohttp's): the
    SDK's time-out or connection error, as litellm's handler raises it (its ``__cause__``); litellm's
    streaming handler does not say how long a time-out took."""
    sdk: openai.APIConnectionError
    if isinstance(exc, httpx.TimeoutException):
        sdk = openai.APITimeoutError(request=httpx2.Request("POST", url))
        if not streamed:
            sdk.message += f" - timeout value={seconds}, time taken={round(time.time() - started, 2)} seconds"
    else:
        sdk = openai.APIConnectionError(request=httpx2.Request("POST", url))
    error = litellm_error(sdk, exc)
    error.__cause__ = sdk
    return error


def stream_ended() -> httpx.RemoteProtocolError:
    """What litellm's stream wrapper fails with when an OpenAI stream ends cleanly before any finish reason."""
    request = httpx.Request(method="POST", url="https://docs.litellm.ai/docs")
    return httpx.RemoteProtocolError("Stream ended before a finish_reason was received", request=request)


def stream_failure(exc: Exception, model: str, provider: str, started: bool, generated: str) -> Exception:
    """What litellm's stream wrapper raises when reading a stream fails with ``exc`` (its
    ``_handle_stream_fallback_error``): ``started`` says whether a chunk came, ``generated`` the text so far."""
    if isinstance(exc, OpenAIError):
        mapped: Exception = exc
    else:
        try:
            mapped = exception_type(model=model, custom_llm_provider=provider, original_exception=exc,
                                    completion_kwargs={}, extra_kwargs={})  # fmt: skip
        except Exception as raised:  # litellm's mapping raises what it maps to
            mapped = raised
    status = getattr(mapped, "status_code", None)
    timed_out = isinstance(exc, httpx.TimeoutException)
    if not timed_out and isinstance(status, int) and 400 <= status < 500 and status != 429:
        return mapped
    return MidStreamFallbackError(message=str(mapped), model=model, llm_provider=provider, original_exception=mapped,
                                  generated_content=generated, is_pre_first_chunk=not started)  # fmt: skip
