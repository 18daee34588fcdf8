"""A run's journal records in input order (by ``meta.line``) or in the order they were written, in flat memory.

The journal is in completion order and may hold millions of lines, so nothing here keeps a list of
records. Input order takes two passes. The first reads each journal line's ``meta.line`` by position
(``meta`` is the last key of every record and ``line`` its first, and a quote inside a JSON string is
always escaped, so the last ``"meta":{"line":`` of a line is the real one; a line where that fails
is parsed in full) and spills a 24-byte index entry (line, where, length) into one bucket file per
``BUCKET`` input lines. The second takes the buckets in order, sorts each one's entries by line (a
bucket's index is a few MB however large the run) and reads the records back with ``pread``. Line
numbers are dense, so buckets are even and there is no merge.

The journal is read as it was when the export started (its sizes then), whole lines only, without
the run's lock: a run that is still going is exported as far as it has got, like ``runner status``.
"""

from __future__ import annotations

import heapq
import os
import tempfile
from array import array
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import orjson

from runner.run.journal import ERRORS, RESULTS

__all__ = ["BUCKET", "EMBEDDING_MARK", "Journal", "finished_order", "input_order"]

BUCKET = 1 << 17  # input lines per bucket: its index is 3 MB
FLUSH = 1 << 18  # index entries held before they are appended to their bucket files (6 MB)
META = b'"meta":{"line":'
EMBEDDING_MARK = b'"object":"embedding"'  # how an embedding item looks in orjson's compact output


@dataclass(frozen=True)
class Journal:
    """A run's two journal files, each up to the size it had when the export started."""

    paths: tuple[Path, Path]
    sizes: tuple[int, int]

    @classmethod
    def of(cls, run_dir: Path) -> Journal:
        paths = (run_dir / RESULTS, run_dir / ERRORS)
        return cls(paths, tuple(p.stat().st_size if p.exists() else 0 for p in paths))  # type: ignore[arg-type]

    def lines(self, which: int) -> Iterator[tuple[int, bytes]]:
        """(offset, line) for each whole line of one file, up to its size at the start."""
        if not self.sizes[which]:
            return
        with self.paths[which].open("rb") as f:
            offset, end = 0, self.sizes[which]
            for line in f:
                if offset + len(line) > end or not line.endswith(b"\n"):
                    return  # written after the export started, or torn: not journaled yet
                yield offset, line
                offset += len(line)

    def mentions(self, mark: bytes) -> bool:
        """Whether ``mark`` occurs in the journal (read in blocks, stops at the first hit)."""
        for path, size in zip(self.paths, self.sizes, strict=True):
            if not size:
                continue
            with path.open("rb") as f:
                tail, left = b"", size
                while left > 0:
                    block = f.read(min(left, 1 << 23))
                    left -= len(block)
                    if mark in tail + block[: len(mark)] or mark in block:
                        return True
                    tail = block[-len(mark) :]
                    if not block:
                        break
        return False


def line_of(raw: bytes) -> int:
    """The record's ``meta.line``, read by position when it can be (0 when the record has none)."""
    at = raw.rfind(META)
    if at >= 0:
        start = at + len(META)
        end = start
        while end < len(raw) and 48 <= raw[end] <= 57:
            end += 1
        if start < end < len(raw) and raw[end] in b",}":
            return int(raw[start:end])
    try:
        line = ((orjson.loads(raw) or {}).get("meta") or {}).get("line")
    except (orjson.JSONDecodeError, AttributeError):
        return 0
    return line if isinstance(line, int) and line > 0 else 0


def input_order(journal: Journal, spill: Path | None = None) -> Iterator[tuple[int, bytes]]:
    """(line, raw record) for every journaled record, by input line (records of one line in journal order)."""
    with ExitStack() as stack:
        where = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="runner-export-", dir=spill)))
        buckets = _spill(journal, where)
        fds = [stack.enter_context(_opened(p)) if size else None for p, size in zip(journal.paths, journal.sizes,
                                                                                      strict=True)]  # fmt: skip
        for bucket in sorted(buckets):
            path = where / f"{bucket}.idx"
            entries = np.fromfile(path, dtype=np.uint64).reshape(-1, 3)
            path.unlink()
            entries = entries[np.argsort(entries[:, 0], kind="stable")]
            for start in range(0, len(entries), 8192):  # a slice at a time: Python ints take 12x the space
                for line, at, length in entries[start : start + 8192].tolist():
                    f = fds[at & 1]
                    assert f is not None
                    yield line, os.pread(f.fileno(), length, at >> 1)


def _opened(path: Path) -> IO[bytes]:
    return path.open("rb")


def _spill(journal: Journal, where: Path) -> set[int]:
    """Pass one: every record's (line, offset << 1 | file, length) appended to its bucket's file."""
    held: dict[int, array[int]] = {}
    count, buckets = 0, set()
    for which in (0, 1):
        for offset, raw in journal.lines(which):
            line = line_of(raw)
            bucket = line // BUCKET
            entries = held.get(bucket)
            if entries is None:
                entries = held[bucket] = array("Q")
            entries.extend((line, offset << 1 | which, len(raw)))
            count += 1
            if count >= FLUSH:
                buckets |= _flush(held, where)
                count = 0
    return buckets | _flush(held, where)


def _flush(held: dict[int, array[int]], where: Path) -> set[int]:
    for bucket, entries in held.items():
        with (where / f"{bucket}.idx").open("ab") as f:
            entries.tofile(f)
    flushed = set(held)
    held.clear()
    return flushed


def finished_order(journal: Journal) -> Iterator[dict[str, Any]]:
    """Every journaled record in the order it finished: the two files merged by ``meta.finished_at``."""

    def parsed(which: int) -> Iterator[dict[str, Any]]:
        for _, raw in journal.lines(which):
            try:
                record = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            if isinstance(record, dict):
                yield record

    def finished(record: dict[str, Any]) -> str:
        return str((record.get("meta") or {}).get("finished_at") or "")

    yield from heapq.merge(parsed(0), parsed(1), key=finished)
