"""The journal: append-only results.jsonl and errors.jsonl, and reading them back on resume.

Each record is one whole line written in one call. Lines are flushed to the OS after every batch
and fsynced at most a second apart and at close, so a crash loses at most the last second's
lines, and a torn final line (a crash mid-write) is cut off and its row run again on resume.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiofiles
import orjson
from aiofiles.threadpool.binary import AsyncBufferedIOBase

from runner.manifest import Totals

__all__ = ["ERRORS", "RESULTS", "RETIRED_PREFIX", "Journal", "Scan", "retire_errors", "scan"]

RESULTS = "results.jsonl"
ERRORS = "errors.jsonl"
RETIRED_PREFIX = "errors.retired-"

logger = logging.getLogger(__name__)


class Journal:
    """The two append-only files of a run directory."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self._files: dict[bool, AsyncBufferedIOBase] = {}

    async def open(self) -> None:
        """Open both files for appending."""
        for ok, name in ((True, RESULTS), (False, ERRORS)):
            self._files[ok] = await aiofiles.open(self.run_dir / name, "ab")

    async def append(self, records: list[tuple[bool, dict[str, Any]]]) -> None:
        """Append each record to results (``True``) or errors (``False``) and flush to the OS."""
        for ok in (True, False):
            data = b"".join(orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for k, r in records if k is ok)
            if data:
                await self._files[ok].write(data)
                await self._files[ok].flush()

    async def sync(self) -> None:
        """Make everything appended so far durable."""
        for f in self._files.values():
            await asyncio.to_thread(os.fsync, f.fileno())

    async def close(self) -> None:
        """Sync and close."""
        if self._files:
            await self.sync()
        for f in self._files.values():
            await f.close()
        self._files.clear()


@dataclass
class Scan:
    """What an existing journal already holds."""

    done: set[str] = field(default_factory=set)
    totals: Totals = field(default_factory=Totals)
    torn: int = 0


def retire_errors(run_dir: Path) -> set[str]:
    """Set errors.jsonl aside so its rows run again (``--retry-failed``); returns their ids (blocking).

    One rename does it, so a crash leaves either the old errors file or the retired one, never both.
    The retired file stays: its answers were paid for, so their tokens and cost still count.
    """
    errors = run_dir / ERRORS
    if not errors.exists():
        return set()
    ids = {r["custom_id"] for r in _records(errors) if isinstance(r.get("custom_id"), str)}
    retired = run_dir / f"{RETIRED_PREFIX}{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.jsonl"
    os.replace(errors, retired)
    _fsync_dir(run_dir)
    return ids


def scan(run_dir: Path) -> Scan:
    """Finished ids and totals rebuilt from the journal; a torn last line is cut off (blocking)."""
    found = Scan()
    for ok, name in ((True, RESULTS), (False, ERRORS)):
        path = run_dir / name
        if path.exists():
            found.torn += _scan_file(path, ok, found)
    for path in sorted(run_dir.glob(f"{RETIRED_PREFIX}*.jsonl")):
        for record in _records(path):
            found.totals.add(record, ok=False, spend_only=True)
    return found


def _records(path: Path) -> Iterator[dict[str, Any]]:
    with path.open("rb") as f:
        for line in f:
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(record, dict):
                yield record


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _scan_file(path: Path, ok: bool, found: Scan) -> int:
    good_end = 0
    torn = 0
    with path.open("rb") as f:
        offset = 0
        for line in f:
            offset += len(line)
            try:
                record = orjson.loads(line) if line.endswith(b"\n") else None
            except orjson.JSONDecodeError:
                record = None
            if not isinstance(record, dict) or not isinstance(record.get("custom_id"), str):
                torn += 1
                continue
            good_end = offset
            found.done.add(record["custom_id"])
            found.totals.add(record, ok)
    if good_end < path.stat().st_size:
        logger.warning("%s: dropping %d damaged line(s) after byte %d; their rows will run again", path, torn, good_end)
        with path.open("r+b") as f:
            f.truncate(good_end)
            os.fsync(f.fileno())
    return torn
