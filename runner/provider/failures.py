"""Failed provider calls, classified once, where they cross the litellm boundary.

    ProviderFailure             a call failed; carries what it means, classified once
    (its ``disposition``:)
        RETRY                   rate limit, time-out, connection error, 5xx, broken stream
        ROW                     this request will never work (400-class): an error record
        FATAL                   every request would fail so (key, permission, model): stop the run

``mapped()`` wraps the one call to the completion function; nothing downstream inspects litellm's
or openai's exception types again, and the message is redacted here, once.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from enum import StrEnum

import httpx
import litellm
import openai

from runner.provider.headers import retry_after_seconds
from runner.redact import redact

__all__ = ["Disposition", "ProviderFailure", "StreamIncomplete", "classify", "from_status", "mapped"]


class Disposition(StrEnum):
    """What a failed call means for its row and for the run."""

    RETRY = "retry"  # try the same request again later
    ROW = "row"  # this request will never work: record it as an error, go on
    FATAL = "fatal"  # every request would fail the same way: stop the run


class StreamIncomplete(Exception):
    """A stream that ended without saying why it stopped (cut off): the request is retried whole."""


class ProviderFailure(Exception):
    """A failed call, classified: what it means, its code, its (redacted) message, what the provider said."""

    def __init__(
        self,
        disposition: Disposition,
        code: str,
        message: str,
        status: int | None = None,
        retry_after: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.disposition = disposition
        self.code = code
        self.message = message
        self.status = status
        self.retry_after = retry_after
        self.headers: Mapping[str, str] = headers or {}

    @property
    def rate_limited(self) -> bool:
        """A 429: everyone slows down."""
        return self.code == "rate_limited"

    @property
    def unreachable(self) -> bool:
        """The endpoint could not even be connected to (refused, no route, no DNS, connect time-out)."""
        return _caused_by(self, (httpx.ConnectError, httpx.ConnectTimeout))


@contextmanager
def mapped() -> Iterator[None]:
    """Turn any exception raised inside into a ProviderFailure (httpx's ``map_exceptions``)."""
    try:
        yield
    except ProviderFailure:
        raise
    except Exception as exc:
        raise classify(exc) from exc


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
    # litellm refuses a parameter the model does not take (temperature 0 for a gpt-5 model) before anything is
    # sent: the job and the model don't fit, so every row would fail alike. Stop, and say what to change.
    (litellm.UnsupportedParamsError, Disposition.FATAL, "unsupported_params"),
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


def classify(exc: BaseException) -> ProviderFailure:
    """What a failed call means: retry it, record it, or stop everything."""
    if isinstance(exc, ProviderFailure):
        return exc
    status = _status(exc)
    message = redact(str(exc))[:1000]
    headers = _headers(exc)
    wait = retry_after_seconds(headers) if status in (429, 503) else None
    if status == 429 and "resource_unavailable" in message.lower().replace(" ", "_"):
        # The flex tier has no capacity: not a rate limit (nothing to slow down for), a pause for this request.
        return ProviderFailure(Disposition.RETRY, "tier_unavailable", message, status, wait, headers)
    for kind, disposition, code in _KINDS:
        if isinstance(exc, kind):
            if code == "server_error" and _caused_by_connection(exc):
                code = "connection_error"  # litellm reports a refused connection as a made-up 500
            return ProviderFailure(disposition, code, message, status, wait, headers)
    if isinstance(exc, openai.APIStatusError | litellm.APIError) and status is not None:
        return from_status(status, message, headers)  # litellm sometimes raises a bare APIError for 401-404
    return ProviderFailure(Disposition.ROW, "unexpected_error", f"{type(exc).__name__}: {message}", status)


def from_status(status: int, message: str, headers: Mapping[str, str] | None = None) -> ProviderFailure:
    """What an HTTP error status means, for a client that raises no litellm class (the anthropic SDK's batch
    calls): 401-404 stop the run, 408/409/425/429 and 5xx are retried, any other is the request's own."""
    headers = headers or {}
    if status in _FATAL_STATUSES:
        return ProviderFailure(Disposition.FATAL, _FATAL_STATUSES[status], message, status)
    if status >= 500 or status in _RETRIED_STATUSES:
        wait = retry_after_seconds(headers) if status in (429, 503) else None
        code = "server_error" if status >= 500 else "http_error"
        return ProviderFailure(Disposition.RETRY, code, message, status, wait, headers)
    return ProviderFailure(Disposition.ROW, "http_error", message, status)


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
    return _caused_by(exc, openai.APIConnectionError, but_not=openai.APITimeoutError)


def _caused_by(
    exc: BaseException, kinds: type[BaseException] | tuple[type[BaseException], ...], but_not: type | None = None
) -> bool:
    """Whether ``exc`` or anything in its cause/context chain is one of ``kinds``."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, kinds) and not (but_not and isinstance(cause, but_not)):
            return True
        cause = cause.__cause__ or cause.__context__
    return False
