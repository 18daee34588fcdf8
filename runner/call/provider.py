"""The one module that imports litellm: offline set-up, credentials, answers and failures.

litellm is configured before import so it never reaches the network on its own: no price-list
fetch (its bundled map is used), no tokenizer look-ups, no loading of a stray ``.env``.
"""

from __future__ import annotations

import functools
import logging
import os
import warnings
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

os.environ["LITELLM_OFFLINE_MODE"] = "true"
os.environ["LITELLM_MODE"] = "PRODUCTION"

import litellm
import openai
from litellm.llms.custom_httpx.async_client_cleanup import close_litellm_async_clients

from runner.call.headers import retry_after_seconds
from runner.errors import UsageError
from runner.redact import redact

litellm.suppress_debug_info = True
# litellm builds its OpenAI coroutine in a thread and awaits it later; a call cancelled in between
# (Ctrl-C, a fatal error in another worker) leaves it unawaited. Nothing was sent, so say nothing.
warnings.filterwarnings("ignore", "coroutine 'OpenAIChatCompletion.acompletion' was never awaited", RuntimeWarning)
litellm.telemetry = False
logging.getLogger("LiteLLM").setLevel(logging.WARNING)

__all__ = [
    "Answer",
    "Complete",
    "Disposition",
    "Failure",
    "Prices",
    "StreamIncomplete",
    "aclose",
    "acompletion",
    "answer_from",
    "classify",
    "collect_stream",
    "credentials",
    "estimate_tokens",
    "prices",
    "response_headers",
    "supports_schema",
]

Complete = Callable[..., Awaitable[Any]]
acompletion: Complete = litellm.acompletion

logger = logging.getLogger(__name__)


async def aclose() -> None:
    """Close the HTTP clients litellm cached, and forget them so a later call opens new ones."""
    await close_litellm_async_clients()
    litellm.in_memory_llm_clients_cache.flush_cache()


@dataclass(frozen=True, slots=True)
class Answer:
    """A successful call: the chat.completion body and what litellm knew about it."""

    body: dict[str, Any]
    request_id: str | None
    cost_usd: float | None
    headers: Mapping[str, str]


def response_headers(response: Any) -> dict[str, str]:
    """The provider's response headers, lower-case, from wherever litellm put them.

    A plain answer has them in ``_hidden_params["headers"]``; a stream only in
    ``["additional_headers"]``, prefixed ``llm_provider-`` (the one complete set on both paths).
    """
    hidden = getattr(response, "_hidden_params", None) or {}
    merged = {k.lower(): v for k, v in (hidden.get("headers") or {}).items()}
    for key, value in (hidden.get("additional_headers") or {}).items():
        key = key.lower()
        if key.startswith("llm_provider-"):
            merged.setdefault(key.removeprefix("llm_provider-"), value)
    return merged


def answer_from(response: Any) -> Answer:
    """Turn litellm's ModelResponse into plain data."""
    body = response.model_dump() if hasattr(response, "model_dump") else dict(response)
    hidden = getattr(response, "_hidden_params", None) or {}
    headers = response_headers(response)
    extra = hidden.get("additional_headers") or {}
    request_id = headers.get("x-request-id") or extra.get("request-id")
    cost = hidden.get("response_cost")
    return Answer(body, request_id, float(cost) if cost is not None else None, headers)


class StreamIncomplete(Exception):
    """A stream that ended without saying why it stopped (cut off): the request is retried whole."""


