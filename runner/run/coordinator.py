"""The run: producer → bounded queue → N workers → one writer → journal and manifest.

Follow one row: ``source.read_rows`` yields it, the producer skips it if the journal already has
it, a worker turns it into a record (``worker.Caller``), the writer appends that record to the
journal, counts it in the totals and rewrites the manifest at most once a second.

Stopping: setting ``stop`` ends intake at once; requests in flight get ``grace`` seconds to land in
the journal, then are cancelled. Cancelling the run itself cancels them at once. Either way the
writer drains what was finished and the manifest is written before ``run`` returns or raises.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.call.budget import BudgetReached
from runner.call.caller import Caller, Record
from runner.errors import RunChangedError, first_runner_error
from runner.records import error_record
from runner.redact import redact
from runner.run import fingerprint, journal
from runner.run.idset import IdSet
from runner.run.lock import RunLock
from runner.run.manifest import MANIFEST, Totals, iso_now, read_manifest, write_manifest
from runner.run.progress import LogProgress, Progress
from runner.run.source import BadLine, Row, count_lines, read_rows

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
) -> RunReport:
    """Run every row of the input that the run directory does not already hold."""
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    with RunLock(settings.run_dir):
        return await _Run(caller, settings, progress or LogProgress(), stop or asyncio.Event(), clock).go()


class _Run:
    """One run's state: the totals, the queues and the manifest it keeps writing."""

    def __init__(
        self, caller: Caller, settings: RunSettings, progress: Progress, stop: asyncio.Event, clock: Callable[[], float]
    ) -> None:
        self.caller, self.settings, self.progress, self.stop, self.clock = caller, settings, progress, stop, clock
        self.started = clock()
        self.status = "in_progress"
        self.total: int | None = None
        self.failure: list[str] = []
        self.stop_reason: str | None = None
        self.totals = Totals()
        self.done = IdSet()  # journaled ids, compact (runner.run.idset)
        self.only: set[str] | None = None  # --retry-failed: just these ids
        self.input_read = False
        self.done_at_start = 0
        self.in_flight = 0
        self.producer: asyncio.Task[None] | None = None
        self.rows: asyncio.Queue[Row | None] = asyncio.Queue(maxsize=2 * settings.concurrency)
        self.out: asyncio.Queue[Record | None] = asyncio.Queue()
        self.gate = asyncio.Semaphore(settings.concurrency)
        self.book = journal.Journal(settings.run_dir)
        self.base: dict[str, Any] = {}

    @property
    def manifest_path(self) -> Path:
        return self.settings.run_dir / MANIFEST

    def manifest(self) -> dict[str, Any]:
        """The manifest as of now: identity, status, counts and totals."""
        counts = {"total": self.total, "completed": self.totals.completed, "failed": self.totals.failed}
        extra: dict[str, Any] = {"errors": self.failure} if self.failure else {}
        if self.caller.budget is not None:
            extra["max_cost_usd"] = self.caller.budget.cap
        if self.stop_reason:
            extra["stop_reason"] = self.stop_reason
        elapsed = round(self.clock() - self.started, 3)
        summary = self.totals.summary()
        return {
            **self.base,
            "status": self.status,
            "request_counts": counts,
            **summary,
            **extra,
            "limits": self.caller.limits.summary(),
            "rows_per_s": round((self.totals.done - self.done_at_start) / max(elapsed, 1e-9), 3),
            "updated_at": iso_now(),
            "elapsed_s": elapsed,
            "checkpoint": self.book.checkpoint(self.totals),
        }

    async def write_manifest(self) -> None:
        await asyncio.to_thread(write_manifest, self.manifest_path, self.manifest())

    async def go(self) -> RunReport:
        previous = read_manifest(self.manifest_path)
        await self._check_fingerprint(previous)
        settings = self.settings
        if not settings.retry_failed and await asyncio.to_thread(self._already_complete, previous):
            self.totals = Totals.from_checkpoint(previous["checkpoint"]["totals"])
            self.total, self.status = previous["request_counts"]["total"], "completed"
            logger.info("resuming: %d done, %d failed, 0 to go (complete)", self.totals.completed, self.totals.failed)
            return self._report()
        if settings.retry_failed:
            self.only = await asyncio.to_thread(journal.retire_errors, settings.run_dir)
            logger.info("retrying %d failed rows", len(self.only))
        checkpoint = None if settings.retry_failed else previous.get("checkpoint")
        found = await asyncio.to_thread(journal.scan, settings.run_dir, checkpoint)
        self.totals, self.done = found.totals, found.done
        self.done_at_start = self.totals.done
        if self.caller.budget is not None:
            self.caller.budget.spent = self.totals.cost_usd  # what earlier invocations spent counts too
        await self.book.open()
        count_task = asyncio.create_task(asyncio.to_thread(count_lines, settings.input_path))
        count_task.add_done_callback(self._counted)
        self.progress.start(self.totals.done, None, self.caller.limits.brief)
        await self.write_manifest()

        writer = asyncio.create_task(self._write())
        workers = asyncio.create_task(self._work())
        stopper = asyncio.create_task(self._stop_when_asked(workers))
        # A writer that dies (disk full) must stop the workers, or they would call the provider for nothing.
        writer.add_done_callback(lambda t: workers.cancel() if t.cancelled() or t.exception() else None)
        try:
            await workers
            # A stop after the last row was read may still have dropped queued rows: not complete.
            self.status = "completed" if self.input_read and not self.stop.is_set() else "interrupted"
        except asyncio.CancelledError:
            self.status = "failed" if writer.done() else "interrupted"
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # the run itself was cancelled (a second Ctrl-C): clean up below, then propagate
        except BaseExceptionGroup as group:
            self.status = "failed"
            self.failure = [str(e) for e in group.exceptions]
            raise first_runner_error(group) from None
        finally:
            stopper.cancel()
            count_task.cancel()
            await self._finish(writer)
        return self._report()

    def _report(self) -> RunReport:
        elapsed = self.clock() - self.started
        return RunReport(self.status, self.totals, self.total, elapsed, self.settings.run_dir, self.stop_reason)

    async def _finish(self, writer: asyncio.Task[None]) -> None:
        """Let the writer drain, close the journal, write the final manifest; re-raise a writer failure."""
        self.out.put_nowait(None)
        writer_error: BaseException | None = None
        try:
            await writer
        except asyncio.CancelledError:
            pass
        except Exception as exc:
            writer_error, self.status = exc, "failed"
        await self.book.close()
        if self.status == "completed" and self.total is None:
            self.total = self.totals.done
        await self.write_manifest()
        self.progress.close(self.totals)
        if writer_error is not None:
            raise writer_error

    def _already_complete(self, previous: dict[str, Any]) -> bool:
        """A completed run whose input and journal have not changed since: nothing to read or send."""
        if previous.get("status") != "completed" or not isinstance(previous.get("checkpoint"), dict):
            return False
        old_input = (previous.get("fingerprint") or {}).get("input") or {}
        if old_input.get("size") != self.settings.input_path.stat().st_size:
            return False  # it grew (or the check above let a change through): there may be new rows
        return journal.unchanged_since(self.settings.run_dir, previous["checkpoint"])

    async def _check_fingerprint(self, previous: dict[str, Any]) -> None:
        caller, settings = self.caller, self.settings
        identity = await fingerprint.of_run(caller, settings.input_path)
        model = identity["model"]
        old = previous.get("fingerprint")
        if isinstance(old, dict):
            changed = fingerprint.changes(old, identity, settings.input_path)
            if changed and not settings.allow_changes:
                raise RunChangedError(
                    f"run {settings.run_dir} was started differently: {'; '.join(changed)}. "
                    "Start a new run with --run-id NEW, or resume this one anyway with --allow-changes"
                )
            for change in changed:
                logger.warning("resuming anyway (--allow-changes): %s", change)
        self.base = {
            "object": "batch",
            "id": settings.run_id,
            "job": {
                "name": caller.job.name,
                "source": caller.job.source,
                "model": model,
                "timeout": caller.timeout,
                "max_attempts": caller.policy.max_attempts,
                "api_base": redact(caller.api_base) if caller.api_base else None,
            },
            "input_file": identity["input"],
            "output_file": journal.RESULTS,
            "error_file": journal.ERRORS,
            "concurrency": settings.concurrency,
            "fingerprint": identity,
            "created_at": previous.get("created_at") or iso_now(),
        }

    def _counted(self, task: asyncio.Task[int]) -> None:
        if task.cancelled() or task.exception() is not None:
            return
        self.total = task.result()
        self.progress.set_total(self.total)
        if self.totals.done or self.totals.retired:
            to_go = len(self.only) if self.only is not None else max(0, self.total - self.totals.done)
            logger.info("resuming: %d done, %d failed, %d to go", self.totals.completed, self.totals.failed, to_go)

    async def _produce(self) -> None:
        async for items in read_rows(self.settings.input_path, self.caller.job.id_field, skip=self.done):
            for item in items:
                if self.only is not None and item.custom_id not in self.only:
                    continue
                if isinstance(item, BadLine):
                    logger.warning("%s ✗ %s: %s", item.custom_id, item.code, item.message)
                    meta = {"line": item.line, "finished_at": iso_now()}
                    self.out.put_nowait((False, error_record(item.custom_id, item.code, item.message, meta)))
                else:
                    await self.rows.put(item)
        self.input_read = True
        for _ in range(self.settings.concurrency):
            await self.rows.put(None)

    async def _work(self) -> None:
        async def worker() -> None:
            while (row := await self.rows.get()) is not None:
                async with self.gate:
                    self.in_flight += 1
                    try:
                        self.out.put_nowait(await self.caller(row))
                    except BudgetReached as exc:
                        self._budget_reached(str(exc))
                    finally:
                        self.in_flight -= 1

        async with asyncio.TaskGroup() as group:
            self.producer = group.create_task(self._produce())
            for _ in range(self.settings.concurrency):
                group.create_task(worker())

    def _budget_reached(self, why: str) -> None:
        """The first row that does not fit under --max-cost stops intake; it and the rest stay to do."""
        if self.stop_reason is None:
            logger.warning("%s: no new requests", why)
            self.stop_reason = "max_cost"
            self.stop.set()

    async def _stop_when_asked(self, workers: asyncio.Task[None]) -> None:
        await self.stop.wait()
        if self.producer is not None:
            self.producer.cancel()
        while not self.rows.empty():  # rows not started yet stay pending for the next run
            self.rows.get_nowait()
        for _ in range(self.settings.concurrency):
            self.rows.put_nowait(None)
        logger.warning(
            "stopping: no new requests; waiting up to %.0fs for %d in flight", self.settings.grace, self.in_flight
        )
        await asyncio.sleep(self.settings.grace)
        logger.warning("grace period over: cancelling the requests still in flight")
        workers.cancel()

    async def _write(self) -> None:
        settings, clock = self.settings, self.clock
        last_sync = last_manifest = clock()
        while True:
            batch = [await self.out.get()]
            while not self.out.empty():
                batch.append(self.out.get_nowait())
            records = [r for r in batch if r is not None]
            await self.book.append(records)
            for ok, record in records:
                self.totals.add(record, ok)
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
