"""Following a run's timeline (metrics.jsonl) for the page's charts, as Server-Sent Events.

One event per line, named by the line's kind (``start``, ``sample``, ``end``), its data the line
as written; the event id is ``m<offset>``, the byte offset just past that line, so ``Last-Event-ID``
resumes exactly there. A fresh follower starts at the last ``tail`` lines (720 by default: an hour
at the default 5 s interval), so opening a long run does not send its whole night. The stream ends
with a ``done`` event once an ``end`` line has been relayed and nothing follows it, or when the run
is over and has no timeline (``--metrics-interval 0``); a killed run (no ``end`` line) is followed
on, so its resume shows up live. Files are only read, in worker threads.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import AsyncGenerator, Callable
from pathlib import Path

from runner.run.manifest import MANIFEST, read_manifest
from runner.run.timeline import METRICS
from runner.serve.tail import MAX_LINES, TERMINAL, RunEvent, read_lines, resume_at, tail_start

__all__ = ["follow_timeline", "parse_id"]

_ID = re.compile(r"m(\d{1,18})")
_KINDS = {b'"kind":"start"': "start", b'"kind":"sample"': "sample", b'"kind":"end"': "end"}


def parse_id(text: str) -> int | None:
    """The offset an event id of this stream names, or None if it is not one of ours."""
    match = _ID.fullmatch(text.strip())
    return int(match[1]) if match else None


def _size(path: Path) -> int | None:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return None


def _kind(line: bytes) -> str:
    head = line[:40]  # every line starts with its kind (orjson keeps insertion order)
    return next((kind for key, kind in _KINDS.items() if key in head), "sample")


async def follow_timeline(
    run_dir: Path,
    offset: int | None = None,
    *,
    tail: int = 720,
    interval: float = 0.25,
    recheck: float = 2.0,
    clock: Callable[[], float] = time.monotonic,
) -> AsyncGenerator[RunEvent, None]:
    """Events for ``run_dir``'s timeline from ``offset`` on (from its last ``tail`` lines if None)."""
    path = run_dir / METRICS
    if offset is None:
        pos = await asyncio.to_thread(tail_start, path, tail)
    else:
        pos = await asyncio.to_thread(resume_at, path, offset, tail)
    ended, checked = False, -float("inf")
    while True:
        size = await asyncio.to_thread(_size, path)
        if size is not None and size < pos:
            pos = 0  # replaced (a new run of the same name): follow it from its start
        lines = await asyncio.to_thread(read_lines, path, pos) if size is not None and size > pos else []
        for line in lines:
            pos += len(line)
            if line.strip():
                kind = _kind(line)
                ended = kind == "end"
                yield RunEvent(kind, line.rstrip(b"\r\n").decode(errors="replace"), f"m{pos}")
        if len(lines) >= MAX_LINES:
            continue
        if ended:
            break
        if size is None and clock() - checked >= recheck:
            checked = clock()
            status = (await asyncio.to_thread(read_manifest, run_dir / MANIFEST)).get("status")
            if status in TERMINAL:
                break  # over, with no timeline: nothing will come
        await asyncio.sleep(interval)
    yield RunEvent("done", "{}", f"m{pos}")
