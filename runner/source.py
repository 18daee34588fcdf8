"""Streaming the input: JSONL lines become rows with a stable id, or input errors with a line number.

The file is read in fixed-size blocks, never whole, so memory does not grow with the input.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiofiles
import orjson

__all__ = ["BadLine", "Row", "count_lines", "custom_id_for", "read_rows"]

BLOCK = 1 << 20


@dataclass(frozen=True, slots=True)
class Row:
    """One valid input record."""

    line: int
    custom_id: str
    record: dict[str, Any]


@dataclass(frozen=True, slots=True)
class BadLine:
    """An input line that cannot become a request; it becomes an error record."""

    line: int
    custom_id: str
    code: str
    message: str


def custom_id_for(record: dict[str, Any], id_field: str | None) -> str | None:
    """The record's own id, else a hash of the canonical record; None if the id field is unusable."""
    if id_field is not None and id_field in record:
        value = record[id_field]
        if isinstance(value, str) and value.strip():
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return None
    canonical = orjson.dumps(record, option=orjson.OPT_SORT_KEYS)
    return "h-" + hashlib.blake2b(canonical, digest_size=10).hexdigest()


async def _lines(path: Path) -> AsyncIterator[bytes]:
    async with aiofiles.open(path, "rb") as f:
        tail = b""
        while block := await f.read(BLOCK):
            parts = (tail + block).split(b"\n")
            tail = parts.pop()
            for part in parts:
                yield part
        if tail:
            yield tail


async def read_rows(path: Path, id_field: str | None) -> AsyncGenerator[Row | BadLine, None]:
    """Every non-blank line of ``path`` in order, as a Row or a BadLine (1-based line numbers)."""
    seen: set[str] = set()
    number = 0
    async for raw in _lines(path):
        number += 1
        if not raw.strip():
            continue
        item = _parse(raw, number, id_field)
        if isinstance(item, Row):
            if item.custom_id in seen:
                item = BadLine(
                    number,
                    f"{item.custom_id}#line-{number}",
                    "duplicate_id",
                    f"line {number}: id {item.custom_id!r} appeared earlier in the input; only the first runs",
                )
            else:
                seen.add(item.custom_id)
        yield item


def _parse(raw: bytes, number: int, id_field: str | None) -> Row | BadLine:
    bad_id = f"line-{number}"
    try:
        record = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return BadLine(number, bad_id, "invalid_json", f"line {number}: not valid JSON ({exc})")
    if not isinstance(record, dict):
        kind = type(record).__name__
        return BadLine(number, bad_id, "invalid_record", f"line {number}: expected a JSON object, got {kind}")
    custom_id = custom_id_for(record, id_field)
    if custom_id is None:
        return BadLine(
            number, bad_id, "invalid_id", f"line {number}: {id_field!r} must be a non-empty string or an integer"
        )
    return Row(number, custom_id, record)


def count_lines(path: Path) -> int:
    """Non-blank lines in ``path`` (blocking; run it in a thread)."""
    count = 0
    with path.open("rb") as f:
        tail = b""
        while block := f.read(BLOCK):
            parts = (tail + block).split(b"\n")
            tail = parts.pop()
            count += sum(1 for p in parts if p.strip())
        if tail.strip():
            count += 1
    return count
