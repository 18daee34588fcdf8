"""Reading a Batch API run's records (each once by id, the lane that answered each), bodies and files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.support.files import SECRET


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


def no_secret_in(folder: Path) -> None:
    """No file under ``folder`` holds the test key."""
    for path in folder.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def canonical(bodies: list[dict[str, Any]]) -> list[str]:
    """Request bodies as sorted canonical JSON: the same requests, whatever their order."""
    return sorted(json.dumps(b, sort_keys=True) for b in bodies)
