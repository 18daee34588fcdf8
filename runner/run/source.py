"""Streaming the input: JSONL lines become rows with a stable id, or input errors with a line number.

The file is read in fixed-size blocks, never whole, and the ids met so far are kept compactly
(``runner.run.idset``), so memory barely grows with the input: about 16 bytes an id not yet journaled.
Every reader opens the input with ``open_input``: a gzip file (known by its first bytes, whatever
its name) is decompressed as it streams, and a UTF-8 byte-order mark at the start is skipped.
"""

from __future__ import annotations

import asyncio
import codecs
import gzip
import hashlib
import os
import zlib
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

import aiofiles.threadpool
import numpy as np
import numpy.typing as npt
import orjson

from runner.errors import UsageError
from runner.rows import Row
from runner.run.idset import IdSet, keys_of

__all__ = ["BadLine", "Row", "check_input", "count_lines", "custom_id_for", "open_input", "read_rows", "spool"]

BLOCK = 1 << 20
BOM = codecs.BOM_UTF8
GZIP_MAGIC = b"\x1f\x8b"
CHECKED = 8 * BLOCK  # how much of the input check_input reads up front


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
    path: Path, id_field: str | None, skip: IdSet | None = None
) -> AsyncGenerator[list[Row | BadLine], None]:
    """The input's non-blank lines in order, a block at a time, as Rows or BadLines (1-based lines).

    Lines whose id is in ``skip`` (already journaled; it must not change while reading) are
    counted but not returned. The ids met so far are kept as 16-byte keys (a journaled one as a
    flag beside its key in ``skip``), and a block's ids are looked up together.
    """
    journaled = skip if skip is not None else IdSet()
    journaled.compact()
    seen = _Seen(journaled, np.zeros(len(journaled), dtype=np.bool_), IdSet())
    number = 0
    # aiofiles runs each read (plain or gzip: it wraps either) on a thread, so the loop never waits on the disk.
    f = aiofiles.threadpool.wrap(await asyncio.to_thread(open_input, path))
    try:
        tail = b""
        while True:
            block = await f.read(BLOCK)
            lines = (tail + block).split(b"\n")
            tail = b"" if not block else lines.pop()
            found = _Block()
            for raw in lines:
                number += 1
                # The common case inline: this loop runs once per input line, journaled or not.
                try:
                    record = orjson.loads(raw)
                except orjson.JSONDecodeError as exc:
                    if raw.strip():
                        found.bad(BadLine(number, f"line-{number}", "invalid_json", _not_json(number, exc, raw)))
                    continue
                custom_id = record.get(id_field) if id_field is not None and type(record) is dict else None
                if type(custom_id) is not str or not custom_id:
                    item = _parse(record, number, id_field)
                    if isinstance(item, BadLine):
                        found.bad(item)
                        continue
                    custom_id = item.custom_id
                found.numbers.append(number)
                found.ids.append(custom_id)
                found.records.append(record)
            items = seen.sift(found)
            if items:
                yield items
            if not block:
                return
    finally:
        await f.close()


@dataclass
class _Block:
    """One block's lines: the parsed rows side by side, and the bad lines with where they fall."""

    numbers: list[int] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    bad_lines: list[tuple[int, BadLine]] = field(default_factory=list)  # (rows before it, the line)

    def bad(self, line: BadLine) -> None:
        self.bad_lines.append((len(self.ids), line))


