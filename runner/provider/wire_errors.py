"""The short way's failures, made as litellm makes them, so ``runner.provider.failures`` sees one set of exceptions.

An HTTP error answer becomes the openai SDK's error for its status, then what litellm's OpenAI handler
raises for it (``OpenAIError``); a transport failure the SDK's time-out or connection error. A stream
that breaks after its 200 becomes what litellm's stream wrapper raises (``CustomStreamWrapper``): its
exception mapping of the cause, wrapped in ``MidStreamFallbackError`` unless it is a 4xx other than 429.
The caller (``wire.Sender``) passes every one through litellm's ``exception_type``, as ``acompletion`` does.
An embeddings request's failure is made as litellm's OpenAI embedding handler makes it (``embedding_error``),
and ``wire_embed.EmbedSender`` passes it through ``exception_type`` as ``aembedding`` does.

A provider litellm sends through its own HTTP handler instead of the openai SDK (hosted_vllm) fails as that
handler fails (``handler_error``): an HTTP error answer with its whole text as the message, a time-out as its
client reports one (``handler_timeout``), anything else with the transport error's text and a made-up 500.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any, Final

import httpx
import httpx2
import litellm
import openai
from litellm.exceptions import MidStreamFallbackError
from litellm.litellm_core_utils.exception_mapping_utils import exception_type
from litellm.llms.openai.common_utils import (
    OpenAIError,
    build_output_token_limit_response,
    is_output_token_limit_error,
    model_dump_provider_response,
    upstream_error_response,
)

__all__ = [
    "embedding_error",
    "handler_error",
    "handler_json_error",
    "handler_status_error",
    "handler_timeout",
    "litellm_error",
    "mapped_where_raised",
    "output_limit_answer",
    "sdk_transport_error",
    "status_error",
    "stream_ended",
    "stream_failure",
    "transport_error",
]

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


def output_limit_answer(
    body: Mapping[str, Any], pairs: list[tuple[str, str]], raw: bytes, url: str
) -> tuple[dict[str, Any], list[tuple[str, str]]] | None:
    """litellm's OpenAI and Azure handlers answer a 400 saying the output budget could not fit one visible token
    (GPT-5's way of refusing a budget a little too small) with the answer the provider gives a slightly larger one:
    empty, finished for "length", its prompt counted by litellm (``build_output_token_limit_response``). That
    answer as JSON and the refusal's headers, or None for any other answer."""
    refused = status_error(400, httpx2.Headers(pairs), raw, url)
    if not isinstance(refused, openai.BadRequestError) or not is_output_token_limit_error(refused):
        return None
    headers, completion = build_output_token_limit_response(e=refused, data=body, is_async=False, base_model=None)
    return model_dump_provider_response(completion), list(headers.items())  # type: ignore[arg-type]


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


def embedding_error(exc: Exception) -> OpenAIError:
    """What litellm's OpenAI embedding handler raises for the SDK's error ``exc`` (``OpenAIChatCompletion.aembedding``):
    not the chat handler's, as it keeps neither the error body nor the seconds a time-out took."""
    headers = getattr(exc, "headers", None) or getattr(getattr(exc, "response", None), "headers", None)
    error = OpenAIError(status_code=getattr(exc, "status_code", 500), message=getattr(exc, "text", str(exc)),
                        response=upstream_error_response(exc), headers=headers)  # fmt: skip
    error.__cause__ = exc
    return error


def sdk_transport_error(exc: httpx.HTTPError, url: str) -> openai.APIConnectionError:
    """The openai SDK's error for a request that got no answer: its time-out or its connection error."""
    kind = openai.APITimeoutError if isinstance(exc, httpx.TimeoutException) else openai.APIConnectionError
    sdk = kind(request=httpx2.Request("POST", url))
    sdk.__cause__ = exc
    return sdk


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
    if isinstance(exc, litellm.exceptions.OpenAIError):  # the wrapper's own check: litellm's class of that name
        mapped: Exception = exc
    else:
        mapped = mapped_where_raised(exc, model, provider)
    timed_out = isinstance(exc, httpx.TimeoutException) or (
        isinstance(exc, litellm.Timeout) and isinstance(exc.__cause__, httpx.TimeoutException)
    )
    if not timed_out and (_client_error(mapped) or _client_error(exc)):
        return mapped
    return MidStreamFallbackError(message=str(mapped), model=model, llm_provider=provider, original_exception=mapped,
                                  generated_content=generated, is_pre_first_chunk=not started)  # fmt: skip


def mapped_where_raised(exc: Exception, model: str, provider: str) -> Exception:
    """What litellm's mapping (``exception_type``) makes of ``exc``, asked while ``exc`` is being handled, as
    litellm's stream wrapper asks: for some providers (azure) the message ends with the traceback of that moment.
    Here it is the traceback of this frame, not of litellm's wrapper: the one part of such a message that differs."""
    try:
        try:
            raise exc
        except Exception:
            return exception_type(model=model, custom_llm_provider=provider, original_exception=exc,
                                  completion_kwargs={}, extra_kwargs={})  # fmt: skip
    except Exception as raised:  # litellm's mapping raises what it maps to
        return raised


def _client_error(exc: Exception) -> bool:
    """A 4xx other than 429, by the error's status or else its response's (the wrapper's ``_skips_stream_fallback``
    of its ``_normalize_status_code``)."""
    code: int | None = None
    for source in (exc, getattr(exc, "response", None)):
        try:
            status = getattr(source, "status_code", None)
            if status is not None:
                code = int(status)
                break
        except (TypeError, ValueError):
            continue
    return code is not None and 400 <= code < 500 and code != 429


def handler_error(exc: BaseException) -> OpenAIError:
    """What litellm's HTTP handler raises for ``exc`` (``BaseLLMHTTPHandler._handle_error``, with the error class
    of its OpenAI-wire configs): the status (a made-up 500 without one), the answer's text, else the error's."""
    answered = exc.response if isinstance(exc, httpx.HTTPStatusError) else None
    received = answered.status_code if answered is not None else getattr(exc, "status_code", None)
    headers = getattr(exc, "headers", None)
    text = answered.text if answered is not None else getattr(exc, "text", str(exc))
    response = getattr(exc, "response", None)
    if headers is None and response:
        headers = getattr(response, "headers", None)
    if response and hasattr(response, "text"):
        text = response.text or text
    error = OpenAIError(status_code=received if isinstance(received, int) else 500, message=text,
                        headers=dict(headers) if headers else {})  # fmt: skip
    if not isinstance(received, int):
        error.status_code_is_synthesized = True
    return error


def handler_status_error(status: int, pairs: list[tuple[str, str]], raw: bytes, url: str) -> OpenAIError:
    """An HTTP error answer as litellm's HTTP client raises it (``MaskedHTTPStatusError``, without the content's
    encoding and length headers) and its handler maps it: the whole body is the message."""
    request = httpx.Request("POST", url)
    kept = [(k, v) for k, v in pairs if k.lower() not in ("content-encoding", "content-length")]
    response = httpx.Response(status, headers=kept, content=raw, request=request)
    return handler_error(httpx.HTTPStatusError(f"Error code: {status}", request=request, response=response))


def handler_json_error(exc: ValueError, status: int, pairs: list[tuple[str, str]], raw: bytes) -> OpenAIError:
    """An answer that is not JSON (``exc``: what ``json.loads`` said), as litellm's OpenAI-wire configs fail on
    it (``transform_response``)."""
    response = httpx.Response(status, headers=pairs, content=raw)
    message = f"Unable to get json response - {exc}, Original Response: {response.text}"
    return OpenAIError(message=message, status_code=status, headers=response.headers)


_PHASES: Final[dict[type[httpx.TimeoutException], str]] = {
    httpx.ConnectTimeout: "Connection",
    httpx.ReadTimeout: "Read",
    httpx.WriteTimeout: "Write",
    httpx.PoolTimeout: "Connection pool",
}


def handler_timeout(exc: httpx.TimeoutException, seconds: float | None, started: float) -> litellm.Timeout:
    """A time-out as litellm's HTTP client reports it (``AsyncHTTPHandler.post``)."""
    label, taken = _PHASES.get(type(exc), "Request"), round(time.time() - started, 3)
    return litellm.Timeout(message=f"{label} timed out. Timeout passed={seconds}, time taken={taken} seconds",
                           model="default-model-name", llm_provider="litellm-httpx-handler")  # fmt: skip