async def collect_stream(
    stream: Any, messages: list[Any], started: float, clock: Callable[[], float]
) -> tuple[Any, float | None]:
    """Read a litellm stream to the end and assemble it with ``stream_chunk_builder``.

    Returns the assembled ModelResponse and the seconds from ``started`` to the first content or
    tool-call delta (None if there was none). Tool-call arguments are only ever read from the
    assembled message, never from partial chunks.
    """
    chunks: list[Any] = []
    first: float | None = None
    finished = False
    async for chunk in stream:
        chunks.append(chunk)
        choices = getattr(chunk, "choices", None) or []
        if not choices:
            continue  # the usage chunk
        delta = getattr(choices[0], "delta", None)
        if getattr(delta, "content", None) or getattr(delta, "tool_calls", None):
            first = clock() - started if first is None else first
        finished = finished or getattr(choices[0], "finish_reason", None) is not None
    # litellm turns a 200 stream with no events at all into one made-up "stop" chunk: that is no answer.
    finished = finished and (first is not None or any(getattr(c, "usage", None) for c in chunks))
    response = litellm.stream_chunk_builder(chunks, messages=messages) if chunks else None
    if response is None or not finished:  # stream_chunk_builder would call a cut-off stream "stop"
        raise StreamIncomplete(f"the stream ended after {len(chunks)} chunks without a finish reason")
    params: Any = response._hidden_params
    if isinstance(params, dict):  # the headers arrived on the stream, not on the built response
        params["headers"] = {**response_headers(stream), **(params.get("headers") or {})}
    return response, first


class Disposition(StrEnum):
    """What a failed call means for its row and for the run."""

    RETRY = "retry"  # try the same request again later
    ROW = "row"  # this request will never work: record it as an error, go on
    FATAL = "fatal"  # every request would fail the same way: stop the run


@dataclass(frozen=True, slots=True)
class Failure:
    """A failed call, classified."""

    disposition: Disposition
    code: str
    message: str
    status: int | None = None
    retry_after: float | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


# Most specific first: ContextWindowExceededError is a BadRequestError, MidStreamFallbackError a 503.
_KINDS: list[tuple[type[BaseException], Disposition, str]] = [
    (StreamIncomplete, Disposition.RETRY, "stream_broken"),
    (litellm.exceptions.MidStreamFallbackError, Disposition.RETRY, "stream_broken"),
    (litellm.RateLimitError, Disposition.RETRY, "rate_limited"),
    (litellm.Timeout, Disposition.RETRY, "timeout"),
    (litellm.APIConnectionError, Disposition.RETRY, "connection_error"),
    (openai.APIConnectionError, Disposition.RETRY, "connection_error"),
    (litellm.ServiceUnavailableError, Disposition.RETRY, "server_error"),
    (litellm.BadGatewayError, Disposition.RETRY, "server_error"),
    (litellm.InternalServerError, Disposition.RETRY, "server_error"),
    (litellm.AuthenticationError, Disposition.FATAL, "authentication_failed"),
    (litellm.PermissionDeniedError, Disposition.FATAL, "permission_denied"),
    (litellm.NotFoundError, Disposition.FATAL, "model_not_found"),
    (litellm.exceptions.PaymentRequiredError, Disposition.FATAL, "payment_required"),
    (litellm.ContextWindowExceededError, Disposition.ROW, "context_window_exceeded"),
    (litellm.ContentPolicyViolationError, Disposition.ROW, "content_policy_violation"),
    (litellm.BadRequestError, Disposition.ROW, "bad_request"),
    (litellm.UnprocessableEntityError, Disposition.ROW, "unprocessable_entity"),
]
_RETRIED_STATUSES = {408, 409, 425, 429}
_FATAL_STATUSES = {
    401: "authentication_failed",
    402: "payment_required",
    403: "permission_denied",
    404: "model_not_found",
}


def classify(exc: BaseException) -> Failure:
    """What a failed call means: retry it, record it, or stop everything."""
    status = _status(exc)
    message = redact(str(exc))[:1000]
    headers = _headers(exc)
    wait = retry_after_seconds(headers) if status in (429, 503) else None
    for kind, disposition, code in _KINDS:
        if isinstance(exc, kind):
            if code == "server_error" and _caused_by_connection(exc):
                code = "connection_error"  # litellm reports a refused connection as a made-up 500
            return Failure(disposition, code, message, status, wait, headers)
    if isinstance(exc, openai.APIStatusError | litellm.APIError) and status is not None:
        if status in _FATAL_STATUSES:  # litellm sometimes raises a bare APIError for these
            return Failure(Disposition.FATAL, _FATAL_STATUSES[status], message, status)
        if status >= 500 or status in _RETRIED_STATUSES:
            code = "server_error" if status >= 500 else "http_error"
            return Failure(Disposition.RETRY, code, message, status, wait, headers)
        return Failure(Disposition.ROW, "http_error", message, status)
    return Failure(Disposition.ROW, "unexpected_error", f"{type(exc).__name__}: {message}", status)


