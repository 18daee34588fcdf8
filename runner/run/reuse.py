"""Answers reused instead of bought: the response cache and duplicates inside one input.

A stage of the coordinator, in front of every executor:

    producer ──rows──▶ Reuse.put ──misses──▶ Feed ──▶ Executor ──▶ Reuse.returned ──▶ journal
                          │ hits, duplicates                                 │ answers stored
                          └───────────────▶ records ◀── waiting duplicates ◀─┘

For each row it computes the cache key of the exact request (``runner.run.cache.key_of``), then:
a key the cache holds is answered from it (``Caller.settle``: the job parses the cached body as if
it had just arrived; ``meta.cache`` is ``hit``, or ``dedup`` when this very run stored it); a key
already in flight is held back and answered from the first row's answer once the job has accepted
it; anything else goes to the executor. An answer the job rejects now (a changed parser) sends the
row, online. The first row's record and its duplicates' records are handed to the journal together,
so they are written in one go; the answer goes to the cache from a thread of its own, in batches,
never on the event loop. Errors are never shared or stored: a failed first row's duplicates go
back to the executor (``Executor.resend``), each on its own, so they are sent in the run's lane (a
Batch API file, a Ray worker) and never from the coordinator.

Memory: the rows held back are at most ``hold`` (beyond that a duplicate is simply sent), the keys
in flight at most the rows in flight, and answers not yet committed one batch; the store's own
SQLite memory is its 4 MiB page cache, with nothing memory-mapped (``runner.run.cache.PAGE_CACHE``),
whatever the size of the cache file.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from runner.call.caller import Caller
from runner.executors.base import Feed
from runner.provider.provider import Answer
from runner.records import Record
from runner.run.cache import PRIVATE_DIR, CacheSettings, Entry, ResponseCache, key_of
from runner.run.manifest import iso_now
from runner.run.source import Row

__all__ = ["PassThrough", "Reuse", "open_reuse"]

logger = logging.getLogger(__name__)
CHUNK = 256  # rows keyed (on the loop: ~8 ms) and looked up (on the thread) at a time
T = TypeVar("T")

Emit = Callable[[Record], None]


class PassThrough:
    """No reuse (``--no-cache --no-dedup``, or a library run without a cache): rows go straight to the feed."""

    unanswered = 0
    resent = 0

    def __init__(self, feed: Feed, emit: Emit) -> None:
        self.feed, self.emit = feed, emit

    async def put(self, rows: list[Row]) -> None:
        for row in rows:
            await self.feed.put(row)

    def returned(self, record: Record) -> None:
        self.emit(record)

    async def run(self) -> None:
        return None

    def close(self) -> None:
        return None

    async def aclose(self, completed: bool) -> None:
        return None


async def open_reuse(
    caller: Caller,
    cache: CacheSettings | None,
    run_dir: Path,
    feed: Feed,
    emit: Emit,
    origin: str,
    hold: int,
    stopping: Callable[[], bool],
    resend: Callable[[list[Row]], None],
) -> PassThrough | Reuse:
    """The stage the settings ask for; the store is opened on the stage's own thread. ``origin`` names
    the run (its directory and creation time); ``emit`` hands a record to the journal's writer."""
    if cache is None or not cache.active:
        return PassThrough(feed, emit)
    private = cache.directory is None
    directory = run_dir / PRIVATE_DIR if cache.directory is None else cache.directory
    thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cache")
    loop = asyncio.get_running_loop()
    try:
        store = await loop.run_in_executor(thread, ResponseCache, directory, cache.max_size)
    except BaseException:
        thread.shutdown(wait=False)
        raise
    tag = hashlib.blake2b(origin.encode(), digest_size=8).hexdigest()
    stage = Reuse(caller, feed, emit, store, thread, tag, dedup=cache.dedup, hold=hold, private=private)
    stage.stopping, stage.resend = stopping, resend
    return stage


