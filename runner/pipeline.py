"""The run: producer → bounded queue → N workers → one writer → journal and manifest.

Follow one row: ``source.read_rows`` yields it, the producer skips it if the journal already has
it, a worker turns it into a record (``worker.Caller``), the writer appends that record to the
journal, counts it in the totals and rewrites the manifest at most once a second.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner import journal
from runner.errors import RunnerError
from runner.manifest import Totals, iso_now, write_manifest
from runner.progress import LogProgress, Progress
from runner.records import error_record
from runner.source import BadLine, Row, count_lines, read_rows
from runner.worker import Caller, Record

__all__ = ["RunReport", "RunSettings", "run"]

logger = logging.getLogger(__name__)
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class RunSettings:
    """Where a run reads and writes, and how hard it pushes."""

    input_path: Path
    run_dir: Path
    run_id: str
    concurrency: int
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


def _input_identity(path: Path) -> dict[str, Any]:
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _job_identity(caller: Caller) -> dict[str, Any]:
    job = caller.job
    source = Path(job.source)
    code = source.read_bytes() if source.is_file() else job.source.encode()
    return {
        "name": job.name,
        "source": job.source,
        "code_sha256": hashlib.sha256(code).hexdigest(),
        "model": caller.model or job.model,
        "timeout": caller.timeout,
        "max_attempts": caller.policy.max_attempts,
        "api_base": caller.api_base,
    }


async def run(
    caller: Caller,
    settings: RunSettings,
    progress: Progress | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> RunReport:
    """Run every row of the input that the run directory does not already hold."""
    started = clock()
    run_dir = settings.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    progress = progress or LogProgress()
    found = await asyncio.to_thread(journal.scan, run_dir)
    totals, done = found.totals, found.done
    if totals.done:
        logger.info("resuming %s: %d done, %d failed", run_dir, totals.completed, totals.failed)

    base = {
        "object": "batch",
        "id": settings.run_id,
        "job": _job_identity(caller),
        "input_file": _input_identity(settings.input_path),
        "output_file": journal.RESULTS,
        "error_file": journal.ERRORS,
        "concurrency": settings.concurrency,
        "created_at": iso_now(),
    }
    state: dict[str, Any] = {"total": None, "status": "in_progress"}

    def manifest() -> dict[str, Any]:
        counts = {"total": state["total"], "completed": totals.completed, "failed": totals.failed}
        return {
            **base,
            "status": state["status"],
            "request_counts": counts,
            **totals.summary(),
            "updated_at": iso_now(),
            "elapsed_s": round(clock() - started, 3),
            **state.get("extra", {}),
        }

    rows: asyncio.Queue[Row | None] = asyncio.Queue(maxsize=2 * settings.concurrency)
    out: asyncio.Queue[Record | None] = asyncio.Queue()
    gate = asyncio.Semaphore(settings.concurrency)
    book = journal.Journal(run_dir)
    await book.open()

    def counted(task: asyncio.Task[int]) -> None:
        if not task.cancelled() and task.exception() is None:
            state["total"] = task.result()
            progress.set_total(task.result())

    count_task = asyncio.create_task(asyncio.to_thread(count_lines, settings.input_path))
    count_task.add_done_callback(counted)
    progress.start(totals.done, None)

    async def produce() -> None:
        async for item in read_rows(settings.input_path, caller.job.id_field):
            if item.custom_id in done:
                continue
            if isinstance(item, BadLine):
                logger.warning("%s ✗ %s: %s", item.custom_id, item.code, item.message)
                meta = {"line": item.line, "finished_at": iso_now()}
                out.put_nowait((False, error_record(item.custom_id, item.code, item.message, meta)))
            else:
                await rows.put(item)
        for _ in range(settings.concurrency):
            await rows.put(None)

    async def work() -> None:
        while (row := await rows.get()) is not None:
            async with gate:
                out.put_nowait(await caller(row))

    async def write() -> None:
        last_sync = last_manifest = clock()
        while True:
            batch = [await out.get()]
            while not out.empty():
                batch.append(out.get_nowait())
            records = [r for r in batch if r is not None]
            await book.append(records)
            for ok, record in records:
                totals.add(record, ok)
            progress.update(totals)
            now = clock()
            if now - last_sync >= settings.sync_interval:
                await book.sync()
                last_sync = now
            if now - last_manifest >= settings.manifest_interval:
                await asyncio.to_thread(write_manifest, run_dir / MANIFEST, manifest())
                last_manifest = now
            if None in batch:
                return

    async def pipeline() -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(produce())
            for _ in range(settings.concurrency):
                group.create_task(work())

    await asyncio.to_thread(write_manifest, run_dir / MANIFEST, manifest())
    writer = asyncio.create_task(write())
    workers = asyncio.create_task(pipeline())
    # A writer that dies (disk full) must stop the workers, or they would call the provider for nothing.
    writer.add_done_callback(lambda t: workers.cancel() if t.cancelled() or t.exception() else None)
    try:
        await workers
        state["status"] = "completed"
    except asyncio.CancelledError:
        state["status"] = "failed" if writer.done() else "interrupted"
        raise
    except BaseExceptionGroup as group:
        state["status"] = "failed"
        state["extra"] = {"errors": [str(e) for e in group.exceptions]}
        raise _unwrap(group) from None
    finally:
        out.put_nowait(None)  # the writer drains what the workers finished, then stops
        writer_error: BaseException | None = None
        try:
            await writer
        except asyncio.CancelledError:
            pass
        except Exception as exc:
            writer_error, state["status"] = exc, "failed"
        count_task.cancel()
        await book.close()
        if state["status"] == "completed" and state["total"] is None:
            state["total"] = totals.done
        await asyncio.to_thread(write_manifest, run_dir / MANIFEST, manifest())
        progress.close(totals)
        if writer_error is not None:
            raise writer_error
    return RunReport(state["status"], totals, state["total"], clock() - started, run_dir)


def _unwrap(group: BaseExceptionGroup) -> BaseException:
    """The first runner error in a task group's failure, so the CLI can name it; else the group."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            inner = _unwrap(exc)
            if inner is not exc:
                return inner
        elif isinstance(exc, RunnerError):
            return exc
    return group
