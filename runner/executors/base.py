"""The seam between a run's coordinator and how its rows reach a model.

    Coordinator ──rows──▶ Feed ──▶ Executor ──records──▶ Outbox ──▶ journal (coordinator only)

An ``Executor`` takes rows from a ``Feed`` and hands each finished row's ``Record`` to the
``Outbox``. It never writes the journal and never decides that a row is done: the coordinator
journals what it is handed, and a row with no record stays to do. It may lose work (a killed
worker, an expired batch), never hand back two records for one row. Permission to send (rate
limits, budget, Retry-After pauses) is asked of the coordinator through ``runner.permits.permits``.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from runner.records import Record
from runner.rows import Row

__all__ = ["Executor", "Feed", "Outbox", "Silent"]


class Outbox(Protocol):
    """Where an executor hands back what it finished, or why it stopped taking rows."""

    def record(self, record: Record) -> None:
        """A finished row, to be journaled."""
        ...

    def budget_reached(self, why: str) -> None:
        """A row did not fit under --max-cost: it stays to do, and the run takes no new rows."""
        ...


class Executor(Protocol):
    """Turns the rows of a feed into records, until the feed ends; says what it did, for the manifest,
    the progress line, ``runner status`` and the live view (which know executors only through this)."""

    @property
    def section(self) -> str:
        """The manifest key its summary goes under ("workers", "batches"); "" for none."""
        ...

    async def execute(self, feed: Feed, outbox: Outbox) -> None:
        """Take rows until the feed ends; return once every row taken has a record or was given up."""
        ...

    def resend(self, rows: list[Row]) -> None:
        """Rows to send after all (the duplicates of a row whose answer failed), each on its own, in this
        executor's lane. Called from inside ``Outbox.record`` while ``execute`` runs: the rows are taken
        before ``execute`` can return."""
        ...

    def summary(self) -> dict[str, Any] | None:
        """The manifest's section for this executor (None: nothing to say)."""
        ...

    def left(self) -> int:
        """Rows taken that it leaves to a later invocation on purpose (waiting in a remote batch, held back by
        --max-cost): they have no record, and no request of theirs is in flight here."""
        ...

    def brief(self) -> str:
        """A few words for the progress line ('' for none)."""
        ...

    def unsettled(self) -> bool:
        """Whether work paid for is not read back yet (a remote batch whose rows were all answered elsewhere):
        the executor then runs even when every row of the run is done, so that work is collected and counted."""
        ...


class Silent:
    """For an executor with nothing of its own to report: no manifest section, no words on the progress line."""

    section = ""

    def summary(self) -> dict[str, Any] | None:
        """Nothing for the manifest."""
        return None

    def brief(self) -> str:
        """Nothing for the progress line."""
        return ""

    def left(self) -> int:
        """Nothing is left to a later invocation on purpose."""
        return 0

    def unsettled(self) -> bool:
        """Nothing paid for waits to be read back."""
        return False


class Feed:
    """Rows from the coordinator to an executor: bounded, ended at the end of the input or by a stop.

    Any number of consumers may ``async for`` over it; each ends when the feed is ended and drained.
    A consumer that takes rows ahead of sending them (Ray's workers) says so with ``holding``: on a
    stop (``stopping``) it gives back the rows it has not started and then calls ``released``.
    """

    def __init__(self, maxsize: int) -> None:
        self._rows: asyncio.Queue[Row | None] = asyncio.Queue()  # None: the end
        self._room = asyncio.Semaphore(maxsize)  # the bound: the producer waits while the feed is full
        self.taken = 0  # rows handed to the executor so far, less those it gave back unstarted
        self.stopping = asyncio.Event()  # set by end(drop=True): no new request may start
        self._holders = 0
        self._settled = asyncio.Event()
        self._settled.set()

    async def put(self, row: Row) -> None:
        """Add a row, waiting while the feed is full (this is what keeps memory flat)."""
        await self._room.acquire()
        self._rows.put_nowait(row)

    def end(self, drop: bool = False) -> None:
        """No more rows; with ``drop``, forget the queued ones too (they stay to do for the next run)."""
        while drop and not self._rows.empty():
            if self._rows.get_nowait() is not None:
                self._room.release()
        self._rows.put_nowait(None)
        if drop:
            self.stopping.set()

    def give_back(self, rows: int) -> None:
        """Rows the executor took but never started, after a stop: they stay to do, with no record."""
        self.taken -= rows

    def holding(self) -> None:
        """A consumer holds rows it has not started yet; on a stop, ``settled`` waits for its ``released``."""
        self._holders += 1
        self._settled.clear()

    def released(self) -> None:
        """A consumer gave back what it held unstarted (or ended)."""
        self._holders -= 1
        if self._holders == 0:
            self._settled.set()

    async def settled(self) -> None:
        """Once no consumer holds rows it has not started: ``taken`` then counts only requests sent."""
        await self._settled.wait()

    def __aiter__(self) -> Feed:
        return self

    async def __anext__(self) -> Row:
        row = await self._rows.get()
        if row is None:
            self._rows.put_nowait(None)  # every other consumer ends too
            raise StopAsyncIteration
        self._room.release()
        self.taken += 1
        return row
