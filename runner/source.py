"""Streaming the input: JSONL lines become rows with a stable id, or input errors with a line number.

The file is read in fixed-size blocks, never whole, so memory does not grow with the input.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncGenerator, Container
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


async def read_rows(
    path: Path, id_field: str | None, skip: Container[str] = frozenset()
) -> AsyncGenerator[list[Row | BadLine], None]:
    """The input's non-blank lines in order, a block at a time, as Rows or BadLines (1-based lines).

    Lines whose id is in ``skip`` (already journaled) are counted but not returned.
    """
    seen: set[str] = set()
    number = 0
    async with aiofiles.open(path, "rb") as f:
        tail = b""
        while True:
            block = await f.read(BLOCK)
            lines = (tail + block).split(b"\n")
            tail = b"" if not block else lines.pop()
            items: list[Row | BadLine] = []
            for raw in lines:
                number += 1
                # The common case inline: this loop runs once per input line, journaled or not.
                try:
                    record = orjson.loads(raw)
                except orjson.JSONDecodeError as exc:
                    if raw.strip():
                        items.append(BadLine(number, f"line-{number}", "invalid_json", _not_json(number, exc)))
                    continue
                custom_id = record.get(id_field) if id_field is not None and type(record) is dict else None
                if type(custom_id) is not str or not custom_id:
                    item = _parse(record, number, id_field)
                    if isinstance(item, BadLine):
                        if item.custom_id not in skip:
                            items.append(item)
                        continue
                    custom_id = item.custom_id
                if custom_id in seen:
                    duplicate = _duplicate(number, custom_id)
                    if duplicate.custom_id not in skip:
                        items.append(duplicate)
                    continue
                seen.add(custom_id)
                if custom_id not in skip:
                    items.append(Row(number, custom_id, record))
            if items:
                yield items
            if not block:
                return


def _duplicate(line: int, custom_id: str) -> BadLine:
    message = f"line {line}: id {custom_id!r} appeared earlier in the input; only the first runs"
    return BadLine(line, f"{custom_id}#line-{line}", "duplicate_id", message)


def _not_json(line: int, exc: Exception) -> str:
    return f"line {line}: not valid JSON ({exc})"


def _parse(record: Any, number: int, id_field: str | None) -> Row | BadLine:
    bad_id = f"line-{number}"
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
