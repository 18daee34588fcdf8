"""The shape of result and error lines: OpenAI Batch output, plus runner's ``result`` and ``meta``."""

from __future__ import annotations

import hashlib
from typing import Any

from runner.redact import redact

__all__ = ["NO_RESULT", "error_record", "record_id", "result_record"]

NO_RESULT = object()  # the job has no parser: the line carries no "result" key


def record_id(custom_id: str) -> str:
    """A stable per-row line id in the Batch API's style."""
    return "batch_req_" + hashlib.blake2b(custom_id.encode(), digest_size=12).hexdigest()


def result_record(
    custom_id: str, body: dict[str, Any], request_id: str | None, result: Any, meta: dict[str, Any]
) -> dict[str, Any]:
    """A results.jsonl line for a request that succeeded and whose answer the job accepted."""
    record: dict[str, Any] = {
        "id": record_id(custom_id),
        "custom_id": custom_id,
        "response": {"status_code": 200, "request_id": request_id, "body": body},
        "error": None,
    }
    if result is not NO_RESULT:
        record["result"] = result
    record["meta"] = meta
    return record


def error_record(
    custom_id: str,
    code: str,
    message: str,
    meta: dict[str, Any],
    status: int | None = None,
    body: dict[str, Any] | None = None,
    request_id: str | None = None,
) -> dict[str, Any]:
    """An errors.jsonl line; ``body`` is kept when the model answered (its tokens were paid for)."""
    response = None
    if body is not None:
        response = {"status_code": 200, "request_id": request_id, "body": body}
    error: dict[str, Any] = {"code": code, "message": redact(message)}  # it may quote an answer or a URL
    if status is not None:
        error["status"] = status
    return {"id": record_id(custom_id), "custom_id": custom_id, "response": response, "error": error, "meta": meta}
