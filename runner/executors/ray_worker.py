"""One Ray worker: an actor with its own event loop, litellm and ``Caller``, fed by the coordinator.

The coordinator talks to a worker with one call, ``exchange(rows, answers)``: it hands over new rows
and the answers to the worker's earlier questions (lease renewals, reachability verdicts), and gets
back what finished (records, or why a row can't have one) and the worker's new questions. The call
returns as soon as there is a question (a renewal must not wait), ``linger`` after the first record
is ready (so tens of records travel together), as soon as the worker is about to run out of rows
while more wait at the coordinator, or after ``heartbeat`` seconds with nothing to say; so rows,
records and renewals share one round trip. Calls are kept few on purpose: each one cost the worker
~18 ms of CPU while its loop was busy (bench/RESULTS.md, "fewer calls"). A Retry-After pause that
starts while a call is pending reaches the worker by ``nudge``; a stop (Ctrl-C) by ``halt``, after
which the worker starts no request: the rows it holds unstarted go back to the coordinator.

Permission to send is the coordinator's: the worker's Caller holds leases (``LeasedPermits``)
renewed through that same call. This module imports neither Ray nor litellm at import time: the
actor class is made a Ray actor by ``runner.executors.ray``, and litellm is imported in the worker
process after it has been configured offline, as the command line does.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import math
import os
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from runner.provider.loop import inline_dispatch, settle_heap
from runner.rows import Row

if TYPE_CHECKING:
    from runner.call.caller import Caller
    from runner.permits.leases import Lease, LeasedPermits, Report, Want
    from runner.permits.reachability import Verdict
    from runner.plan import CallPlan
    from runner.provider.provider import Complete

__all__ = ["Outcome", "Worker", "WorkerSpec"]

# What a worker hands back for a row: ("record", custom_id, Record), or ("budget" | "fatal" | "crash",
# custom_id, message) for a row with no record (it did not fit under --max-cost, or the run must stop),
# or ("dropped", custom_id, None) for a row that came after a stop (never started: it stays to do).
Outcome = tuple[str, str, Any]
Ask = tuple[int, str, tuple[Any, ...]]  # (question id, "renew" | "gave_up", arguments)
TAIL_LINGER = 0.05  # seconds records wait for others once no more rows will come


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs to build the same Caller as the coordinator's (sent pickled)."""

    plan: CallPlan  # the run's call plan: the worker builds its Caller from it, as the coordinator does
    concurrency: int  # requests in flight in this worker, at most
    complete: Complete | None = None  # default: litellm's acompletion (benchmarks swap in an instant one)
    # Lease size, in requests: every renewal is a round trip that returns at once, so it sets how many
    # rows share one (bench.ray: 8 made ~8 rows a call, 1.2 ms of the coordinator's CPU each; 32 -> 64
    # with the longer term of unmetered leases: 308 -> 350 calls/s). A metered model's lease is
    # smaller anyway: one term's share of its rate.
    batch: int = 64
    # Seconds to wait for more records after the first is ready. A call costs the coordinator ~1 ms
    # and a busy worker far more (~18 ms of CPU, measured, not explained: its loop thread and Ray's
    # threads share the GIL), so records travel in bulk: 0.05 s gave 4.5 ms of worker CPU a row,
    # 0.25 s with the heartbeat below 3.9 (bench.ray). Records reach the journal that much later;
    # a worker that dies takes them with it, and its rows are sent again as before.
    linger: float = 0.25
    heartbeat: float = 0.5  # seconds after which a call returns even with nothing to say


