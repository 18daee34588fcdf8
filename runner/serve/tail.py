"""Following a run directory as it is written: manifest changes and new journal lines, as events.

Event ids are positions: ``r<results offset>-e<errors offset>``, the byte offsets just past the
last line relayed from results.jsonl and errors.jsonl. Sending one back (``Last-Event-ID``) resumes
exactly there, without reading the lines before it. A follower with no position starts at the last
``tail`` complete lines of each file (20 by default), not at the start of a million-line journal.

- Only complete lines are relayed (up to the last ``\\n``); a line a writer is still writing waits
  for the next tick.
- Each read takes at most ``MAX_LINES`` lines or ``MAX_BYTES`` bytes of a file; while a backlog
  remains the next read follows at once, so memory stays bounded and the client's pace sets ours.
- Changes are found by ``stat()`` every ``interval`` seconds (0.25 by default); every file access
  happens in a worker thread, never on the event loop.
- ``progress`` (the run's status from ``runner.serve.status.read_run``) is sent on connecting, whenever the
  manifest is replaced, and when the status alone changes (a writer dies: ``stopped``; checked every
  ``recheck`` seconds).
- The follow ends with ``end`` once the manifest says the run is over (completed, failed,
  interrupted) and both files have been relayed to their ends. A ``stopped`` run (in progress in its
  manifest, but nothing holds its lock: killed) is not over: the stream stays open, and picks up when
  the same command is run again to resume it.
- A file that shrinks or is replaced (``--retry-failed`` renames errors.jsonl away) is followed from
  its start. Across a reconnection only the size can tell: an offset past the end starts that file
  over, and one that falls inside a line (not an id this stream sent) starts at the tail.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson

from runner.run.journal import ERRORS, RESULTS
from runner.run.manifest import MANIFEST

__all__ = ["MAX_BYTES", "MAX_LINES", "TERMINAL", "Cursor", "RunEvent", "follow", "read_lines", "tail_start"]

MAX_LINES = 200
MAX_BYTES = 1 << 20
TERMINAL = frozenset({"completed", "failed", "interrupted"})
_BLOCK = 1 << 16
_ID = re.compile(r"r(\d{1,18})-e(\d{1,18})")

Status = Callable[[Path], dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a follower is: the byte offset just past the last line relayed from each file."""

    results: int = 0
    errors: int = 0

    @property
    def id(self) -> str:
        """The SSE event id for this position."""
        return f"r{self.results}-e{self.errors}"

    @classmethod
    def parse(cls, text: str) -> Cursor | None:
        """The position an event id names, or None if it is not one of ours."""
        match = _ID.fullmatch(text.strip())
        return cls(int(match[1]), int(match[2])) if match else None


@dataclass(frozen=True, slots=True)
class RunEvent:
    """One thing to tell a follower: ``progress``, ``result``, ``row_error`` or ``end``; ``data`` is JSON."""

    kind: str
    data: str
    id: str


def read_lines(path: Path, offset: int, max_lines: int = MAX_LINES, max_bytes: int = MAX_BYTES) -> list[bytes]:
    """The complete lines of ``path`` from ``offset`` on, newline included, a bounded number (blocking)."""
    lines: list[bytes] = []
    try:
        f = path.open("rb")
    except FileNotFoundError:
        return lines
    with f:
        f.seek(offset)
        size = 0
        while len(lines) < max_lines and size < max_bytes:
            line = f.readline()
            if not line.endswith(b"\n"):
                break  # the end, or a line still being written
            lines.append(line)
            size += len(line)
    return lines


def tail_start(path: Path, lines: int) -> int:
    """The offset where the last ``lines`` complete lines of ``path`` begin; 0 if it has no more (blocking)."""
    try:
        f = path.open("rb")
    except FileNotFoundError:
        return 0
    with f:
        pos = f.seek(0, os.SEEK_END)
        newlines: list[int] = []  # from the end; the first one ends the last complete line
        while pos > 0 and len(newlines) <= lines:
            start = max(0, pos - _BLOCK)
            f.seek(start)
            block = f.read(pos - start)
            at = len(block)
            while len(newlines) <= lines and (at := block.rfind(b"\n", 0, at)) >= 0:
                newlines.append(start + at)
            pos = start
    return newlines[lines] + 1 if len(newlines) > lines else 0


