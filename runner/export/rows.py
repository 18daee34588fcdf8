"""One journal record as one flat export row: status, result, tokens and cost, and the input's own fields.

A row's tokens and cost are everything its record paid for: the answer kept in ``response`` and
every answer the job rejected and re-asked about (``meta.reasked``), so the export's sums equal
the manifest's (retired errors aside: they are not rows any more).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["COLUMNS", "PENDING", "Vector", "input_fields", "pending_row", "record_row"]

Vector = npt.NDArray[np.float32]
# The runner's own columns, in order; the input's fields (--with-input) come after custom_id.
HEAD = ("line", "custom_id")
TAIL = ("status", "result", "error", "model", "input_tokens", "output_tokens", "total_tokens", "cost_usd",
        "finished_at")  # fmt: skip
COLUMNS = (*HEAD, *TAIL)
PENDING = "pending"  # --with-input: an input row with no record yet (a run still going, or stopped)


def record_row(record: Mapping[str, Any], embeddings: bool = False) -> dict[str, Any]:
    """The export row of one results.jsonl or errors.jsonl record (``embeddings``: add the vector column)."""
    meta = record.get("meta") or {}
    error = record.get("error")
    response = record.get("response") or {}
    body = response.get("body") if isinstance(response, dict) else None
    body = body if isinstance(body, dict) else {}
    spent = [body.get("usage") or {}] if "usage" in body else []
    costs = [meta.get("cost_usd")] if body else []
    for reasked in meta.get("reasked") or []:
        spent.append(reasked.get("usage") or {})
        costs.append(reasked.get("cost_usd"))
    row: dict[str, Any] = {
        "line": meta.get("line"),
        "custom_id": record.get("custom_id"),
        "status": "ok" if not error else str(error.get("code") or "error"),
        "result": record.get("result"),
        "error": error.get("message") if error else None,
        "model": meta.get("model") or body.get("model"),
        "input_tokens": _sum(spent, "prompt_tokens"),
        "output_tokens": _sum(spent, "completion_tokens"),
        "total_tokens": _sum(spent, "total_tokens"),
        "cost_usd": sum(costs) if costs and all(isinstance(c, int | float) for c in costs) else None,
        "finished_at": meta.get("finished_at"),
    }
    if embeddings or body.get("object") == "list":
        vectors = embedding_vectors(body)
        row["embedding"] = vectors[0] if len(vectors) == 1 else vectors or None
    return row


def pending_row(line: int) -> dict[str, Any]:
    """The row of an input line that has no record yet."""
    return {"line": line, "custom_id": None, "status": PENDING, **dict.fromkeys(TAIL[1:])}


def _sum(usages: list[Any], key: str) -> int | None:
    values = [u.get(key) for u in usages if isinstance(u, dict)]
    known = [v for v in values if isinstance(v, int)]
    return sum(known) if known else None


def embedding_vectors(body: Mapping[str, Any]) -> list[Vector | list[float]]:
    """The vectors of an embeddings response, base64 ones (``encoding_format: "base64"``) decoded."""
    found: list[Vector | list[float]] = []
    for item in body.get("data") or []:
        value = item.get("embedding") if isinstance(item, dict) else None
        if isinstance(value, str):
            found.append(np.frombuffer(base64.b64decode(value), dtype="<f4"))
        elif isinstance(value, list):
            found.append(value)
    return found


def input_fields(record: Any, taken: tuple[str, ...] = COLUMNS) -> dict[str, Any]:
    """The input record's own fields; one whose name is a runner column is renamed ``input.<name>``."""
    if not isinstance(record, dict):
        return {}
    return {(f"input.{k}" if k in taken else k): v for k, v in record.items()}