class Worker:
    """The actor's body (``ray.remote(Worker)``): rows in, outcomes out, questions for the coordinator."""

    def __init__(self, spec: WorkerSpec, name: str) -> None:
        from runner.provider import setup

        setup.configure()  # before litellm is imported, as every entry point does
        self.spec, self.name = spec, name
        self.caller, self.permits = _caller(spec, self._renew, self._gave_up)
        settle_heap()  # as the command line does, once litellm and the job are loaded
        self._out: list[Outcome] = []
        self._first_ready = math.inf
        self._asks: list[Ask] = []
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._ids = itertools.count()
        self._tasks: set[asyncio.Task[None]] = set()
        self._unstarted: dict[str, asyncio.Task[None]] = {}  # rows waiting for a free slot
        self._halted = False
        self._wake: asyncio.Event | None = None
        self._room: asyncio.Semaphore | None = None

    def ready(self) -> tuple[int, str]:
        """The worker's PID and host, once litellm and the job are loaded."""
        return os.getpid(), socket.gethostname()

    def finish(self) -> None:
        """The run is over: send the spans still batched (``--otel``) before the worker is stopped."""
        if self.caller.tracing is not None:
            self.caller.tracing.close()

    async def exchange(
        self,
        rows: list[Row],
        answers: list[tuple[int, Any]],
        pauses: dict[str, float] | None = None,
        more: bool = False,
    ) -> tuple[list[Outcome], list[Ask]]:
        """Take ``rows``, the answers to earlier questions and the coordinator's pauses (model: seconds
        left); return what finished and new questions. ``more``: the coordinator has rows waiting, so
        the call returns early once this worker has no row left that isn't running."""
        loop = asyncio.get_running_loop()
        self._pause(pauses or {})
        if self._wake is None or self._room is None:
            self._wake, self._room = asyncio.Event(), asyncio.Semaphore(self.spec.concurrency)
            inline_dispatch(loop)  # litellm builds its requests on this thread, not in a pool
        self._answered(answers)
        for row in rows:
            if self._halted:  # sent before the coordinator knew of the stop: never started
                self._first_ready = min(self._first_ready, time.monotonic())
                self._out.append(("dropped", row.custom_id, None))
                continue
            task = self._unstarted[row.custom_id] = loop.create_task(self._one(row))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        deadline = loop.time() + self.spec.heartbeat
        # Once the input has ended, the last records are not held back for company (the run is ending).
        linger = self.spec.linger if more else min(self.spec.linger, TAIL_LINGER)
        while True:
            now = time.monotonic()
            if self._asks or not self._tasks or loop.time() >= deadline:  # a question, idle, or time to say so
                break
            if self._out and (now >= self._first_ready + linger or not self._tasks):
                break
            if self._out and more and len(self._tasks) <= self.spec.concurrency:  # about to run dry: refill
                break
            until = deadline - loop.time()
            if self._out:
                until = min(until, self._first_ready + linger - now)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(until, 0.0))
        out, asks = self._out, self._asks
        self._out, self._asks, self._first_ready = [], [], math.inf
        return out, asks

    async def nudge(self, pauses: dict[str, float]) -> None:
        """The coordinator's Retry-After pauses (model: seconds left) as soon as one starts: a call of
        its own, run beside the pending ``exchange`` (which also brings them, with every call)."""
        self._pause(pauses)

    async def halt(self) -> list[str]:
        """The run is stopping: start no more requests. The ids of the rows dropped unstarted (the
        requests already sent finish and come back by ``exchange`` as always)."""
        self._halted = True
        unstarted, self._unstarted = self._unstarted, {}
        for task in unstarted.values():
            self._tasks.discard(task)
            task.cancel()
        if self._wake is not None:
            self._wake.set()  # a pending exchange with nothing left running returns now
        return list(unstarted)

    async def answer(self, answers: list[tuple[int, Any]]) -> None:
        """Answers that were not ready when the last ``exchange`` returned (a lease that waited for the
        rate), sent as soon as they are, beside the pending call."""
        self._answered(answers)

    def _answered(self, answers: list[tuple[int, Any]]) -> None:
        for ask_id, answer in answers:
            waiting = self._waiting.pop(ask_id, None)
            if waiting is not None and not waiting.done():
                waiting.set_result(answer)

    def _pause(self, pauses: dict[str, float]) -> None:
        for model, seconds in pauses.items():
            self.permits.pause(model, seconds)

    async def _one(self, row: Row) -> None:
        from runner.errors import FatalProviderError
        from runner.permits.budget import BudgetReached

        assert self._room is not None and self._wake is not None
        async with self._room:
            del self._unstarted[row.custom_id]  # started: a stop no longer drops it
            try:
                record = await self.caller(row)
                record.line["meta"]["worker"] = self.name
                outcome: Outcome = ("record", row.custom_id, record)
            except BudgetReached as exc:
                outcome = ("budget", row.custom_id, str(exc))
            except FatalProviderError as exc:
                outcome = ("fatal", row.custom_id, str(exc))
            except Exception as exc:  # a bug: the coordinator stops the run with it, as in-process
                outcome = ("crash", row.custom_id, f"{type(exc).__name__}: {exc}")
        if not self._out:
            self._first_ready = time.monotonic()
        self._out.append(outcome)
        self._wake.set()

    async def _ask(self, kind: str, *args: Any) -> Any:
        """A question for the coordinator, carried back by the current (or next) exchange."""
        ask_id = next(self._ids)
        waiting: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[ask_id] = waiting
        self._asks.append((ask_id, kind, args))
        if self._wake is not None:
            self._wake.set()
        return await waiting

    async def _renew(self, report: Report | None, want: Want) -> Lease:
        lease: Lease = await self._ask("renew", report, want)
        return lease

    async def _gave_up(self, model: str, heard_before: float) -> Verdict:
        # Clocks differ between machines: the coordinator gets how long ago, not a time.
        verdict: Verdict = await self._ask("gave_up", model, time.monotonic() - heard_before)
        return verdict


def _caller(spec: WorkerSpec, renew: Any, gave_up: Any) -> tuple[Caller, LeasedPermits]:
    """The worker's Caller, built from the run's plan as the coordinator's is, and the leased permits it asks."""
    from runner.call.assemble import build_caller
    from runner.permits.budget import worst_case
    from runner.permits.leases import LeasedPermits
    from runner.permits.limits import Limits

    # Worst cases are priced here (the price map is the same in every process); the money is the coordinator's.
    priced = functools.partial(worst_case, tier=spec.plan.reserved_tier) if spec.plan.priced else None
    permits = LeasedPermits(renew, priced, gave_up, batch=spec.batch)
    return build_caller(spec.plan, Limits(spec.concurrency), leased=permits, complete=spec.complete), permits