@dataclass
class _Seen:
    """The ids met so far: journaled ones flagged by position, the others in their own set."""

    journaled: IdSet
    met_journaled: npt.NDArray[np.bool_]  # indexed by ``journaled.positions``
    met: IdSet  # ids not journaled

    def sift(self, block: _Block) -> list[Row | BadLine]:
        """The block minus journaled rows met for the first time; an id met before becomes a BadLine."""
        keys = keys_of(block.ids)
        at = self.journaled.positions(keys)
        known = at >= 0
        again = np.zeros(len(keys), dtype=np.bool_)
        if known.any():
            where = known.nonzero()[0]
            flags = at[where]
            again[where] = self.met_journaled[flags] | _not_first(flags)
            self.met_journaled[flags] = True
        if not known.all():
            where = (~known).nonzero()[0]
            fresh = keys[where]
            repeat = self.met.contains_keys(fresh) | _not_first(fresh)
            again[where] = repeat
            self.met.add_keys(fresh[~repeat])
        items: list[Row | BadLine] = []
        bad = iter(block.bad_lines)
        pending = next(bad, None)
        for i in (~known | again).nonzero()[0].tolist():
            while pending is not None and pending[0] <= i:
                self._report(pending[1], items)
                pending = next(bad, None)
            if again[i]:
                self._report(_duplicate(block.numbers[i], block.ids[i]), items)
            else:
                items.append(Row(block.numbers[i], block.ids[i], block.records[i]))
        while pending is not None:
            self._report(pending[1], items)
            pending = next(bad, None)
        return items

    def _report(self, line: BadLine, items: list[Row | BadLine]) -> None:
        if line.custom_id not in self.journaled:  # its error record is already journaled
            items.append(line)


def _not_first(values: npt.NDArray[Any]) -> npt.NDArray[np.bool_]:
    """For each value, whether it appeared earlier in ``values``."""
    later = np.ones(len(values), dtype=np.bool_)
    later[np.unique(values, return_index=True)[1]] = False
    return later


def _duplicate(line: int, custom_id: str) -> BadLine:
    message = f"line {line}: id {custom_id!r} appeared earlier in the input; only the first runs"
    return BadLine(line, f"{custom_id}#line-{line}", "duplicate_id", message)


def _not_json(line: int, exc: Exception, raw: bytes) -> str:
    try:
        raw.decode()
    except UnicodeDecodeError as bad:  # past the part check_input read: say what it is, not "surrogates"
        return f"line {line}: not UTF-8 (byte 0x{bad.object[bad.start]:02x} at column {bad.start + 1})"
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
    with open_input(path) as f:
        tail = b""
        while block := f.read(BLOCK):
            parts = (tail + block).split(b"\n")
            tail = parts.pop()
            count += sum(1 for p in parts if p.strip())
        if tail.strip():
            count += 1
    return count


def open_input(path: Path) -> IO[bytes]:
    """``path`` opened for reading bytes: decompressed if it is gzip, past a UTF-8 BOM (blocking)."""
    with path.open("rb") as probe:
        gz = probe.read(len(GZIP_MAGIC)) == GZIP_MAGIC
    f = cast(IO[bytes], gzip.open(path, "rb") if gz else path.open("rb"))  # noqa: SIM115  (the caller closes it)
    if f.read(len(BOM)) != BOM:
        f.seek(0)  # for gzip this rewinds to the start of the stream, cheap this close to it
    return f


def check_input(path: Path, name: str | None = None) -> bool:
    """Whether the input holds anything but white space; a UsageError if it can't be read as UTF-8 JSONL.

    Only the first few MiB are read (blocking), so a wrongly encoded file is refused before any row is
    sent without reading a large input twice; a stray bad line further on becomes that row's error.
    """
    decoder = codecs.getincrementaldecoder("utf-8")()
    content, name = False, name or f"input file {path}"
    try:
        with open_input(path) as f:
            while (at := f.tell()) < CHECKED:
                block = f.read(BLOCK)
                try:
                    decoder.decode(block, final=not block)
                except UnicodeDecodeError as exc:  # exc.object: what the decoder held back, then this block
                    where = at - (len(exc.object) - len(block)) + exc.start
                    of = "of its decompressed content " if isinstance(f, gzip.GzipFile) else ""
                    raise UsageError(
                        f"{name} is not UTF-8: byte 0x{exc.object[exc.start]:02x} at offset {where} "
                        f"{of}is not valid UTF-8 text; convert it first (e.g. iconv -f latin1 -t utf-8)"
                    ) from None
                content = content or bool(block.strip())
                if not block:
                    break
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise UsageError(f"{name} can't be read: {exc}; give a JSONL file, plain or gzip") from None
    return content


def spool(stream: IO[bytes], path: Path) -> None:
    """Copy ``stream`` to ``path`` a block at a time, flushed to disk (blocking)."""
    with path.open("wb") as out:
        while block := stream.read(BLOCK):
            out.write(block)
        out.flush()
        os.fsync(out.fileno())
