"""The Ray executor: rows go to worker processes (Ray actors, on this machine or across a cluster).

    Feed ──▶ pump ──▶ rows ──▶ one link per worker ──exchange(rows, answers)──▶ Worker actor
                                     ◀──(outcomes, questions)── ┘
    outcomes ──▶ Outbox (the coordinator journals)   questions ──▶ Grantor (limits, budget) ──▶ answers

Each worker (``runner.executors.ray_worker``) runs the coordinator's Caller on its own event loop
with leased permits; this process keeps one loop per worker (a link) that hands it tens of rows at a
time and takes records back in the same call, together with its lease renewals. The coordinator
stays the only writer of the journal and the only owner of limits and budget.

Ray never re-sends anything on its own: actors are created with ``max_restarts=0`` and
``max_task_retries=0``. A worker that dies (killed, out of memory, its machine gone) fails its
pending call; its link puts the rows it held with no record back in line for the other workers and
starts a replacement. A worker that has run out of rows waits for more until no worker holds one,
so a dead worker's rows find a taker even at the very end, when its replacement may find no CPU
(its machine gone, the others keeping theirs). A row is handed to the outbox once: an outcome for a
row its link no longer holds is dropped. On a stop, no worker starts another request: the rows not
yet sent, here or at a worker, are given back to the feed (they stay to do) and only the requests
already sent finish.
Ray is imported only here and in the cluster module, only for ``--workers > 1`` or ``--ray-address``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray

from runner.call.caller import Caller
from runner.errors import FatalProviderError, RunnerError
from runner.executors.base import Feed, Outbox
from runner.executors.ray_cluster import cause, cluster
from runner.executors.ray_link import Link, ready, spec_for, still_there
from runner.executors.ray_worker import Ask, Outcome, Worker, WorkerSpec
from runner.permits.leases import Grantor
from runner.provider.setup import OFFLINE
from runner.rows import Row

__all__ = ["RayExecutor", "ray_executor", "spec_for"]

logger = logging.getLogger(__name__)


@dataclass
class RayExecutor:
    """``workers`` Ray actors, each running ``spec``'s Caller; permission granted from ``caller``'s
    limits and budget. ``record`` (the cluster's) writes down the PIDs of processes Ray started."""

    caller: Caller
    workers: int
    spec: WorkerSpec
    record: Callable[[], object] | None = None
    max_replacements: int | None = None  # default: twice the workers, then the run stops
    links: dict[str, Link] = field(default_factory=dict)
    replaced: int = 0  # workers that died and were replaced
    requeued: int = 0  # rows they held with no record, sent again
    _names: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    async def execute(self, feed: Feed, outbox: Outbox) -> None:
        """Start the workers, feed them until the feed ends and every row they took came back, stop them."""
        self._grantor = Grantor(self.caller.limits, self.caller.budget, term=0.1)
        # Ray never sends a row twice on its own: no actor restarts, no retried calls (this executor decides).
        # A worker unpickles its spec (which imports litellm) before its __init__ can call configure(): a
        # node started by `ray start` in a shell without runner's settings would go online, then refuse.
        offline = {"env_vars": dict(OFFLINE)}
        remote = ray.remote(max_restarts=0, max_task_retries=0, num_cpus=1, scheduling_strategy="SPREAD",
                            runtime_env=offline)  # fmt: skip
        self._actor: Any = remote(Worker)
        self._line: collections.deque[Row] = collections.deque()  # rows from the feed, in order
        self._again: collections.deque[Row] = collections.deque()  # rows a dead worker held: first
        self._input_done = False
        self._arrived = asyncio.Event()  # a row was added, or the input ended
        self._room = asyncio.Semaphore(self.workers * self.spec.batch)
        self._feed, self._stopped = feed, False
        halter = asyncio.create_task(self._halt(feed))
        started = time.monotonic()
        try:
            first = await asyncio.gather(*(self._start() for _ in range(self.workers)))
            links = [link for link in first if link is not None]  # (a first worker is never given up)
            logger.info("%d Ray workers ready in %.1fs", len(links), time.monotonic() - started)
            nudger = asyncio.create_task(self._nudge())
            try:
                async with asyncio.TaskGroup() as group:
                    group.create_task(self._pump(feed))
                    for link in links:
                        group.create_task(self._drive(link, outbox))
            finally:
                nudger.cancel()
        finally:
            halter.cancel()
            if self.spec.plan.tracing is not None:  # each worker sends the spans it still holds
                finishing = [link.actor.finish.remote() for link in self.links.values()]
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.gather(*finishing, return_exceptions=True), 10)
            for link in list(self.links.values()):
                ray.kill(link.actor, no_restart=True)
            self.links.clear()  # the manifest's last word: none alive

    section = "workers"  # the manifest section summary() fills

    def left(self) -> int:
        """Nothing is left on purpose: rows a worker held go to the others, or stay to do after a stop."""
        return 0

    def unsettled(self) -> bool:
        return False  # nothing paid for waits to be read back

    def resend(self, rows: list[Row]) -> None:
        """Sent again first, by the next worker to ask for rows."""
        self._again.extend(rows)
        self._arrived.set()

    def summary(self) -> dict[str, Any]:
        """The manifest's ``workers``: how many are alive, how many were replaced, rows in flight per worker."""
        return {"alive": len(self.links), "replaced": self.replaced,
                "in_flight": {name: len(link.held) for name, link in self.links.items()},
                "hosts": {name: f"{link.host}:{link.pid}" for name, link in self.links.items()}}  # fmt: skip

    def brief(self) -> str:
        """A few words for the progress line."""
        held = sum(len(link.held) for link in self.links.values())
        replaced = f", {self.replaced} replaced" if self.replaced else ""
        return f"{len(self.links)} workers{replaced}, {held} rows at workers"

    async def _start(self, replacing: bool = False) -> Link | None:
        """A new worker, once it is up. A first one that can't start stops the run. A replacement is
        given up (None) if no row is left for it while it waits for a CPU (its node gone, the others
        busy); one whose node dies before it is up raises RayActorError, to be replaced in turn."""
        name = f"w{next(self._names)}"
        actor = self._actor.remote(self.spec, name)
        try:
            up = await ready(actor, name, self._drained if replacing else None)
        except ray.exceptions.RayActorError as exc:
            ray.kill(actor, no_restart=True)
            if replacing:
                logger.warning("worker %s died before it was up (%s)", name, cause(exc))
                raise
            raise RunnerError(f"Ray worker {name} could not start: {cause(exc)}") from None
        if up is None:
            ray.kill(actor, no_restart=True)
            logger.info("worker %s not started: no row is left for it", name)
            return None
        pid, host = up
        link = self.links[name] = Link(name, actor, pid, host)
        if self.record is not None:
            self.record()  # the new worker process is Ray's too: a killed run's next run stops it by PID
        return link

    async def _pump(self, feed: Feed) -> None:
        """Rows from the feed into this executor's line, a few per worker ahead (the feed stays the bound)."""
        async for row in feed:
            await self._room.acquire()
            if self._stopped:  # taken as the run stopped: it stays to do
                self._room.release()
                feed.give_back(1)
                continue
            self._line.append(row)
            self._arrived.set()
        self._input_done = True
        self._arrived.set()

    def _take(self, n: int) -> tuple[list[Row], bool]:
        """Up to ``n`` waiting rows (a dead worker's first), and whether no more will come."""
        rows: list[Row] = []
        if self._stopped:
            return rows, True
        while len(rows) < n and self._again:
            rows.append(self._again.popleft())
        while len(rows) < n and self._line:
            rows.append(self._line.popleft())
            self._room.release()
        return rows, self._drained()

    def _drained(self) -> bool:
        """Whether no row will come for a worker any more: the input ended and every row was taken, or the run stops."""
        return self._stopped or (self._input_done and not self._line and not self._again)

    async def _next(self) -> list[Row]:
        """Wait for one row; [] once none can come: the run stops, or the input has ended, every row
        was taken and no worker holds one (it could die, and its rows come back here: at the very end,
        its replacement may find no CPU, the others keeping theirs)."""
        while True:
            rows, ended = self._take(1)
            if rows or self._stopped or (ended and not any(link.held for link in self.links.values())):
                return rows
            self._arrived.clear()
            await self._arrived.wait()

    async def _drive(self, link: Link, outbox: Outbox) -> None:
        """One worker's loop: rows and answers out, outcomes and questions back, until the input ends."""
        answers: list[tuple[int, Any]] = []
        ended = False
        try:
            while True:
                rows: list[Row] = []
                if not ended or self._again:  # rows sent again (a dead worker's, a failed answer's duplicates)
                    rows, ended = self._take(self._capacity(link) - len(link.held))
                if not rows and not link.held and not answers:
                    rows = await self._next()  # even once the input has ended: a dead worker's rows
                    if not rows:
                        return
                for row in rows:
                    link.held[row.custom_id] = row
                try:
                    more = not ended and bool(self._line or self._again or not self._input_done)
                    outcomes, asks = await link.actor.exchange.remote(rows, answers, self._grantor.pauses(), more)
                except ray.exceptions.RayActorError as exc:
                    _cancel(link.pushing)
                    answers = []
                    replacement = await self._replace(link, exc)
                    if replacement is None:  # no row was left for it: the others finish
                        return
                    link, ended = replacement, False  # its rows are back in line
                    continue
                if link.failure is not None:
                    raise link.failure
                answers = []
                link.per_call += 0.2 * (len(outcomes) - link.per_call)
                asking = [asyncio.create_task(self._answer(ask)) for ask in asks]
                if asking:
                    await asyncio.sleep(0)  # most renewals are granted at once: they go with the next call
                for task in asking:
                    if task.done():
                        answers.append(task.result())
                    else:  # one that waits for the rate goes as soon as it is granted
                        push = asyncio.create_task(self._push(link, task))
                        link.pushing.add(push)
                        push.add_done_callback(link.pushing.discard)
                self._hand_back(link, outcomes, outbox)
        finally:
            _cancel(link.pushing)

    async def _push(self, link: Link, task: asyncio.Task[tuple[int, Any]]) -> None:
        """Hand ``task``'s answer to the worker in a call of its own once it is ready: the pending
        ``exchange`` may not return for ``linger``, and a lease granted now is worth little later."""
        try:
            answer = await task
            await link.actor.answer.remote([answer])
        except ray.exceptions.RayActorError:
            pass  # the worker died: its link replaces it
        except Exception as exc:  # a bug: the link raises it after its next call
            link.failure = exc

    async def _halt(self, feed: Feed) -> None:
        """On a stop, the rows not sent yet go back to the feed: those waiting here, and those each
        worker holds unstarted (``halt``, beside its pending call). Then the feed counts only requests sent."""
        feed.holding()  # rows wait here and at the workers before they are sent: a stop gives them back
        try:
            await feed.stopping.wait()
            self._stopped = True
            unsent = len(self._line) + len(self._again)
            for _ in self._line:
                self._room.release()
            self._line.clear()
            self._again.clear()
            self._arrived.set()
            links = list(self.links.values())
            halted = await asyncio.gather(*(link.actor.halt.remote() for link in links), return_exceptions=True)
            for link, dropped in zip(links, halted, strict=True):
                if not isinstance(dropped, BaseException):  # else it died: its link's business
                    unsent += sum(link.held.pop(custom_id, None) is not None for custom_id in dropped)
            feed.give_back(unsent)
            logger.info("stopping: %d rows not sent yet stay to do", unsent)
        finally:
            feed.released()

    def _capacity(self, link: Link) -> int:
        """Rows a worker may hold: its requests in flight, and as many again ready to start, or more
        when that would not last until its next call returns (a call returns every ``linger``, with
        ``per_call`` records on average). No more, or a worker would keep rows another could start."""
        ahead = max(self.spec.concurrency, math.ceil(1.5 * link.per_call))
        return self.spec.concurrency + min(ahead, 256)

    async def _nudge(self) -> None:
        """Push a Retry-After pause to every worker as soon as one starts, beside their pending calls
        (which may not return for ``linger``). A worker that died meanwhile is its link's business."""
        while True:
            await self._grantor.paused.wait()
            self._grantor.paused.clear()
            pauses = self._grantor.pauses()
            refs = [link.actor.nudge.remote(pauses) for link in list(self.links.values())]
            await asyncio.gather(*refs, return_exceptions=True)

    def _hand_back(self, link: Link, outcomes: list[Outcome], outbox: Outbox) -> None:
        for kind, custom_id, value in outcomes:
            if link.held.pop(custom_id, None) is None:
                logger.warning("%s: a second outcome from worker %s dropped", custom_id, link.name)
                continue
            if kind == "dropped":  # it reached the worker after the stop: never sent
                self._feed.give_back(1)
            elif kind == "record":
                outbox.record(value)
            elif kind == "budget":
                outbox.budget_reached(value)
            elif kind == "fatal":
                raise FatalProviderError(value)
            else:
                raise RuntimeError(f"worker {link.name} failed on row {custom_id}: {value}")
        if not link.held:
            self._arrived.set()  # the workers waiting in _next may be done: no row left anywhere

    async def _answer(self, ask: Ask) -> tuple[int, Any]:
        """The coordinator's answer to a worker's question: a lease, or a reachability verdict."""
        ask_id, kind, args = ask
        if kind == "renew":
            return ask_id, await self._grantor.renew(*args)
        model, age = args
        return ask_id, await self._grantor.gave_up(model, time.monotonic() - age)

    async def _replace(self, dead: Link, exc: BaseException) -> Link | None:
        """A worker died: its rows with no record go back in line, and a new worker takes its place
        (None: none did, no row being left for it)."""
        ray.kill(dead.actor, no_restart=True)  # make sure: nothing of it may come back later
        self.links.pop(dead.name, None)
        lost = list(dead.held.values())
        self._again.extend(lost)  # before any await: a worker in _next that saw them nowhere would end
        self.requeued += len(lost)
        self._arrived.set()
        await still_there(f"worker {dead.name} died with {len(lost)} rows in flight ({cause(exc)})")
        limit = self.max_replacements if self.max_replacements is not None else 2 * self.workers
        logger.warning("worker %s (%s:%d) died with %d rows in flight; they go to the other workers (%s)",
                       dead.name, dead.host, dead.pid, len(lost), cause(exc))  # fmt: skip
        while True:
            if self.replaced >= limit:
                raise RunnerError(f"{self.replaced + 1} Ray workers died; stopped (the rows they held stay to do)")
            self.replaced += 1
            try:
                return await self._start(replacing=True)
            except ray.exceptions.RayActorError:  # placed on a node that died before the cluster knew
                await still_there(f"worker {dead.name}'s replacement died")


def _cancel(tasks: set[asyncio.Task[None]]) -> None:
    for task in list(tasks):
        task.cancel()


@contextlib.contextmanager
def ray_executor(
    caller: Caller, run_dir: Path, workers: int | None, address: str | None, concurrency: int
) -> Iterator[RayExecutor]:
    """The executor for ``--workers``/``--ray-address``, on a cluster started (or joined) for the run.

    ``concurrency`` is the run's total, split evenly between the workers; without ``workers``, a
    joined cluster gets one worker per CPU it has."""
    with cluster(run_dir, workers or 1, address) as record:
        n = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        yield RayExecutor(caller, n, spec_for(caller, n, concurrency), record)
