"""The journal: append-only results.jsonl and errors.jsonl, and reading them back on resume.

Each record is one whole line written in one call. Lines are flushed to the OS after every batch
and fsynced at most a second apart and at close, so a crash loses at most the last second's
lines, and a torn final line (a crash mid-write) is cut off and its row run again on resume.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

import orjson

from runner.jsonl import objects
from runner.records import ERRORS, RESULTS, Record, custom_id_at_start
from runner.run.idset import IdSet
from runner.run.manifest import Totals

__all__ = ["ERRORS", "RESULTS", "RETIRED_PREFIX", "Journal", "Scan", "retire_errors", "scan", "unchanged_since"]

RETIRED_PREFIX = "errors.retired-"
TAIL = 4096
T = TypeVar("T")

logger = logging.getLogger(__name__)


class Journal:
    """The two append-only files of a run directory.

    A batch of lines is one ``os.write`` per file, on the event loop: it only copies to the page
    cache (~15 µs for a batch), where a thread hop would cost ten times that and queue behind
    litellm's own work in the default thread pool. fsync, which does wait for the disk, runs on the
    journal's own thread.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self._fds: dict[bool, int] = {}
        self._size: dict[bool, int] = {}
        self._tail: dict[bool, bytes] = {}  # the last TAIL bytes of each file, for the checkpoint
        self._disk = ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal")

    async def open(self) -> None:
        """Open both files for appending."""
        for ok, name in ((True, RESULTS), (False, ERRORS)):
            path = self.run_dir / name
            self._fds[ok] = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
            self._size[ok], self._tail[ok] = await self.off_loop(_size_and_tail, path)

    async def off_loop(self, work: Callable[..., T], *args: Any) -> T:
        """Run blocking disk work (fsync, the manifest's write) on the journal's own thread."""
        return await asyncio.get_running_loop().run_in_executor(self._disk, work, *args)

    async def append(self, records: list[Record]) -> None:
        """Append each record to results or errors, as its ``ok`` says (in the OS's hands on return)."""
        for ok in (True, False):
            data = b"".join(orjson.dumps(r.line, option=orjson.OPT_APPEND_NEWLINE) for r in records if r.ok is ok)
            if data:
                _write_all(self._fds[ok], data)
                self._size[ok] += len(data)
                self._tail[ok] = (self._tail[ok] + data[-TAIL:])[-TAIL:]

    def checkpoint(self, totals: Totals) -> dict[str, Any]:
        """The totals as of the journal's current ends; ``scan`` trusts them while the files still end so."""
        files = {
            name: {"bytes": self._size[ok], "tail_sha256": hashlib.sha256(self._tail[ok]).hexdigest()}
            for ok, name in ((True, RESULTS), (False, ERRORS))
        }
        return {"files": files, "totals": totals.to_checkpoint()}

    async def sync(self) -> None:
        """Make everything appended so far durable."""
        for fd in self._fds.values():
            await self.off_loop(os.fsync, fd)

    async def close(self) -> None:
        """Sync and close the files (the thread stays for the last manifest write, until ``shutdown``)."""
        try:
            if self._fds:
                await self.sync()
        finally:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()

    def shutdown(self) -> None:
        """Let the journal's thread go."""
        self._disk.shutdown(wait=False)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _size_and_tail(path: Path, end: int | None = None) -> tuple[int, bytes]:
    with path.open("rb") as f:
        size = f.seek(0, os.SEEK_END) if end is None else end
        f.seek(max(0, size - TAIL))
        return size, f.read(size - max(0, size - TAIL))


@dataclass
class Scan:
    """What an existing journal already holds."""

    done: IdSet = field(default_factory=IdSet)  # 16 bytes an id: a million finished ids take 16 MB
    totals: Totals = field(default_factory=Totals)
    torn: int = 0
    from_checkpoint: bool = False


