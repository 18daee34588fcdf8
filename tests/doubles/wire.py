"""OpenAI's wire format for the chat fake: error bodies, a ``chat.completion`` and its stream of chunks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from tests.doubles.chat_request import Reply
from tests.doubles.directives import Directives

SYSTEM_FINGERPRINT: Final = "fp_fake0001"
STREAM_CHUNK_CHARS: Final = 4
TOOL_ARGS_CHUNK_CHARS: Final = 5

# status -> (error type, error code, message); "{model}" is filled from the request.
_ERRORS: Final[dict[int, tuple[str, str, str]]] = {
    400: ("invalid_request_error", "invalid_value", "Invalid value for 'messages' (injected fault)."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided (injected fault)."),
    403: (
        "invalid_request_error",
        "insufficient_permissions",
        "You do not have access to this resource (injected fault).",
    ),
    404: (
        "invalid_request_error",
        "model_not_found",
        "The model `{model}` does not exist or you do not have access to it (injected fault).",
    ),
    429: (
        "requests",
        "rate_limit_exceeded",
        (
            "Rate limit reached for {model} on requests per min (RPM): "
            "Limit 500, Used 500, Requested 1 (injected fault)."
        ),
    ),
    500: (
        "server_error",
        "server_error",
        "The server had an error while processing your request. Sorry about that! (injected fault)",
    ),
    502: ("server_error", "bad_gateway", "Bad gateway (injected fault)."),
    503: (
        "server_error",
        "service_unavailable",
        "The engine is currently overloaded, please try again later (injected fault).",
    ),
}


def error_body(status: int, model: str, message: str | None = None, param: str | None = None) -> dict[str, Any]:
    """An OpenAI-shaped error body for ``status``."""
    type_, code, default = _ERRORS[status]
    return {"error": {"message": message or default.format(model=model), "type": type_, "param": param, "code": code}}


def _pieces(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def completion_body(head: Mapping[str, Any], reply: Reply, totals: dict[str, Any], call_id: str) -> dict[str, Any]:
    """A non-streamed ``chat.completion`` carrying ``reply``."""
    message: dict[str, Any] = {"role": "assistant", "content": reply.content, "refusal": None}
    if reply.tool_call is not None:
        function = {"name": reply.tool_call.name, "arguments": reply.tool_call.arguments}
        message["tool_calls"] = [{"id": call_id, "type": "function", "function": function}]
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": reply.finish_reason}
    return {**head, "object": "chat.completion", "choices": [choice], "usage": totals}


def stream_chunks(
    head: Mapping[str, Any],
    reply: Reply,
    totals: dict[str, Any],
    include_usage: bool,
    directives: Directives,
    call_id: str,
) -> list[dict[str, Any]]:
    """The ``chat.completion.chunk`` events for ``reply``: role, content or arguments, finish, usage."""

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        body = {**head, "object": "chat.completion.chunk", "choices": [choice]}
        if include_usage:
            body["usage"] = None  # as the real API does on every chunk before the usage one
        return body

    call = reply.tool_call
    if call is None:
        chunks = [chunk({"role": "assistant", "content": "", "refusal": None})]
        size = directives.chunk_chars or STREAM_CHUNK_CHARS
        chunks += [chunk({"content": piece}) for piece in _pieces(reply.content or "", size)]
    else:
        # Like OpenAI: the first delta names the call with empty arguments, then arguments follow in pieces.
        function = {"name": call.name, "arguments": ""}
        first = {"index": 0, "id": call_id, "type": "function", "function": function}
        chunks = [chunk({"role": "assistant", "content": None, "tool_calls": [first], "refusal": None})]
        size = directives.split_chars or TOOL_ARGS_CHUNK_CHARS
        chunks += [
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
            for piece in _pieces(call.arguments, size)
        ]
    chunks.append(chunk({}, reply.finish_reason))
    if include_usage:
        chunks.append({**head, "object": "chat.completion.chunk", "choices": [], "usage": totals})
    return chunks