def resume_at(path: Path, offset: int, lines: int) -> int:
    """Where to resume ``path`` for a client that saw up to ``offset`` (blocking).

    There, if a line starts there; 0 if the file is now shorter (replaced since: a new file); the
    last ``lines`` lines if ``offset`` falls inside a line (an id that is not ours, or a stale one).
    """
    try:
        with path.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            if offset > size:
                return 0
            if offset == 0:
                return 0
            f.seek(offset - 1)
            if f.read(1) == b"\n":
                return offset
    except FileNotFoundError:
        return 0
    return tail_start(path, lines)


def _identity(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


class _Follower:
    """The state of one follower; each method that touches files is run in a worker thread."""

    def __init__(self, run_dir: Path, cursor: Cursor, status: Status) -> None:
        self.run_dir, self.cursor, self.status = run_dir, cursor, status
        self.inodes: dict[str, int | None] = {RESULTS: None, ERRORS: None}
        self.manifest: tuple[int, int, int] | None = None

    def manifest_changed(self) -> bool:
        seen, self.manifest = self.manifest, _identity(self.run_dir / MANIFEST)
        return seen != self.manifest

    def read(self, name: str) -> list[bytes]:
        """New complete lines of ``name``; starts it over if it shrank or was replaced."""
        field = "results" if name == RESULTS else "errors"
        offset: int = getattr(self.cursor, field)
        identity = _identity(self.run_dir / name)
        inode, size = (identity[0], identity[1]) if identity else (None, 0)
        known, self.inodes[name] = self.inodes[name], inode
        if size < offset or (known is not None and inode is not None and inode != known):
            offset = 0
            self.cursor = replace(self.cursor, **{field: 0})
        return read_lines(self.run_dir / name, offset) if size > offset else []


async def follow(
    run_dir: Path,
    cursor: Cursor | None = None,
    *,
    tail: int = 20,
    interval: float = 0.25,
    recheck: float = 5.0,
    status: Status | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> AsyncGenerator[RunEvent, None]:
    """Events for ``run_dir`` from ``cursor`` on (from the last ``tail`` lines if None), until the run is over."""
    if status is None:
        from runner.serve.status import read_run

        status = read_run
    if cursor is None:
        starts = await asyncio.gather(*(asyncio.to_thread(tail_start, run_dir / n, tail) for n in (RESULTS, ERRORS)))
    else:
        asked = ((RESULTS, cursor.results), (ERRORS, cursor.errors))
        starts = await asyncio.gather(*(asyncio.to_thread(resume_at, run_dir / n, at, tail) for n, at in asked))
    cursor = Cursor(*starts)
    state = _Follower(run_dir, cursor, status)
    shown: tuple[Any, ...] | None = None
    checked = -float("inf")
    while True:
        changed = await asyncio.to_thread(state.manifest_changed)
        if changed or clock() - checked >= recheck:
            now = await asyncio.to_thread(state.status, run_dir)
            checked, key = clock(), (now.get("status"), now.get("running"))
            if changed or key != shown:
                shown = key
                yield RunEvent("progress", orjson.dumps(now, default=str).decode(), state.cursor.id)
        backlog = False
        for name, kind in ((RESULTS, "result"), (ERRORS, "row_error")):
            lines = await asyncio.to_thread(state.read, name)
            backlog = backlog or len(lines) >= MAX_LINES or sum(map(len, lines)) >= MAX_BYTES
            field = "results" if name == RESULTS else "errors"
            for line in lines:
                state.cursor = replace(state.cursor, **{field: getattr(state.cursor, field) + len(line)})
                if line.strip():
                    yield RunEvent(kind, line.rstrip(b"\r\n").decode(errors="replace"), state.cursor.id)
        if backlog:
            continue
        if shown is not None and shown[0] in TERMINAL:
            yield RunEvent("end", orjson.dumps({"status": shown[0]}).decode(), state.cursor.id)
            return
        await asyncio.sleep(interval)