def retire_errors(run_dir: Path) -> list[dict[str, Any]]:
    """Set errors.jsonl aside so its rows run again (``--retry-failed``); returns its records (blocking).

    One rename does it, so a crash leaves either the old errors file or the retired one, never both.
    The retired file stays: its answers were paid for, so their tokens and cost still count.
    """
    errors = run_dir / ERRORS
    if not errors.exists():
        return []
    records = [r for r in objects(errors) if r is not None and isinstance(r.get("custom_id"), str)]
    retired = run_dir / f"{RETIRED_PREFIX}{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.jsonl"
    os.replace(errors, retired)
    _fsync_dir(run_dir)
    return records


def scan(run_dir: Path, checkpoint: dict[str, Any] | None = None, repair: bool = False) -> Scan:
    """Finished ids and totals rebuilt from the journal (blocking).

    A torn last line (a crash mid-write) is skipped, and with ``repair`` cut off, so that the row's
    new record starts on a line of its own: only a run holding the lock may repair.

    With a ``checkpoint`` (from the manifest) whose files still hold the same bytes up to where it
    was taken, its totals stand for that part of the journal: ids are only picked out of those lines,
    and just the lines after it are parsed in full.
    """
    found = Scan()
    starts = _checkpoint_starts(run_dir, checkpoint)
    if starts is not None and checkpoint is not None:
        found.totals, found.from_checkpoint = Totals.from_checkpoint(checkpoint["totals"]), True
    for ok, name in ((True, RESULTS), (False, ERRORS)):
        path = run_dir / name
        if path.exists():
            start = starts[name] if starts else 0
            if start:
                found.done.update(_ids_before(path, start))
            found.torn += _scan_file(path, ok, found, start, repair)
    if starts is None:
        for path in sorted(run_dir.glob(f"{RETIRED_PREFIX}*.jsonl")):
            for record in filter(None, objects(path)):
                found.totals.add(record, ok=False, spend_only=True)
    return found


def _checkpoint_starts(run_dir: Path, checkpoint: dict[str, Any] | None) -> dict[str, int] | None:
    """Where the checkpoint leaves off in each file, or None if a file no longer matches it."""
    if not checkpoint or "totals" not in checkpoint:
        return None
    starts = {}
    for name in (RESULTS, ERRORS):
        mark = (checkpoint.get("files") or {}).get(name) or {}
        size, path = mark.get("bytes"), run_dir / name
        if not isinstance(size, int):
            return None
        if size == 0:
            starts[name] = 0
            continue
        if not path.exists() or path.stat().st_size < size:
            return None
        if hashlib.sha256(_size_and_tail(path, size)[1]).hexdigest() != mark.get("tail_sha256"):
            return None
        starts[name] = size
    return starts


def unchanged_since(run_dir: Path, checkpoint: dict[str, Any]) -> bool:
    """True if the journal ends exactly where ``checkpoint`` was taken, with the same bytes there."""
    starts = _checkpoint_starts(run_dir, checkpoint)
    if starts is None:
        return False
    return all(((run_dir / n).stat().st_size if (run_dir / n).exists() else 0) == starts[n] for n in starts)


def _ids_before(path: Path, end: int) -> Iterator[str]:
    """The custom_id of every line in the first ``end`` bytes of ``path``."""
    with path.open("rb") as f:
        for line in _limited(f, end):
            custom_id = custom_id_at_start(line)
            yield custom_id if custom_id is not None else orjson.loads(line)["custom_id"]


def _limited(f: IO[bytes], end: int) -> Iterator[bytes]:
    read = 0
    for line in f:
        read += len(line)
        if read > end:
            return
        yield line


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _scan_file(path: Path, ok: bool, found: Scan, start: int = 0, repair: bool = False) -> int:
    good_end = start
    torn = 0
    with path.open("rb") as f:
        offset = f.seek(start)
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
    if good_end < path.stat().st_size and repair:
        logger.warning("%s: dropping %d damaged line(s) after byte %d; their rows will run again", path, torn, good_end)
        with path.open("r+b") as f:
            f.truncate(good_end)
            os.fsync(f.fileno())
    return torn
