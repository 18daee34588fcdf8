"""Anthropic's wire format in the test server: a Messages body answered as Anthropic would answer it,
its error bodies, and the checks every request gets (a key, a batch request's ``custom_id``).

A Messages body is answered with the chat fake's own logic (the label, ``[[answer]]``, a forced tool's
call, ``[[fail:STATUS(:times=N)]]``, 503 meaning Anthropic's 529 ``overloaded_error``), framed as an
Anthropic message. Used by ``anthropic`` (the routes).
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from tests.doubles.chat_request import InvalidRequestError, parse_chat_request, plan_reply

__all__ = ["CUSTOM_ID", "ERROR_TYPES", "answer", "authorized", "error", "error_body", "new_id", "stamp"]

CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
# HTTP status -> Anthropic's error type
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
               529: "overloaded_error"}  # fmt: skip

# counts one more attempt of a message's text in a lane (online, batch) and returns how many there have been
Attempt = Callable[[str, str], int]


def new_id(prefix: str) -> str:
    """An id: ``prefix`` and 24 hex digits."""
    return f"{prefix}{secrets.token_hex(12)}"


def stamp(epoch: float) -> str:
    """An RFC 3339 time in UTC, as Anthropic writes them."""
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


def error(status: int, message: str) -> web.Response:
    """An error response in Anthropic's format."""
    return web.json_response(error_body(status, message), status=status)


def error_body(status: int, message: str) -> dict[str, Any]:
    """Anthropic's error body for an HTTP status."""
    return {"type": "error", "error": {"type": ERROR_TYPES.get(status, "api_error"), "message": message}}


def authorized(request: web.Request) -> bool:
    """A key came, as litellm sends it (``x-api-key``) or as the SDK does (``Authorization: Bearer``)."""
    return "x-api-key" in request.headers or request.headers.get("Authorization", "").startswith("Bearer ")


def answer(body: dict[str, Any], lane: str, attempt: Attempt) -> tuple[int, dict[str, Any]]:
    """``body`` answered as Anthropic would: (200, message) or (status, error body)."""
    for name in ("model", "max_tokens", "messages"):
        if name not in body:
            return 400, error_body(400, f"{name}: Field required")
    system = body.get("system")
    if isinstance(system, list):
        system = "".join(block.get("text", "") for block in system)
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": m.get("role"), "content": _text(m.get("content"))} for m in body["messages"]
    ]
    chat_body: dict[str, Any] = {"model": body["model"], "messages": messages, "max_tokens": body["max_tokens"]}
    if body.get("tools"):  # Anthropic's tools and tool_choice as the chat fake reads them
        chat_body["tools"] = [{"type": "function", "function": {"name": t["name"], "parameters":
                               t.get("input_schema") or {}}} for t in body["tools"]]  # fmt: skip
        choice = body.get("tool_choice") or {}
        if choice.get("type") == "tool":
            chat_body["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    try:
        chat = parse_chat_request(json.dumps(chat_body).encode(), {})
    except InvalidRequestError as exc:
        return 400, error_body(400, str(exc))
    attempts = attempt(chat.key, lane)
    fault = chat.directives.fault
    if fault is not None and fault.kind.isdigit() and (fault.times is None or attempts <= fault.times):
        status = 529 if fault.kind == "503" else int(fault.kind)  # Anthropic says "overloaded" with a 529
        return status, error_body(status, f"injected fault {status}")
    reply = plan_reply(chat)
    stop = {"length": "max_tokens", "tool_calls": "tool_use"}.get(reply.finish_reason, "end_turn")
    content: list[dict[str, Any]] = [{"type": "text", "text": reply.content or ""}]
    if reply.tool_call is not None:
        content = [{"type": "tool_use", "id": new_id("toolu_"), "name": reply.tool_call.name,
                    "input": json.loads(reply.tool_call.arguments)}]  # fmt: skip
    message = {"id": new_id("msg_"), "type": "message", "role": "assistant", "model": body["model"],
               "content": content, "stop_reason": stop,
               "stop_sequence": None,
               "usage": {"input_tokens": chat.prompt_estimate, "output_tokens": reply.completion_tokens,
                         "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}}  # fmt: skip
    return 200, message


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(block.get("text", "") for block in content or [] if isinstance(block, dict))