class Reuse:
    """The cache and the in-flight dedup for one run (see the module's docstring)."""

    def __init__(
        self,
        caller: Caller,
        feed: Feed,
        emit: Emit,
        store: ResponseCache,
        thread: ThreadPoolExecutor,
        origin: str,
        *,
        dedup: bool = True,
        hold: int = 10_000,
        private: bool = False,
    ) -> None:
        self.caller, self.feed, self.emit, self.store = caller, feed, emit, store
        self.thread, self.origin, self.dedup, self.hold, self.private = thread, origin, dedup, hold, private
        self.stopping: Callable[[], bool] = lambda: False  # the coordinator's stop: send nothing more
        self.resend: Callable[[list[Row]], None] = lambda rows: None  # the executor's resend
        self.resent = 0  # rows handed back to the executor after their first row failed
        self.waiting: dict[bytes, list[Row]] = {}  # key in flight -> the rows held back for its answer
        self.leaders: dict[str, bytes] = {}  # custom_id of a row sent -> its key
        self.held = 0
        self.unanswered = 0  # rows held back that got no record (the run stopped first): they stay to do
        self.recent: dict[bytes, tuple[int, Entry]] = {}  # stored, maybe not yet visible to a lookup
        self.unwritten: list[tuple[bytes, Entry]] = []
        self.batches = 0  # write batches handed to the thread so far
        self._returns: asyncio.Queue[tuple[Record, bytes, list[Row]] | None] = asyncio.Queue()
        self._wake_writer = asyncio.Event()
        self._closing = False

    async def _off_loop(self, work: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.thread, work, *args)

    # The producer's side.
    async def put(self, rows: list[Row]) -> None:
        """Answer what can be answered, hold back duplicates of rows in flight, feed the rest."""
        loop = asyncio.get_running_loop()
        ahead: tuple[list[tuple[Row, bytes | None]], asyncio.Future[Any]] | None = None
        for start in range(0, len(rows), CHUNK):
            keyed = [(row, self._key(row)) for row in rows[start : start + CHUNK]]
            keys = [k for _, k in keyed if k is not None]
            # The next chunk is looked up while this one is placed: the loop does not wait on the store.
            lookup = loop.run_in_executor(self.thread, self.store.get_many, keys)
            if ahead is not None:
                await self._place(*ahead)
            ahead = (keyed, lookup)
        if ahead is not None:
            await self._place(*ahead)

    async def _place(self, keyed: list[tuple[Row, bytes | None]], lookup: asyncio.Future[Any]) -> None:
        found, committed = await lookup
        for row, key in keyed:
            if key is None:
                await self.feed.put(row)  # the row can't be built, or isn't plain JSON: never reused
                continue
            # ``recent`` covers answers stored since the lookup began (read after it, with no await between).
            entry = found.get(key) or self._recent(key)
            if entry is not None and (self.dedup or entry.origin != self.origin) and await self._answer(row, entry):
                continue  # else the job rejects the stored answer now: the row is asked again
            if key in self.waiting and self.dedup and self.held < self.hold:
                self.waiting[key].append(row)
                self.held += 1
                continue
            self.leaders[row.custom_id] = key
            self.waiting.setdefault(key, [])
            await self.feed.put(row)
        self._forget(committed)

    def _key(self, row: Row) -> bytes | None:
        request, _ = self.caller.request(row)
        if request is None:
            return None
        return key_of(self.caller.served_by(request), self.caller.credentials_for(request["model"]))

    def _recent(self, key: bytes) -> Entry | None:
        stored = self.recent.get(key)
        return stored[1] if stored is not None else None

    def _forget(self, committed: int) -> None:
        """Drop the answers any lookup begun from now on finds in the store (their batch was committed
        before the last lookup began)."""
        if self.recent and committed:
            self.recent = {k: v for k, v in self.recent.items() if v[0] > committed}

    async def _answer(self, row: Row, entry: Entry, held: bool = False) -> Record | None:
        """The row's record from a stored answer (handed to the journal unless ``held``); None if the job
        rejects the answer now (a changed parser): then the row is asked online."""
        if self.caller.job.reasks:  # settle would re-ask a rejected answer online, here: see first if it is accepted
            try:
                self.caller.parse(entry.body)
            except Exception:
                return None
        how = "dedup" if held or entry.origin == self.origin else "hit"
        meta = {"cache": how, "cost_usd": 0.0, "cached_cost_usd": entry.cost_usd, "finished_at": iso_now()}
        record = await self.caller.settle(row, Answer(entry.body, entry.request_id, entry.cost_usd, {}), meta)
        if not record.ok:
            return None  # rejected (with no re-asks, settle sent nothing): the row is asked online
        if not held:
            self.emit(record)
        return record

    # The executor's side.
    def returned(self, record: Record) -> None:
        """A record from the executor: store an accepted answer; answer or release the rows that waited.
        A failed first row's duplicates go back to the executor at once, each on its own (errors are never
        shared), so they are sent in the executor's lane (a batch, a worker), never from here."""
        key = self.leaders.pop(record.custom_id, None)
        if key is None:
            self.emit(record)
            return
        if record.ok and (entry := _entry(record, self.origin)) is not None:
            self._store(key, entry)
        waiters = self.waiting.pop(key, None)
        if not waiters:
            self.emit(record)
            return
        if not record.ok:
            self.emit(record)
            self.held -= len(waiters)
            self._resend(waiters, key)
            return
        self._returns.put_nowait((record, key, waiters))  # settled on the stage's task, emitted together

    def _resend(self, rows: list[Row], key: bytes) -> None:
        """Rows to be asked on their own, through the executor; an accepted answer is stored as any other."""
        if self.stopping():
            self.unanswered += len(rows)  # they stay to do
            return
        for row in rows:
            self.leaders[row.custom_id] = key
        self.resent += len(rows)
        self.resend(rows)

    def _store(self, key: bytes, entry: Entry) -> None:
        self.recent[key] = (self.batches + 1, entry)  # it goes in the next batch
        self.unwritten.append((key, entry))
        self._wake_writer.set()

    async def run(self) -> None:
        """The stage's own work until ``close``: settling held-back rows, writing answers to the cache."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._write())
            await self._settle()

    def close(self) -> None:
        """No more records will come from the executor: finish what is queued, flush the writes, end ``run``."""
        self._returns.put_nowait(None)

    async def _settle(self) -> None:
        while (item := await self._returns.get()) is not None:
            record, key, waiters = item
            self.held -= len(waiters)
            entry = _entry(record, self.origin) if record.ok else None
            answered = [await self._answer(row, entry, held=True) for row in waiters] if entry is not None else []
            for each in [record, *filter(None, answered)]:  # one writer batch: the duplicates' lines with the first's
                self.emit(each)
            # An answer the job rejects now for a duplicate (a parser that changed its mind): that row is
            # asked on its own, through the executor.
            rejected = [row for row, got in zip(waiters, answered or [None] * len(waiters), strict=True) if got is None]
            if rejected:
                self._resend(rejected, key)
        self.unanswered += self.held  # still waiting on a first row that never came back (lost, or stopped)
        self._closing = True
        self._wake_writer.set()

    async def _write(self) -> None:
        """Answers to the store, a batch per trip to its thread, until the stage closes."""
        while True:
            await self._wake_writer.wait()
            self._wake_writer.clear()
            if self.unwritten:
                batch, self.unwritten = self.unwritten, []
                self.batches += 1
                try:
                    await self._off_loop(self.store.put_many, batch)
                except Exception as exc:  # a full disk must not stop the run: the journal has the answers
                    logger.warning("could not write %d answers to the response cache: %s", len(batch), exc)
                self._wake_writer.set()  # look again: more may have come meanwhile
            elif self._closing:
                return

    async def aclose(self, completed: bool) -> None:
        """Write what is left, close the store on its thread; a run-private store goes once the run is complete."""
        try:
            if self.unwritten:  # the stage was cancelled before its writer got to these
                batch, self.unwritten = self.unwritten, []
                await self._off_loop(self.store.put_many, batch)
            await self._off_loop(self.store.close)
            if self.private and completed:
                await self._off_loop(shutil.rmtree, self.store.directory, True)
        finally:
            self.thread.shutdown(wait=False)


def _entry(record: Record, origin: str) -> Entry | None:
    """What to store for an accepted answer: the body and all that was paid for this row's answer."""
    response = record.line.get("response") or {}
    body, meta = response.get("body"), record.line.get("meta") or {}
    if not isinstance(body, dict) or meta.get("cache"):
        return None
    cost = meta.get("cost_usd")
    for spent in meta.get("reasked") or []:  # rejected answers on the way were paid for too
        if isinstance(cost, int | float) and isinstance(spent.get("cost_usd"), int | float):
            cost += spent["cost_usd"]
    return Entry(body, response.get("request_id"), cost if isinstance(cost, int | float) else None, origin)
