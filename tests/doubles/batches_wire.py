"""OpenAI's Batch API wire format in the test server: a batch's request line answered as its endpoint
would answer it, the records of its output and error files, a File object and an error response.

A chat line (``/v1/chat/completions``) is answered with the chat endpoint's logic (the label,
``[[answer]]``, tool calls, ``[[fail:STATUS(:times=N)]]`` as a failed line, ``times`` counting the
batch attempts of that message); a ``/v1/embeddings`` line as that endpoint answers it. Used by
``batches_state`` (ids of saved files) and ``batches`` (the routes).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from tests.doubles.answers import prompt_tokens, usage
from tests.doubles.chat_request import InvalidRequestError, parse_chat_request, plan_reply
from tests.doubles.endpoints import _request, embeddings_body
from tests.doubles.wire import SYSTEM_FINGERPRINT, completion_body, error_body

__all__ = ["answer_line", "error", "file_object", "new_id", "output_record", "tokens", "unreached_record"]

# counts one more batch attempt of a message's text and returns how many there have been
Count = Callable[[str], int]


def new_id(prefix: str) -> str:
    """An id as OpenAI makes them: ``prefix`` and 24 hex digits."""
    return f"{prefix}{secrets.token_hex(12)}"


def answer_line(line: dict[str, Any], count: Count) -> tuple[int, dict[str, Any]]:
    """One request line, answered as /v1/chat/completions (or /v1/embeddings) would answer it."""
    body = line.get("body") or {}
    if line.get("url") == "/v1/embeddings":
        return _embed(body, count)
    try:
        chat = parse_chat_request(json.dumps(body).encode(), {})
    except InvalidRequestError as exc:
        return 400, error_body(400, str(body.get("model")), str(exc), exc.param)
    attempt = count(chat.key)
    fault = chat.directives.fault
    if fault is not None and fault.kind.isdigit() and (fault.times is None or attempt <= fault.times):
        return int(fault.kind), error_body(int(fault.kind), chat.info.model)
    reply = plan_reply(chat)
    head = {"id": new_id("chatcmpl-"), "created": int(time.time()), "model": chat.info.model,
            "system_fingerprint": SYSTEM_FINGERPRINT}  # fmt: skip
    return 200, completion_body(head, reply, usage(chat.prompt_estimate, reply.completion_tokens), new_id("call_"))


def _embed(body: dict[str, Any], count: Count) -> tuple[int, dict[str, Any]]:
    """One /v1/embeddings line, answered as that endpoint answers it."""
    try:
        parsed, chat = _request(json.dumps(body).encode(), {}, "input")
        answer, _ = embeddings_body(parsed, chat)
    except InvalidRequestError as exc:
        return 400, error_body(400, str(body.get("model")), str(exc), exc.param)
    count(chat.key)
    return 200, {**answer, "id": new_id("emb-")}


def output_record(line: dict[str, Any], status: int, response: dict[str, Any]) -> dict[str, Any]:
    """The output (or error) file's record of an answered line."""
    return {"id": new_id("batch_req_"), "custom_id": line.get("custom_id"),
            "response": {"status_code": status, "request_id": new_id("req_"), "body": response},
            "error": None}  # fmt: skip


def unreached_record(line: dict[str, Any], why: str) -> dict[str, Any]:
    """The error file's record of a line the batch never reached (``why``: cancelled or expired)."""
    message = f"This request could not be executed before the batch was {why}."
    return {"id": new_id("batch_req_"), "custom_id": line.get("custom_id"), "response": None,
            "error": {"code": f"batch_{why}", "message": message}}  # fmt: skip


def tokens(body: dict[str, Any]) -> int:
    """About what OpenAI counts against the enqueued-token limit: the prompt and max_tokens."""
    messages = body.get("messages") or []
    return prompt_tokens(messages) + int(body.get("max_tokens") or body.get("max_completion_tokens") or 0)


def file_object(file_id: str, purpose: str, filename: str, size: int) -> dict[str, Any]:
    """A File object, as ``/v1/files`` describes one."""
    return {"id": file_id, "object": "file", "bytes": size, "created_at": int(time.time()), "filename": filename,
            "purpose": purpose, "status": "processed", "expires_at": None, "status_details": None}  # fmt: skip


def error(status: int, message: str) -> web.Response:
    """An error response in OpenAI's format."""
    body = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}}
    return web.json_response(body, status=status)
