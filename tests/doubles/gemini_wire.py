"""Gemini's wire format in the test server: a GenerateContentRequest answered as a
GenerateContentResponse, Google's error bodies and time stamps.

A request is answered with the chat fake's own logic (the label, ``[[answer]]``, a forced tool's call as
a ``functionCall`` part, ``[[fail:STATUS(:times=N)]]``). Used by ``gemini`` (the routes).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from tests.doubles.chat_request import InvalidRequestError, parse_chat_request, plan_reply

__all__ = ["BATCH_TYPE", "CODES", "answer", "error", "stamp"]

# HTTP status -> (google.rpc.Code, its name)
CODES = {400: (3, "INVALID_ARGUMENT"), 401: (16, "UNAUTHENTICATED"), 403: (7, "PERMISSION_DENIED"),
         404: (5, "NOT_FOUND"), 429: (8, "RESOURCE_EXHAUSTED"), 500: (13, "INTERNAL"), 503: (14, "UNAVAILABLE"),
         504: (4, "DEADLINE_EXCEEDED")}  # fmt: skip
BATCH_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1beta.GenerateContentBatch"

# counts one more attempt of a message's text in a lane (online, batch) and returns how many there have been
Attempt = Callable[[str, str], int]


def stamp(epoch: float) -> str:
    """An RFC 3339 time in UTC, as Google writes them."""
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


def error(status: int, message: str) -> web.Response:
    """An error response in Google's format."""
    _, name = CODES.get(status, (13, "INTERNAL"))
    return web.json_response({"error": {"code": status, "message": message, "status": name}}, status=status)


def answer(model: str, body: dict[str, Any], lane: str, attempt: Attempt) -> tuple[int, dict[str, Any]]:
    """(200, GenerateContentResponse) or (HTTP status, message) for ``body``."""
    if not body.get("contents"):
        return 400, {"message": "contents: must not be empty"}
    system = body.get("system_instruction") or body.get("systemInstruction") or {}
    messages = ([{"role": "system", "content": _text(system.get("parts"))}] if system else []) + [
        {"role": "assistant" if c.get("role") == "model" else "user", "content": _text(c.get("parts"))}
        for c in body["contents"]
    ]
    config = body.get("generationConfig") or body.get("generation_config") or {}
    chat_body: dict[str, Any] = {"model": model, "messages": messages}
    if (limit := config.get("max_output_tokens") or config.get("maxOutputTokens")) is not None:
        chat_body["max_tokens"] = limit
    declarations = [d for t in body.get("tools") or [] for d in t.get("function_declarations") or
                    t.get("functionDeclarations") or []]  # fmt: skip
    if declarations:
        chat_body["tools"] = [{"type": "function", "function": {"name": d["name"], "parameters":
                               d.get("parameters") or {}}} for d in declarations]  # fmt: skip
        calling = (body.get("toolConfig") or {}).get("functionCallingConfig") or {}
        allowed = calling.get("allowed_function_names") or calling.get("allowedFunctionNames") or []
        if calling.get("mode") == "ANY" and len(allowed) == 1:
            chat_body["tool_choice"] = {"type": "function", "function": {"name": allowed[0]}}
    try:
        chat = parse_chat_request(json.dumps(chat_body).encode(), {})
    except InvalidRequestError as exc:
        return 400, {"message": str(exc)}
    attempts = attempt(chat.key, lane)
    fault = chat.directives.fault
    if fault is not None and fault.kind.isdigit() and (fault.times is None or attempts <= fault.times):
        return int(fault.kind), {"message": f"injected fault {fault.kind}"}
    reply = plan_reply(chat)
    parts: list[dict[str, Any]] = [{"text": reply.content or ""}]
    if reply.tool_call is not None:
        parts = [{"functionCall": {"name": reply.tool_call.name, "args": json.loads(reply.tool_call.arguments)}}]
    prompt, output = chat.prompt_estimate, reply.completion_tokens
    return 200, {"candidates": [{"content": {"role": "model", "parts": parts}, "index": 0,
                                 "finishReason": "MAX_TOKENS" if reply.finish_reason == "length" else "STOP"}],
                 "usageMetadata": {"promptTokenCount": prompt, "candidatesTokenCount": output,
                                   "totalTokenCount": prompt + output},
                 "modelVersion": model, "responseId": secrets.token_hex(8)}  # fmt: skip


def _text(parts: Any) -> str:
    return "".join(p.get("text", "") for p in parts or [] if isinstance(p, dict))
