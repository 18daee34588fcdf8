"""What the Ray executor keeps per worker (a link), and what each worker is given to build its Caller."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from runner.call.caller import Caller
from runner.errors import RunnerError
from runner.executors.ray_cluster import gone
from runner.executors.ray_worker import WorkerSpec
from runner.plan import CallPlan
from runner.provider.setup import hooks
from runner.rows import Row

__all__ = ["CHECK_EVERY", "Link", "plan_of", "ready", "spec_for", "still_there"]

CHECK_EVERY = 2.0  # seconds between checks that the cluster still has a node, while a worker starts


def spec_for(caller: Caller, workers: int, concurrency: int, **tuning: Any) -> WorkerSpec:
    """What each worker needs to build a Caller like ``caller``: the run's call plan, its share of the concurrency."""
    return WorkerSpec(plan=plan_of(caller), concurrency=max(1, math.ceil(concurrency / workers)), **tuning)


def plan_of(caller: Caller) -> CallPlan:
    """The plan ``caller`` was built from (a Caller made by hand, in a test or a benchmark: its own fields)."""
    if caller.plan is not None:
        return caller.plan
    return CallPlan(job=caller.job, policy=caller.policy, timeout=caller.timeout, model=caller.model,
                    api_base=caller.api_base, stream=caller.stream, keyless=caller.keyless,
                    priced=caller.budget is not None, hooks=tuple(hooks().items()))  # fmt: skip


@dataclass
class Link:
    """One worker as the coordinator sees it: its actor and the rows it holds with no record yet."""

    name: str
    actor: Any
    pid: int = 0
    host: str = ""
    held: dict[str, Row] = field(default_factory=dict)
    per_call: float = 0.0  # outcomes a call brought back (a moving average)
    pushing: set[asyncio.Task[None]] = field(default_factory=set)  # answers on their way by ``answer``
    failure: Exception | None = None  # what went wrong while pushing one


async def ready(actor: Any, name: str, drained: Callable[[], bool] | None = None) -> tuple[int, str] | None:
    """A new worker's PID and host, once it is up; None if ``drained()`` says no row is left for it
    while it waits; a RunnerError if the cluster dies meanwhile (with no node left, Ray would wait
    for one forever)."""
    answer = asyncio.ensure_future(actor.ready.remote())
    try:
        while not (await asyncio.wait({answer}, timeout=CHECK_EVERY))[0]:
            if drained is not None and drained():
                return None
            await still_there(f"worker {name} could not start")
        pid, host = await answer
        return pid, host
    finally:
        answer.cancel()


async def still_there(what: str) -> None:
    """Raise a resumable stop if the cluster is gone (its raylet killed, its machines lost)."""
    try:
        why = await asyncio.wait_for(asyncio.to_thread(gone), 5 * CHECK_EVERY)
    except TimeoutError:
        why = "its head does not answer"
    if why is not None:
        raise RunnerError(f"the Ray cluster is gone ({why}): {what}; run the same command again to resume")
