"""The batch executor: rows go out through the provider's Batch API at batch prices, with online rescue.

    feed ─▶ rows of a batch already submitted (ledger) ─▶ wait for that batch
         └▶ new rows ─▶ chunks within the provider's limits ─▶ ledger intent ─▶ upload, create ─▶ ledger created
    poll ─▶ a finished batch's output ─▶ Caller.settle (the job's parser, as online) ─▶ outbox
         └▶ failed lines, a failed batch, rows past --batch-deadline ─▶ the online executor ─▶ outbox

Exactly-once stays the coordinator's: a row is handed back once, by whichever lane claims it first
(an answer that arrives for a row already claimed is counted as a duplicate and dropped), and a row
whose batch is still running comes back through the feed on the next invocation and waits on the
same batch again (its id is in the ledger), so nothing is submitted twice. Budget: a chunk's worst
case at batch prices is reserved before it is submitted and settled when its output is read.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.call.budget import BudgetReached
from runner.call.caller import Caller
from runner.call.failures import Disposition, ProviderFailure
from runner.clock import iso_now
from runner.errors import FatalProviderError
from runner.executors.base import Feed, Outbox
from runner.executors.batch_api import BatchApi, Remote
from runner.executors.batch_collect import read_output
from runner.executors.batch_ledger import TERMINAL, Chunk, Ledger
from runner.executors.batch_lines import batch_limits, line_of, provider_of, worst_case
from runner.executors.online import OnlineExecutor
from runner.rows import Row

__all__ = ["BatchExecutor", "BatchOptions", "batch_limits"]  # batch_limits: from batch_lines

logger = logging.getLogger(__name__)
DRAIN_POLLS = 3  # polls a cancelled batch gets to report what it finished anyway


@dataclass(frozen=True)
class BatchOptions:
    """``--batch-api`` and its flags."""

    wait: bool = True  # --no-wait: submit, collect what is finished, exit
    deadline_s: float | None = None  # --batch-deadline, from the run's first submission
    poll_s: float = 60.0  # the longest pause between polls (they start at 1 s and back off)
    batch_size: int | None = None  # rows per batch at most (default: the provider's limit)
    window: str = "24h"
    submit_attempts: int = 5  # failed submissions in a row (other than enqueued-token refusals) before giving up

    @property
    def rescue_margin(self) -> float:
        """How long before the deadline the online rescue starts: a tenth of it, at most 30 minutes."""
        return min(0.1 * (self.deadline_s or 0.0), 1800.0)


@dataclass
class _Pending:
    rows: list[Row] = field(default_factory=list)
    lines: list[bytes] = field(default_factory=list)
    size: int = 0
    worst: float = 0.0


class BatchExecutor:
    """Rows through the Batch API (``--batch-api``); see the module docstring."""

    def __init__(
        self,
        caller: Caller,
        run_dir: Path,
        concurrency: int,
        options: BatchOptions | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.caller, self.run_dir, self.concurrency = caller, run_dir, concurrency
        self.options = options or BatchOptions()
        self.clock, self.sleep = clock, sleep
        self.ledger: Ledger | None = None
        self.owner: dict[str, int] = {}  # custom id -> the chunk whose batch will answer it
        self.waiting: dict[int, dict[str, Row]] = {}  # chunk -> its rows this invocation still waits for
        self.draining: dict[int, int] = {}  # cancelled chunk -> polls left to see what it finished anyway
        self.pending: dict[str, _Pending] = {}  # model -> rows not yet submitted
        self.deferred: list[Row] = []  # rows to submit again later
        self.defer_until = 0.0
        self.failed_submits = 0
        self.reserved: dict[int, float] = {}  # chunk -> its worst case held against --max-cost
        self.counts: Counter[str] = Counter()
        self.duplicate_cost = 0.0
        self.rescue = Feed(2 * concurrency)
        self._rescuer = OnlineExecutor(caller, concurrency)  # the rescue lane
        self._watched = False  # every batch was collected: what comes back now goes to the rescue
        self._apis: dict[str, BatchApi] = {}

    # -- the seam --------------------------------------------------------------------

    async def execute(self, feed: Feed, outbox: Outbox) -> None:
        """Submit, wait (unless --no-wait), collect, rescue; every row taken gets a record or stays to do."""
        self.ledger = await asyncio.to_thread(Ledger, self.run_dir)
        try:
            await self._reconcile()
            async with asyncio.TaskGroup() as lanes:
                lanes.create_task(self._rescuer.execute(self.rescue, outbox))
                try:
                    async for row in feed:
                        await self._take(row, outbox)
                    for model in list(self.pending):
                        await self._submit(model, outbox)
                    await self._watch(outbox)
                    self._watched = True
                finally:
                    self.rescue.end()
        finally:
            self.ledger.close()
        left = sum(len(rows) for rows in self.waiting.values()) + len(self.deferred)
        if left:
            logger.info("%d rows wait in %d batches; run the same command again to collect them", left,
                        len(self.waiting))  # fmt: skip

    section = "batches"  # the manifest section summary() fills

    def resend(self, rows: list[Row]) -> None:
        """Submitted in a batch of their own at the next look at the batches; once nothing is left to look at
        (their first copy failed in the online rescue, after the last batch), sent by the rescue."""
        if self._watched:
            self._rescuer.resend(rows)
            return
        self.deferred.extend(rows)
        self.defer_until = min(self.defer_until, self.clock())

    def brief(self) -> str:
        return ""

    def summary(self) -> dict[str, Any] | None:
        """The manifest's ``batches``: the remote batches and what became of their rows."""
        if self.ledger is None:
            return None
        now = self.clock()
        chunks = [c for c in self.ledger.chunks.values() if c.batch_id]
        deadline = self.ledger.started_at + self.options.deadline_s if self.options.deadline_s else None
        return {
            "submitted": len(chunks),
            "by_status": dict(Counter(c.status for c in chunks)),
            "rows_waiting": sum(len(rows) for rows in self.waiting.values()),
            "open": [c.view(now) for c in chunks if c.open],
            "deadline_at": iso_now(deadline) if deadline else None,
            "resubmitted": self.counts["resubmitted"],
            "rescued_online": self.counts["rescued_online"],
            "refused_enqueued_tokens": self.counts["refused"],
            "duplicates_ignored": self.counts["duplicates"],
            "duplicates_cost_usd": round(self.duplicate_cost, 8),
        }

    # -- intake ----------------------------------------------------------------------

    async def _reconcile(self) -> None:
        """Chunks that were about to be created when a run stopped: find their batches, or free their rows."""
        ledger = self._ledger
        intents = {n: c for n, c in ledger.chunks.items() if c.batch_id is None and c.status != "void"}
        for chunk in intents.values():
            remote = await self._find(chunk)
            if remote is None:
                await asyncio.to_thread(ledger.void, chunk, "never created")
            else:
                logger.info("batch %s of chunk %d was created before the last run stopped", remote.id, chunk.number)
                await asyncio.to_thread(ledger.created, chunk, remote.id, remote.status, remote.created_at,
                                        remote.expires_at)  # fmt: skip
        budget = self.caller.budget
        for number in sorted(ledger.chunks):
            chunk = ledger.chunks[number]
            if chunk.batch_id is None or chunk.status == "void":
                continue
            for custom_id in await asyncio.to_thread(ledger.ids, number):
                self.owner[custom_id] = number
            if budget is not None and not chunk.collected:  # already submitted: held, never refused
                budget.hold(chunk.worst_usd)
                self.reserved[number] = chunk.worst_usd

    async def _find(self, chunk: Chunk) -> Remote | None:
        """This run's batch for ``chunk`` in the provider's list (newest first; stops at the run's start)."""
        ledger = self._ledger
        async for remote in self._api(chunk.model).listed():
            if remote.metadata.get("runner_run") == ledger.token and remote.metadata.get("runner_chunk") == str(
                chunk.number
            ):
                return remote
            if remote.created_at is not None and remote.created_at < ledger.started_at - 3600:
                break
        return None

    async def _take(self, row: Row, outbox: Outbox) -> None:
        number = self.owner.get(row.custom_id)
        if number is not None:  # submitted by an earlier invocation: wait for that batch
            self.waiting.setdefault(number, {})[row.custom_id] = row
        else:
            await self._add(row, outbox)

    async def _add(self, row: Row, outbox: Outbox) -> None:
        """``row`` joins the next chunk of its model (submitting the chunk first if it is full)."""
        request, _ = self.caller.request(row)
        if request is None:  # the job could not build it: the same error record as online, nothing sent
            outbox.record(await self.caller(row))
            return
        model = request["model"]
        limits = batch_limits(model)
        line = line_of(row.custom_id, request)
        most = min(self.options.batch_size or limits.max_requests, limits.max_requests)
        pending = self.pending.get(model)
        if pending is not None and (len(pending.rows) >= most or pending.size + len(line) > limits.max_bytes):
            await self._submit(model, outbox)
        pending = self.pending.setdefault(model, _Pending())
        pending.rows.append(row)
        pending.lines.append(line)
        pending.size += len(line)
        if self.caller.budget is not None:
            pending.worst += worst_case(model, request, self.caller.budget.prompt_margin)

    async def _submit(self, model: str, outbox: Outbox) -> None:
        """One chunk: budget, ledger intent, upload, create, ledger created."""
        pending = self.pending.pop(model, None)
        if pending is None or not pending.rows:
            return
        budget, ledger = self.caller.budget, self._ledger
        if budget is not None:
            try:
                budget.reserve(pending.worst)
            except BudgetReached as exc:
                outbox.budget_reached(f"{exc} for a batch of {len(pending.rows)} rows at batch prices")
                return  # its rows stay to do
        ids = [row.custom_id for row in pending.rows]
        chunk = await asyncio.to_thread(ledger.intent, model, ids, pending.worst)
        api = self._api(model)
        try:
            file_id = await api.upload(f"runner-{ledger.token}-{chunk.number:05d}.jsonl", b"".join(pending.lines))
            metadata = {"runner_run": ledger.token, "runner_chunk": str(chunk.number), "runner_dir": self.run_dir.name}
            remote: Remote | None = await api.create(file_id, metadata, self.options.window)
        except ProviderFailure as failure:
            remote = await self._find(chunk)  # a create that failed on the way back may still have made it
            if remote is None:
                await asyncio.to_thread(ledger.void, chunk, failure.message)
                self._release(chunk.number, 0.0, pending.worst)
                self._submit_failed(pending.rows, failure)
                return
        assert remote is not None
        await asyncio.to_thread(ledger.created, chunk, remote.id, remote.status, remote.created_at, remote.expires_at)
        self.failed_submits = 0
        self.reserved[chunk.number] = pending.worst
        self.waiting[chunk.number] = {row.custom_id: row for row in pending.rows}
        self.owner.update((custom_id, chunk.number) for custom_id in ids)
        logger.info("submitted batch %s: %d rows of %s (chunk %d)", remote.id, len(ids), model, chunk.number)
        if remote.status in TERMINAL:  # refused at once (say, the enqueued-token limit)
            await self._collect(chunk, remote, outbox)

    def _submit_failed(self, rows: list[Row], failure: ProviderFailure) -> None:
        if failure.disposition is Disposition.FATAL:
            raise FatalProviderError(
                f"{failure.code} from the Batch API: {failure.message} — stopped the run; fix this and run the "
                "same command again to resume"
            ) from failure
        self.failed_submits += 1
        if self.failed_submits >= self.options.submit_attempts:
            raise FatalProviderError(
                f"the Batch API refused {self.failed_submits} submissions in a row (last: {failure.code}: "
                f"{failure.message}); run the same command again to resume"
            ) from failure
        logger.warning("could not submit a batch of %d rows (%s: %s); trying again later", len(rows), failure.code,
                       failure.message)  # fmt: skip
        self._defer(rows)

    def _defer(self, rows: list[Row]) -> None:
        self.deferred.extend(rows)
        pause = min(self.options.poll_s, 2.0 ** min(self.failed_submits + self.counts["refused"], 16))
        self.defer_until = self.clock() + pause

    # -- waiting and collecting ------------------------------------------------------

    async def _watch(self, outbox: Outbox) -> None:
        """Poll until every row taken has an answer or went online (one round with --no-wait)."""
        poll = min(1.0, self.options.poll_s)
        while True:
            for number in [*self.waiting, *self.draining]:
                await self._check(number, outbox)
            if self._rescue_due() and (self.waiting or self.deferred):
                await self._rescue_all()
            if self.deferred and self.clock() >= self.defer_until:
                rows, self.deferred = self.deferred, []
                self.counts["resubmitted"] += len(rows)
                for row in rows:
                    await self._add(row, outbox)
                for model in list(self.pending):
                    await self._submit(model, outbox)
            if not self.options.wait or not (self.waiting or self.deferred or self.draining):
                return
            pause = poll
            if self.deferred:
                pause = min(pause, max(0.0, self.defer_until - self.clock()))
            if (rescue_at := self._rescue_at()) is not None:
                pause = min(pause, max(0.0, rescue_at - self.clock()))
            await self.sleep(pause)
            poll = min(poll * 1.5, self.options.poll_s)

    def _rescue_at(self) -> float | None:
        if self.options.deadline_s is None:
            return None
        return self._ledger.started_at + self.options.deadline_s - self.options.rescue_margin

    def _rescue_due(self) -> bool:
        rescue_at = self._rescue_at()
        return rescue_at is not None and self.clock() >= rescue_at

    async def _rescue_all(self) -> None:
        """The deadline is near: cancel what still runs and send its rows online."""
        rows = [row for waiting in self.waiting.values() for row in waiting.values()] + self.deferred
        logger.warning("--batch-deadline is near: %d unanswered rows go online", len(rows))
        for number in list(self.waiting):
            chunk = self._ledger.chunks[number]
            assert chunk.batch_id is not None
            try:
                await self._api(chunk.model).cancel(chunk.batch_id)
            except ProviderFailure as failure:
                logger.warning("could not cancel batch %s (%s); its late answers will be ignored", chunk.batch_id,
                               failure.message)  # fmt: skip
            self.draining[number] = DRAIN_POLLS
            del self.waiting[number]
        self.deferred = []
        for row in rows:
            await self._online(row)

    async def _online(self, row: Row) -> None:
        self.counts["rescued_online"] += 1
        await self.rescue.put(row)

    async def _check(self, number: int, outbox: Outbox) -> None:
        chunk = self._ledger.chunks[number]
        assert chunk.batch_id is not None
        try:
            remote = await self._api(chunk.model).retrieve(chunk.batch_id)
        except ProviderFailure as failure:
            if failure.disposition is Disposition.FATAL:
                raise FatalProviderError(f"{failure.code} from the Batch API: {failure.message}") from failure
            logger.warning("could not check batch %s (%s); trying again", chunk.batch_id, failure.message)
            return
        if (remote.status, remote.counts) != (chunk.status, chunk.counts):
            await asyncio.to_thread(self._ledger.status, chunk, remote.status, remote.counts)
            counts, left = remote.counts, (remote.expires_at or 0) - self.clock()
            window = f", {left / 3600:.1f}h left in its window" if remote.expires_at and left > 0 else ""
            done, total, failed = (counts.get(k, 0) for k in ("completed", "total", "failed"))
            logger.info(
                "batch %s: %s, %d of %d done, %d failed%s", remote.id, remote.status, done, total, failed, window
            )
        if remote.status in TERMINAL:
            await self._collect(chunk, remote, outbox)
        elif number in self.draining:
            self.draining[number] -= 1
            if self.draining[number] <= 0:
                del self.draining[number]

    async def _collect(self, chunk: Chunk, remote: Remote, outbox: Outbox) -> None:
        """A finished batch: its output settled as records, then its other rows resubmitted or sent online."""
        rows = self.waiting.pop(chunk.number, {})
        self.draining.pop(chunk.number, None)
        ledger = self._ledger
        if remote.status == "failed" and "token_limit_exceeded" in remote.error_codes:
            logger.warning("batch %s refused: %s; its %d rows go again once some of this provider's batches "
                           "finish", remote.id, remote.error_message, len(rows))  # fmt: skip
            self.counts["refused"] += 1
            await asyncio.to_thread(ledger.void, chunk, "enqueued-token limit")
            self._release(chunk.number, 0.0)
            self._defer(list(rows.values()))
            return
        out = await read_output(self._api(chunk.model), remote, chunk.model, rows, self.caller, outbox)
        self.counts["duplicates"] += out.duplicates
        self.duplicate_cost += out.duplicate_cost
        spent, failed, leftover = out.spent, out.failed, out.leftover
        self._release(chunk.number, spent)
        await asyncio.to_thread(ledger.collected, chunk)
        if failed or leftover:
            logger.info("batch %s %s: %d rows failed (online), %d unanswered", remote.id, remote.status, len(failed),
                        len(leftover))  # fmt: skip
        for row in failed:
            await self._online(row)
        if remote.status == "failed" or self._rescue_due():
            for row in leftover:
                await self._online(row)
        elif leftover:
            self._defer(leftover)
        self.defer_until = min(self.defer_until, self.clock())  # a finished batch frees enqueued tokens

    def _release(self, number: int, spent: float, worst: float | None = None) -> None:
        held = self.reserved.pop(number, worst if worst is not None else 0.0)
        if self.caller.budget is not None:
            self.caller.budget.settle(held, spent)

    # -- plumbing --------------------------------------------------------------------

    @property
    def _ledger(self) -> Ledger:
        assert self.ledger is not None, "execute() opens the ledger"
        return self.ledger

    def _api(self, model: str) -> BatchApi:
        provider = provider_of(model)[0]
        if provider not in self._apis:
            key = self.caller.credentials_for(model).get("api_key")
            self._apis[provider] = BatchApi(provider, self.caller.api_base, key)
        return self._apis[provider]
