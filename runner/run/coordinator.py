"""The coordinator: one per run. It owns the run; an executor only turns rows into records.

Follow one row: ``source.read_rows`` yields it, the producer skips it if the journal already holds
it and puts it on the feed; the executor (``runner.executors``) turns it into a record and hands it
to the outbox; the writer appends it to the journal, counts it in the totals and rewrites the
manifest at most once a second. The coordinator is the only writer of the journal and manifest;
it holds the lock, the fingerprint and resume (``runner.run.resume``), and, through the Caller's
permits, the rate limits and budget.

Stopping: setting ``stop`` ends intake at once; requests in flight get ``grace`` seconds to land in
the journal, then are cancelled. Cancelling the run itself cancels them at once. A writer that
fails (disk full) cancels the executor through the task group. Either way the writer drains what
was finished and the manifest is written before ``run`` returns or raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.call.caller import Caller
from runner.errors import first_runner_error
from runner.executors.base import Executor, Feed
from runner.executors.online import OnlineExecutor
from runner.provider.loop import inline_dispatch
from runner.records import Record, error_record
from runner.run import journal, manifest
from runner.run.cache import CacheSettings
from runner.run.lock import RunLock
from runner.run.manifest import MANIFEST, Totals, iso_now, read_manifest
from runner.run.progress import LogProgress, Progress
from runner.run.resume import Resume, input_stat, start
from runner.run.reuse import PassThrough, Reuse, open_reuse
from runner.run.source import BadLine, count_lines, read_rows
from runner.run.timeline import Timeline

__all__ = ["RunReport", "RunSettings", "run"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunSettings:
    """Where a run reads and writes, and how it behaves."""

    input_path: Path
    run_dir: Path
    run_id: str
    concurrency: int
    grace: float = 30.0  # seconds in-flight requests get to finish after a stop
    retry_failed: bool = False  # run only the rows in errors.jsonl, again
    allow_changes: bool = False  # resume even if the job, model or input changed
    manifest_interval: float = 1.0
    sync_interval: float = 1.0
    metrics_interval: float = 5.0  # seconds between metrics.jsonl samples; 0: no timeline
    cache: CacheSettings | None = None  # the response cache and dedup (runner.run.reuse); None: none


@dataclass(frozen=True)
class RunReport:
    """How a run ended."""

    status: str  # completed, failed, interrupted
    totals: Totals
    total: int | None
    elapsed: float
    run_dir: Path
    stop_reason: str | None = None  # "max_cost" when --max-cost stopped it


async def run(
    caller: Caller,
    settings: RunSettings,
    progress: Progress | None = None,
    stop: asyncio.Event | None = None,
    clock: Callable[[], float] = time.monotonic,
    executor: Executor | None = None,
) -> RunReport:
    """Run every row of the input that the run directory does not already hold (default: online, in-process)."""
    inline_dispatch()  # litellm builds its requests on this thread, not in a pool (runner.provider.loop)
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    executor = executor or OnlineExecutor(caller, settings.concurrency)
    with RunLock(settings.run_dir):
        coordinator = Coordinator(caller, executor, settings, progress or LogProgress(), stop or asyncio.Event(), clock)
        return await coordinator.go()


class Coordinator:
    """One run: the feed to the executor, the outbox back, the journal, totals and manifest."""

    def __init__(
        self,
        caller: Caller,
        executor: Executor,
        settings: RunSettings,
        progress: Progress,
        stop: asyncio.Event,
        clock: Callable[[], float],
    ) -> None:
        self.caller, self.executor, self.settings = caller, executor, settings
        self.progress, self.stop, self.clock = progress, stop, clock
        self.started = clock()
        self.status = "in_progress"
        self.total: int | None = None
        self.failure: list[str] = []
        self.stop_reason: str | None = None
        self.resume = Resume({})
        self.done_at_start = 0
        self.input_read = False
        self.started_with = (0, 0, 0)  # completed, failed, retired rows when this invocation started
        self.feed = Feed(2 * settings.concurrency)
        self.out: asyncio.Queue[Record | None] = asyncio.Queue()
        self.book = journal.Journal(settings.run_dir)
        self.recorded = 0  # records the executor handed back this run
        interval = settings.metrics_interval
        self.timeline = Timeline(settings.run_dir, interval, lambda: self.totals, lambda: caller.limits)
        self.reuse: PassThrough | Reuse = PassThrough(self.feed, self._own)  # answers from the cache, duplicates

    # The outbox: what the executor hands back.
    def record(self, record: Record) -> None:
        """A finished row, for the writer."""
        self.recorded += 1
        self.reuse.returned(record)  # stores an accepted answer; then to the writer, with any duplicates'

    def _own(self, record: Record) -> None:
        """A record the coordinator makes itself (a bad input line, a retired error kept)."""
        self.out.put_nowait(record)

    def budget_reached(self, why: str) -> None:
        """The first row that does not fit under --max-cost stops intake; it and the rest stay to do."""
        if self.stop_reason is None:
            logger.warning("%s: no new requests", why)
            self.stop_reason = "max_cost"
            self.stop.set()

    @property
    def totals(self) -> Totals:
        return self.resume.totals

    def manifest(self) -> dict[str, Any]:
        """The manifest as of now: identity, status, counts and totals."""
        budget = self.caller.budget
        return manifest.contents(
            self.resume.identity,
            self.status,
            self.totals,
            self.total,
            self.clock() - self.started,
            self.totals.done - self.done_at_start,
            errors=self.failure or None,
            max_cost_usd=budget.cap if budget is not None else None,
            stop_reason=self.stop_reason,
            limits=self.caller.limits.summary(),
            input_stat=input_stat(self.settings.input_path),
            checkpoint=self.book.checkpoint(self.totals),
            # The executor's own section, named by its ``section`` ("workers" for Ray, "batches" for the Batch API).
            **({self.executor.section: self.executor.summary()} if self.executor.section else {}),
        )

    def _brief(self) -> str:
        """The progress line's words on limits, and on workers where the executor has them."""
        return ", ".join(s for s in (self.executor.brief(), self.caller.limits.brief()) if s)

    async def write_manifest(self) -> None:
        await self.book.off_loop(manifest.write_manifest, self.settings.run_dir / MANIFEST, self.manifest())

    async def go(self) -> RunReport:
        previous = read_manifest(self.settings.run_dir / MANIFEST)
        self.resume = await start(self.caller, self.settings, previous, not self.executor.unsettled())
        if self.resume.complete:
            self.total, self.status = self.resume.total, "completed"
            logger.info("resuming: %d done, %d failed, 0 to go (complete)", self.totals.completed, self.totals.failed)
            return self._report()
        self.done_at_start = self.totals.done
        # What earlier invocations left, for the "resuming" line (said once the input is counted, by when this
        # invocation may have journaled rows of its own: a first run is no resume).
        self.started_with = (self.totals.completed, self.totals.failed, self.totals.retired)
        if self.caller.budget is not None:
            self.caller.budget.start_from(self.totals.cost_usd)  # what earlier invocations spent counts too
        origin = f"{self.settings.run_dir.resolve()}@{self.resume.identity.get('created_at')}"
        hold = max(10_000, 4 * self.settings.concurrency)
        self.reuse = await open_reuse(self.caller, self.settings.cache, self.settings.run_dir, self.feed, self._own,
                                      origin, hold, self.stop.is_set,
                                      self.executor.resend)  # fmt: skip
        await self.book.open()
        self.timeline.open()
        self.progress.start(self.totals.done, None, self._brief)
        await self.write_manifest()
        try:
            async with asyncio.TaskGroup() as run:  # a writer that dies (disk full) cancels the executor
                run.create_task(self._write())
                counter = run.create_task(self._count())
                sampler = run.create_task(self.timeline.every())
                try:
                    await self._intake_and_execute()
                finally:
                    counter.cancel()
                    sampler.cancel()
                    self.out.put_nowait(None)  # the writer drains what was finished, then ends
            left = self.executor.left()  # waiting in remote batches, held back by --max-cost: said by the executor
            lost = self.feed.taken + self.reuse.resent - self.recorded + self.reuse.unanswered - left
            if lost:  # an executor may lose work (a killed worker, an expired batch), never invent it
                logger.warning("%d rows came back without a record; run the same command again to send them", lost)
            done = self.input_read and not self.stop.is_set() and not lost and not left
            self.status = "completed" if done else "interrupted"
        except asyncio.CancelledError:
            self.status = "interrupted"
            raise  # the run itself was cancelled (a second Ctrl-C): finish below, then propagate
        except BaseExceptionGroup as group:
            self.status = "failed"
            self.failure = list(dict.fromkeys(str(e) for e in _leaves(group)))  # each reason once
            raise _first(group) from None
        finally:
            await self._finish()
        return self._report()

    async def _intake_and_execute(self) -> None:
        """The producer and the executor, with the stop rule; ends when the executor has returned."""
        async with asyncio.TaskGroup() as pipeline:
            producer = pipeline.create_task(self._produce())
            executing = pipeline.create_task(self.executor.execute(self.feed, self))
            stopper = pipeline.create_task(self._stop_when_asked(producer, executing))
            reusing = pipeline.create_task(self.reuse.run())
            try:
                await executing
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if not executing.cancelled() or (current is not None and current.cancelling()):
                    raise  # the run itself was cancelled
                # else the grace period ran out and the stopper cancelled the executor: an interrupted run
            finally:
                stopper.cancel()
                self.reuse.close()  # duplicates of the last rows are answered, then it ends
                if executing.cancelled():
                    reusing.cancel()

    def _report(self) -> RunReport:
        elapsed = self.clock() - self.started
        return RunReport(self.status, self.totals, self.total, elapsed, self.settings.run_dir, self.stop_reason)

    async def _finish(self) -> None:
        """Journal what the writer did not get to (the run was cancelled), close, write the final manifest."""
        leftover = []
        while not self.out.empty():
            if (record := self.out.get_nowait()) is not None:
                leftover.append(record)
        try:
            if leftover:
                await asyncio.shield(self._journal(leftover))
        finally:
            try:
                await asyncio.shield(self.reuse.aclose(self.status == "completed"))
                await self.book.close()
                if self.status == "completed" and self.total is None:
                    self.total = self.totals.done
                self.timeline.close(self.status)
                await self.write_manifest()
            finally:
                self.book.shutdown()
            self.progress.close(self.totals)

    async def _journal(self, records: list[Record]) -> None:
        await self.book.append(records)
        for record in records:
            self.totals.add(record.line, record.ok)
        self.timeline.observe(records)

    async def _count(self) -> None:
        """The input's row count, for progress and the manifest (a thread; the run does not wait for it)."""
        self.total = await asyncio.to_thread(count_lines, self.settings.input_path)
        self.progress.set_total(self.total)
        completed, failed, retired = self.started_with
        if completed or failed or retired:
            retry = self.resume.retry
            to_go = len(retry.by_id) if retry is not None else max(0, self.total - completed - failed)
            logger.info("resuming: %d done, %d failed, %d to go", completed, failed, to_go)

    async def _produce(self) -> None:
        retry = self.resume.retry
        async for items in read_rows(self.settings.input_path, self.caller.job.id_field, skip=self.resume.done):
            rows = []
            for item in items:
                if retry is not None and not retry.wants(item):
                    continue
                if isinstance(item, BadLine):
                    logger.warning("%s ✗ %s: %s", item.custom_id, item.code, item.message,
                                   extra={"custom_id": item.custom_id, "code": item.code})  # fmt: skip
                    meta = {"line": item.line, "finished_at": iso_now()}
                    self._own(error_record(item.custom_id, item.code, item.message, meta))
                else:
                    rows.append(item)
            await self.reuse.put(rows)  # answers from the cache, duplicates held back, the rest to the feed
        if retry is not None:
            for kept in retry.lost():
                self._own(kept)
        self.input_read = True
        self.feed.end()

    async def _stop_when_asked(self, producer: asyncio.Task[None], executing: asyncio.Task[None]) -> None:
        await self.stop.wait()
        producer.cancel()
        self.feed.end(drop=True)  # rows not started yet stay to do for the next run
        grace_ends = asyncio.get_running_loop().time() + self.settings.grace
        with contextlib.suppress(TimeoutError):  # rows taken ahead (Ray's workers) are given back first
            await asyncio.wait_for(self.feed.settled(), self.settings.grace)
        in_flight = self.feed.taken - self.recorded - self.executor.left()
        logger.warning(
            "stopping: no new requests; waiting up to %.0fs for %d in flight", self.settings.grace, in_flight
        )
        await asyncio.sleep(grace_ends - asyncio.get_running_loop().time())
        logger.warning("grace period over: cancelling the requests still in flight")
        executing.cancel()

    async def _write(self) -> None:
        settings, clock = self.settings, self.clock
        last_sync = last_manifest = clock()
        while True:
            batch = [await self.out.get()]
            while not self.out.empty():
                batch.append(self.out.get_nowait())
            await self._journal([r for r in batch if r is not None])
            self.progress.update(self.totals)
            now = clock()
            if now - last_sync >= settings.sync_interval:
                await self.book.sync()
                last_sync = now
            if now - last_manifest >= settings.manifest_interval:
                await self.write_manifest()
                last_manifest = now
            if None in batch:
                return


def _first(group: BaseExceptionGroup) -> BaseException:
    """The error to raise for a failed run: a runner error (the CLI names it) before anything else."""
    found = first_runner_error(group)
    return _leaves(group)[0] if found is group else found


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        found.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return found
