"""What an executor hands back for a row: a ``Record``, one line of results.jsonl or errors.jsonl.

The lines have the OpenAI Batch output shape plus runner's ``result`` and ``meta``. Every line
starts ``{"id":"batch_req_<24 hex>","custom_id":"<id>"``: the journal relies on that to read ids
by position on resume (``custom_id_at_start``), and a test pins it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from runner.redact import redact

__all__ = [
    "ERRORS",
    "NO_RESULT",
    "RESULTS",
    "Record",
    "custom_id_at_start",
    "error_record",
    "record_id",
    "result_record",
]

NO_RESULT = object()  # the job has no parser: the line carries no "result" key
RESULTS, ERRORS = "results.jsonl", "errors.jsonl"  # the journal: where records of each kind are written


@dataclass(frozen=True, slots=True)
class Record:
    """A finished row: ``ok`` for results.jsonl, else errors.jsonl; ``line`` is what is written."""

    ok: bool
    line: dict[str, Any]

    @property
    def custom_id(self) -> str:
        """The row's id."""
        return str(self.line["custom_id"])


def record_id(custom_id: str) -> str:
    """A stable per-row line id in the Batch API's style."""
    return "batch_req_" + hashlib.blake2b(custom_id.encode(), digest_size=12).hexdigest()


def _head(custom_id: str) -> dict[str, Any]:
    # Key order matters: "id" then "custom_id" first on every line (see custom_id_at_start).
    return {"id": record_id(custom_id), "custom_id": custom_id}


def result_record(
    custom_id: str, body: dict[str, Any], request_id: str | None, result: Any, meta: dict[str, Any]
) -> Record:
    """A results.jsonl line for a request that succeeded and whose answer the job accepted."""
    line = _head(custom_id)
    line["response"] = {"status_code": 200, "request_id": request_id, "body": body}
    line["error"] = None
    if result is not NO_RESULT:
        line["result"] = result
    line["meta"] = meta
    return Record(True, line)


def error_record(
    custom_id: str,
    code: str,
    message: str,
    meta: dict[str, Any],
    status: int | None = None,
    body: dict[str, Any] | None = None,
    request_id: str | None = None,
) -> Record:
    """An errors.jsonl line; ``body`` is kept when the model answered (its tokens were paid for)."""
    line = _head(custom_id)
    line["response"] = None if body is None else {"status_code": 200, "request_id": request_id, "body": body}
    error: dict[str, Any] = {"code": code, "message": redact(message)}  # it may quote an answer or a URL
    if status is not None:
        error["status"] = status
    line["error"] = error
    line["meta"] = meta
    return Record(False, line)


_ID_PREFIX = b'{"id":"batch_req_'
_CUSTOM_ID_KEY = b'","custom_id":"'
_ID_AT = len(_ID_PREFIX) + 24 + len(_CUSTOM_ID_KEY)  # where the custom_id's text starts


def custom_id_at_start(line: bytes) -> str | None:
    """The custom_id of a journal line read by position (no JSON parse), or None if it can't be."""
    close = line.find(b'"', _ID_AT)
    raw = line[_ID_AT:close]
    keyed = line.startswith(_ID_PREFIX) and line[_ID_AT - len(_CUSTOM_ID_KEY) : _ID_AT] == _CUSTOM_ID_KEY
    if keyed and close > 0 and b"\\" not in raw:
        return raw.decode()
    return None