def supports_schema(model: str) -> bool:
    """Whether litellm's model map says ``model`` takes a JSON-schema ``response_format``."""
    try:
        return bool(litellm.supports_response_schema(model=model))
    except Exception:
        return False


def estimate_tokens(request: Mapping[str, Any]) -> tuple[int, int]:
    """A request's prompt tokens counted offline (litellm's bundled tokenizers) and its max_tokens."""
    try:
        prompt = int(litellm.token_counter(model=request["model"], messages=request.get("messages") or []))
    except Exception:  # a model litellm has no tokenizer for: about four characters a token
        prompt = len(str(request.get("messages") or "")) // 4
    return prompt, int(request.get("max_completion_tokens") or request.get("max_tokens") or 0)


@dataclass(frozen=True)
class Prices:
    """USD per token from litellm's bundled price map; the batch-API ones where it has them."""

    input: float
    output: float
    batch_input: float | None = None
    batch_output: float | None = None
    max_output_tokens: int | None = None

    def cost(self, prompt: int, output: int, batch: bool = False) -> float | None:
        """What ``prompt`` + ``output`` tokens cost (None at batch prices if there are none)."""
        if batch:
            if self.batch_input is None or self.batch_output is None:
                return None
            return prompt * self.batch_input + output * self.batch_output
        return prompt * self.input + output * self.output


@functools.cache  # asked before every request under --max-cost; the bundled map does not change
def prices(model: str) -> Prices | None:
    """``model``'s prices, or None when litellm's map has none (the offline local/ models are free)."""
    if model.startswith("local/"):
        return Prices(0.0, 0.0, 0.0, 0.0)
    try:
        info = litellm.get_model_info(model)
    except Exception:
        return None
    cin, cout = info.get("input_cost_per_token"), info.get("output_cost_per_token")
    if cin is None or cout is None:
        return None
    max_out = info.get("max_output_tokens") or info.get("max_tokens")
    return Prices(float(cin), float(cout), info.get("input_cost_per_token_batches"),
                  info.get("output_cost_per_token_batches"), int(max_out) if max_out else None)  # fmt: skip


def _status(exc: BaseException) -> int | None:
    status = getattr(exc, "status_code", None)
    return status if isinstance(status, int) else None


def _headers(exc: BaseException) -> Mapping[str, str]:
    headers = getattr(exc, "litellm_response_headers", None)
    if headers is None:
        response = getattr(exc, "response", None)
        headers = getattr(response, "headers", None)
    return dict(headers.items()) if headers is not None else {}


def _caused_by_connection(exc: BaseException) -> bool:
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, openai.APIConnectionError) and not isinstance(cause, openai.APITimeoutError):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def credentials(model: str, api_base: str | None) -> dict[str, Any]:
    """Extra call arguments for ``model``'s credentials; a UsageError naming the variable if one is missing."""
    try:
        litellm.get_llm_provider(model)
    except Exception as exc:
        raise UsageError(
            f"model {model!r} is not a model litellm knows how to call; "
            "use provider/model, e.g. openai/gpt-4o-mini (--model or MODEL=...)"
        ) from exc
    env = litellm.validate_environment(model=model, api_base=api_base)
    missing = env.get("missing_keys") or []
    if env.get("keys_in_environment") or not missing:
        return {}
    if api_base:
        # A self-hosted OpenAI-compatible server often needs no key, but the SDK insists on one.
        logger.info("%s is not set; calling %s without a key", missing[0], api_base)
        return {"api_key": "no-key"}
    names = " and ".join(missing)
    raise UsageError(
        f"{names} is not set: model {model!r} needs it. "
        f"Set it (export {missing[0]}=...) or choose another model with --model / MODEL=..."
    )
