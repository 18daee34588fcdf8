"""Reading a Batch API run's records: each once by id, and which lane answered them."""

from __future__ import annotations

from typing import Any


def by_id(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The records by custom_id (fails if one was journaled twice)."""
    found: dict[str, dict[str, Any]] = {}
    for record in records:
        assert record["custom_id"] not in found, f"{record['custom_id']} journaled twice"
        found[record["custom_id"]] = record
    return found


def via(records: list[dict[str, Any]]) -> dict[str, int]:
    """How many records each lane answered (``meta.via``: batch, online...)."""
    counts: dict[str, int] = {}
    for r in records:
        lane = r["meta"].get("via", "online")
        counts[lane] = counts.get(lane, 0) + 1
    return counts
