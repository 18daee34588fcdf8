"""The batch executor: rows go out through the provider's Batch API at batch prices, with online rescue.

    feed ─▶ rows of a batch already submitted (ledger) ─▶ wait for that batch
         └▶ new rows ─▶ chunks per model and endpoint ─▶ ledger intent ─▶ upload, create ─▶ ledger created
    poll ─▶ a finished batch's output ─▶ Caller.settle (the job's parser, as online) ─▶ outbox
         └▶ failed lines, a failed batch, rows past --batch-deadline ─▶ the online executor ─▶ outbox

Exactly-once stays the coordinator's: a row is handed back once, by whichever lane claims it first
(a later answer for it is a duplicate: counted with its cost, dropped). A row whose batch still runs
waits on it again on the next invocation (its id is in the ledger), whatever that invocation's flags
(``BatchOptions.submit``). A batch that was paid for is always read back, by this invocation or a
later one (a cancel refused because it finished means: collect it). Budget: a chunk's worst case at
batch prices is reserved before it is submitted and settled when its output is read.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from tenacity import wait_exponential

from runner.call.caller import Caller
from runner.call.retry import pause_after
from runner.errors import FatalProviderError
from runner.executors.base import Feed, Outbox
from runner.executors.batch_api import stop_if_hopeless
from runner.executors.batch_collect import download, read_output, settled_before
from runner.executors.batch_ledger import TERMINAL, Chunk, Ledger, read_chunks, summary_of
from runner.executors.batch_lines import batch_limits, endpoint_of, provider_of, worst_case
from runner.executors.batch_options import BatchOptions, Pending
from runner.executors.batch_reconcile import look_for, reconcile
from runner.executors.batch_seam import BatchService, Remote
from runner.executors.batch_services import service_for
from runner.executors.online import OnlineExecutor
from runner.permits.budget import BudgetReached
from runner.provider.failures import Disposition, ProviderFailure
from runner.rows import Row

__all__ = ["BatchExecutor", "BatchOptions", "batch_limits"]  # batch_limits: from batch_lines

logger = logging.getLogger(__name__)
Key = tuple[str, str]  # (model, endpoint): one batch holds requests of one model to one endpoint


class BatchExecutor:
    """Rows through the Batch API (``--batch-api``); see the module docstring."""

    section = "batches"  # the manifest section summary() fills

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
        self.draining: dict[int, int] = {}  # chunk no row waits for (cancelled, rescued) -> looks left this time
        self.pending: dict[Key, Pending] = {}  # rows not yet submitted
        self.deferred: list[Row] = []  # rows to submit again later
        self.defer_until, self.failed_submits = 0.0, 0
        self.reserved: dict[int, float] = {}  # chunk -> its worst case held against --max-cost
        self.counts: Counter[str] = Counter()
        self.rescue = Feed(2 * concurrency)
        self._rescuer = OnlineExecutor(caller, concurrency)  # the rescue lane
        self._watched = False  # every batch was collected: what comes back now goes to the rescue
        self._apis: dict[str, BatchService] = {}  # provider -> its Batch API

    async def execute(self, feed: Feed, outbox: Outbox) -> None:
        """Submit, wait (unless --no-wait), collect, rescue; every row taken gets a record or stays to do."""
        self.ledger = await asyncio.to_thread(Ledger, self.run_dir)
        try:
            self.owner, self.reserved = await reconcile(self.ledger, self._api, self.caller.budget)
            async with asyncio.TaskGroup() as lanes:
                lanes.create_task(self._rescuer.execute(self.rescue, outbox))
                try:
                    async for row in feed:
                        await self._take(row, outbox)
                    for key in list(self.pending):
                        await self._submit(key, outbox)
                    self._drain_the_rest()
                    await self._watch(outbox)
                    self._watched = True
                finally:
                    self.rescue.end()
        finally:
            self.ledger.close()
        if left := self._waiting_rows + len(self.deferred):
            n = len(self.waiting)
            logger.info("%d rows wait in %d batch%s; run the same command again to collect them", left, n,
                        "" if n == 1 else "es")  # fmt: skip

    def resend(self, rows: list[Row]) -> None:
        """Submitted in a batch of their own at the next look at the batches; once nothing is left to look at
        (their first copy failed in the online rescue, after the last batch), sent by the rescue."""
        if self._watched or not self.options.submit:
            self._rescuer.resend(rows)
            return
        self.deferred.extend(rows)
        self.defer_until = min(self.defer_until, self.clock())

    def left(self) -> int:
        """Rows taken that this invocation leaves to a later one: waiting in a remote batch, not submitted yet,
        or held back by --max-cost. No request of theirs is in flight here."""
        pending = sum(len(p.rows) for p in self.pending.values())
        return self._waiting_rows + len(self.deferred) + pending + self.counts["held"]

    def unsettled(self) -> bool:
        return any(chunk.open for chunk in read_chunks(self.run_dir))

    @property
    def _waiting_rows(self) -> int:
        return sum(len(rows) for rows in self.waiting.values())

    def brief(self) -> str:
        return f"{self._waiting_rows} rows in {len(self.waiting)} batches" if self.waiting else ""

    def summary(self) -> dict[str, Any] | None:
        """The manifest's ``batches``: the remote batches and what became of their rows."""
        if self.ledger is None:
            return None
        return summary_of(self.ledger, self._waiting_rows, self.counts, self.options.deadline_s, self.clock())

    async def _take(self, row: Row, outbox: Outbox) -> None:
        number = self.owner.get(row.custom_id)
        if number is not None:  # submitted by an earlier invocation: wait for that batch
            self.waiting.setdefault(number, {})[row.custom_id] = row
        elif not self.options.submit:  # a start without --batch-api: only the rows already in a batch wait
            await self._online(row)
        else:
            await self._add(row, outbox)

    def _drain_the_rest(self) -> None:
        """Batches no row of this invocation waits for but not read back yet (their rows were rescued online, or
        journaled from another lane): looked at too, so what they were paid for is collected and counted."""
        for number, chunk in self._ledger.chunks.items():
            if chunk.open and number not in self.waiting and number not in self.draining:
                self.draining[number] = self.options.drain_polls

    async def _add(self, row: Row, outbox: Outbox) -> None:
        """``row`` joins the next chunk of its model and endpoint (submitting the chunk first if it is full)."""
        request, _ = self.caller.request(row)
        if request is None:  # the job could not build it: the same error record as online, nothing sent
            outbox.record(await self.caller(row))
            return
        key = (request["model"], endpoint_of(request))
        limits = batch_limits(key[0])
        line = self._api(key[0]).line(row.custom_id, request)
        if line is None:  # a request this provider's batches can't carry as online would send it
            await self._online(row)
            return
        most = min(self.options.batch_size or limits.max_requests, limits.max_requests)
        pending = self.pending.get(key)
        if pending is not None and (len(pending.rows) >= most or pending.size + len(line) > limits.max_bytes):
            await self._submit(key, outbox)
        pending = self.pending.setdefault(key, Pending())
        pending.rows.append(row)
        pending.lines.append(line)
        pending.size += len(line)
        if self.caller.budget is not None:
            pending.worst += worst_case(key[0], request, self.caller.budget.prompt_margin)

    async def _submit(self, key: Key, outbox: Outbox) -> None:
        """One chunk: budget, ledger intent, upload, create, ledger created."""
        pending = self.pending.pop(key, None)
        if pending is None or not pending.rows:
            return
        (model, endpoint), budget, ledger = key, self.caller.budget, self._ledger
        if budget is not None:
            try:
                budget.reserve(pending.worst)
            except BudgetReached as exc:
                self.counts["held"] += len(pending.rows)
                outbox.budget_reached(f"{exc} for a batch of {len(pending.rows)} rows at batch prices")
                return  # its rows stay to do
        ids = [row.custom_id for row in pending.rows]
        api = self._api(model)
        chunk = await asyncio.to_thread(ledger.intent, model, ids, pending.worst, api.provider)
        tag = ledger.tag(chunk)
        try:
            remote: Remote | None = await api.submit(tag, pending.lines, self.options.window, endpoint)
        except ProviderFailure as failure:
            remote = await look_for(api, tag, failure)  # a create that failed on the way back may have made it
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
        logger.info("submitted batch %s: %d rows of %s to %s (chunk %d)", remote.id, len(ids), model, endpoint,
                    chunk.number)  # fmt: skip
        if remote.status in TERMINAL:  # refused at once (say, the enqueued-token limit)
            await self._collect(chunk, remote, outbox)

    def _submit_failed(self, rows: list[Row], failure: ProviderFailure) -> None:
        self.failed_submits += 1
        stop_if_hopeless(failure, self.failed_submits, self.options.submit_attempts)
        logger.warning("could not submit a batch of %d rows (%s: %s); trying again later", len(rows), failure.code,
                       failure.message)  # fmt: skip
        self._defer(rows)

    def _defer(self, rows: list[Row]) -> None:
        self.deferred.extend(rows)
        backoff = wait_exponential(multiplier=1, max=self.options.poll_s)  # 2 s, 4 s, ... up to the poll
        self.defer_until = self.clock() + pause_after(backoff, self.failed_submits + self.counts["refused"])

    # -- waiting and collecting ------------------------------------------------------

    async def _watch(self, outbox: Outbox) -> None:
        """Poll until every row taken has an answer or went online (one round with --no-wait)."""
        polls = wait_exponential(multiplier=min(1.0, self.options.poll_s), exp_base=1.5, max=self.options.poll_s)
        looks = 0
        while True:
            for number in [*self.waiting, *self.draining]:
                await self._check(number, outbox)
            if self._rescue_due() and (self.waiting or self.deferred):
                await self._rescue_all(outbox)
            if self.deferred and self.clock() >= self.defer_until:
                rows, self.deferred = self.deferred, []
                self.counts["resubmitted"] += len(rows)
                for row in rows:
                    await self._add(row, outbox)
                for key in list(self.pending):
                    await self._submit(key, outbox)
            if not self.options.wait or not (self.waiting or self.deferred or self.draining):
                return
            looks += 1
            pause = pause_after(polls, looks)
            if self.deferred:
                pause = min(pause, max(0.0, self.defer_until - self.clock()))
            if (rescue_at := self._rescue_at()) is not None:
                pause = min(pause, max(0.0, rescue_at - self.clock()))
            await self.sleep(pause)

    def _rescue_at(self) -> float | None:
        return self.options.rescue_at(self._ledger.started_at)

    def _rescue_due(self) -> bool:
        rescue_at = self._rescue_at()
        return rescue_at is not None and self.clock() >= rescue_at

    async def _rescue_all(self, outbox: Outbox) -> None:
        """The deadline is near: cancel what still runs and send its rows online. A batch the provider says has
        already finished (it refuses the cancel) is collected instead: its answers were paid for."""
        for number in list(self.waiting):
            chunk = self._ledger.chunks[number]
            assert chunk.batch_id is not None
            api = self._api(chunk.model)
            try:
                await api.cancel(chunk.batch_id)
            except ProviderFailure as failure:
                remote = await self._look(api, chunk)
                if remote is not None and remote.status in TERMINAL:
                    logger.info("batch %s finished before it could be cancelled: collecting it", chunk.batch_id)
                    await self._collect(chunk, remote, outbox)
                    continue
                logger.warning("could not cancel batch %s (%s); its late answers will be counted and ignored",
                               chunk.batch_id, failure.message)  # fmt: skip
            self.draining[number] = self.options.drain_polls
        rows = [row for waiting in self.waiting.values() for row in waiting.values()] + self.deferred
        if rows:
            logger.warning("--batch-deadline is near: %d unanswered rows go online", len(rows))
        self.waiting, self.deferred = {}, []
        for row in rows:
            await self._online(row)

    async def _online(self, row: Row) -> None:
        self.counts["rescued_online"] += 1
        await self.rescue.put(row)

    async def _look(self, api: BatchService, chunk: Chunk) -> Remote | None:
        """The batch as it is now (None: the provider could not say, this time)."""
        assert chunk.batch_id is not None
        try:
            return await api.retrieve(chunk.batch_id)
        except ProviderFailure as failure:
            if failure.disposition is Disposition.FATAL:
                raise FatalProviderError(f"{failure.code} from the Batch API: {failure.message}") from failure
            logger.warning("could not check batch %s (%s); trying again", chunk.batch_id, failure.message)
            return None

    async def _check(self, number: int, outbox: Outbox) -> None:
        chunk = self._ledger.chunks[number]
        remote = await self._look(self._api(chunk.model), chunk)
        if remote is None:
            return
        if (remote.status, remote.counts) != (chunk.status, chunk.counts):
            await asyncio.to_thread(self._ledger.status, chunk, remote.status, remote.counts)
            logger.info("batch %s: %s", remote.id, remote.progress(self.clock()))
        if remote.status in TERMINAL:
            await self._collect(chunk, remote, outbox)
        elif number in self.draining:  # the next invocation looks again (the ledger still has it open)
            self.draining[number] -= 1
            if self.draining[number] <= 0:
                del self.draining[number]

    async def _collect(self, chunk: Chunk, remote: Remote, outbox: Outbox) -> None:
        """A finished batch: its output settled as records, then its other rows resubmitted or sent online."""
        api = self._api(chunk.model)
        if (files := await download(api, remote)) is None:
            return  # nothing settled: the next look downloads it again
        rows = self.waiting.pop(chunk.number, {})
        self.draining.pop(chunk.number, None)
        ledger = self._ledger
        await asyncio.to_thread(ledger.status, chunk, remote.status, remote.counts)  # (written if it changed)
        if remote.status == "failed" and "token_limit_exceeded" in remote.error_codes:
            logger.warning("batch %s refused: %s; its %d rows go again once some of this provider's batches "
                           "finish", remote.id, remote.error_message, len(rows))  # fmt: skip
            self.counts["refused"] += 1
            await asyncio.to_thread(ledger.void, chunk, "enqueued-token limit")
            self._release(chunk.number, 0.0)
            self._defer(list(rows.values()))
            return
        ids, own = await asyncio.to_thread(ledger.ids, chunk.number), await settled_before(ledger, chunk, remote)
        out = await read_output(api, files, remote, ledger.tag(chunk), ids, chunk.model, rows, self.caller, outbox, own)
        self._release(chunk.number, out.spent + out.duplicate_cost)
        await asyncio.to_thread(ledger.collected, chunk, out.duplicates, out.duplicate_cost)
        if out.duplicates:
            logger.info("batch %s: %d answers came after their rows were answered elsewhere ($%.6f, counted)",
                        remote.id, out.duplicates, out.duplicate_cost)  # fmt: skip
        if out.failed or out.leftover:
            logger.info("batch %s %s: %d rows failed (online), %d unanswered", remote.id, remote.status,
                        len(out.failed), len(out.leftover))  # fmt: skip
        for row in out.failed:
            await self._online(row)
        if remote.status == "failed" or self._rescue_due():
            for row in out.leftover:
                await self._online(row)
        elif out.leftover:
            self._defer(out.leftover)
        self.defer_until = min(self.defer_until, self.clock())  # a finished batch frees enqueued tokens

    def _release(self, number: int, spent: float, worst: float | None = None) -> None:
        held = self.reserved.pop(number, worst if worst is not None else 0.0)
        if self.caller.budget is not None:
            self.caller.budget.settle(held, spent)

    @property
    def _ledger(self) -> Ledger:
        assert self.ledger is not None, "execute() opens the ledger"
        return self.ledger

    def _api(self, model: str) -> BatchService:
        provider = provider_of(model)[0]
        if provider not in self._apis:
            key = self.caller.credentials_for(model).get("api_key")
            self._apis[provider] = service_for(provider, self.caller.api_base, key)
        return self._apis[provider]
