"""Permits whose model is a deployments group: each attempt takes the permits of the deployment picked for it.

``slot`` asks ``Deployments.pick`` for the deployment, notes it in the worker's row state (a
context variable: each worker task has its own) for ``Deployments.complete`` to send to, and takes
that deployment's limits; ``landed`` reports to the same deployment's limits, with the Retry-After
the provider really sent (the row itself may have been let go sooner, to another deployment).
Budget and reachability stay per group, as a Caller sees them.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from runner.call.deployfile import Deployment
from runner.permits.budget import Budget, worst_case
from runner.permits.limits import Charge, check_fits
from runner.permits.reachability import Verdict

if TYPE_CHECKING:
    from runner.call.deployments import Deployments
    from runner.permits.permits import Permits

FOR_THE_RUN = 10 * 365 * 86400.0  # a fatal deployment's pause, as the coordinator holds it: the rest of the run

__all__ = ["DeploymentPermits", "RowState", "row_state", "take_row_state"]


@dataclass(frozen=True, slots=True)
class _Charge(Charge):
    """A charge that knows which deployment's limits it was taken from."""

    deployment: str = ""


@dataclass
class RowState:
    """What one ask of a row went through: its current deployment and its failed attempts, by deployment."""

    group: str = ""  # the model group the row asked for (its fallbacks count as its own)
    deployment: Deployment | None = None
    retry_after: float | None = None  # the provider's Retry-After, kept for the deployment's pause
    fatal: bool = False  # the deployment failed for good on this attempt (cooled down for the run)
    errors: dict[str, dict[str, int]] = field(default_factory=dict)


# Per worker task (each task has its own context): the row it is working on.
_row: ContextVar[RowState | None] = ContextVar("runner_deployment_row", default=None)


def row_state() -> RowState:
    """The state of the row this worker task is on (made on first use)."""
    row = _row.get()
    if row is None:
        row = RowState()
        _row.set(row)
    return row


def take_row_state() -> RowState | None:
    """The row's state, and forget it: the worker's next row starts afresh."""
    row = _row.get()
    _row.set(None)
    return row


class DeploymentPermits:
    """``Permits`` whose model is a group: each attempt takes the permits of the deployment picked for it.

    In the coordinator's process the deployment's limits are the coordinator's own. In a Ray worker
    (``leased``), each attempt also takes a start from the lease the coordinator grants for that
    deployment (by its name), reports to it what the attempt met (a 429 then pauses that deployment
    in every worker; a fatal failure pauses it for the run, which every worker reads as cooled down),
    and reserves money from it."""

    def __init__(self, deployments: Deployments, budget: Budget | None = None, leased: Permits | None = None) -> None:
        self.deployments = deployments
        self.budget = budget
        self.leased = leased

    def counts_tokens(self, model: str) -> bool:
        group = self.deployments.plan.group(model)
        if self.leased is not None and any(self.leased.counts_tokens(d.id) for d in group):
            return True
        return self.budget is not None or any(self.deployments.limits_of(d).counts_tokens for d in group)

    def check(self, model: str, tokens: int) -> None:
        limits = [self.deployments.limits_of(d).tpm for d in self.deployments.plan.group(model)]
        if limits and all(limits):
            check_fits(tokens, max(t for t in limits if t))  # too large only if no deployment could take it

    async def reserve(self, model: str, prompt: int, max_tokens: int) -> float:
        group = self.deployments.plan.group(model)
        if self.leased is not None:  # the dearest deployment's worst case, held by the coordinator
            dearest = max(group, key=lambda d: worst_case(str(d.params["model"]), prompt, max_tokens))
            return await self.leased.reserve(str(dearest.params["model"]), prompt, max_tokens)
        if self.budget is None:
            return 0.0
        worst = max(self.budget.worst_case(str(d.params["model"]), prompt, max_tokens) for d in group)
        self.budget.reserve(worst)
        return worst

    def slot(self, model: str, prompt: int, allowance: int) -> AbstractAsyncContextManager[Charge]:
        return self._slot(model, prompt, allowance)

    @asynccontextmanager
    async def _slot(self, model: str, prompt: int, allowance: int) -> AsyncIterator[Charge]:
        row = row_state()
        deployment = await self.deployments.pick(model, row.errors)
        row.group, row.deployment, row.retry_after = model, deployment, None
        async with contextlib.AsyncExitStack() as held:
            if self.leased is not None:  # the coordinator's start for this deployment, by lease
                await held.enter_async_context(self.leased.slot(deployment.id, prompt, allowance))
            charge = await held.enter_async_context(self.deployments.limits_of(deployment).slot(prompt, allowance))
            yield _Charge(charge.prompt, charge.allowance, charge.tokens, deployment.id)

    async def landed(
        self,
        model: str,
        charge: Charge,
        headers: Mapping[str, str],
        usage: tuple[int | None, int | None] | None,
        rate_limited: bool = False,
        retry_after: float | None = None,
    ) -> None:
        deployment = self.deployments.by_id.get(charge.deployment if isinstance(charge, _Charge) else "")
        limits = self.deployments.limits_of(deployment) if deployment else self.deployments.limits.for_model(model)
        row = row_state()
        retry_after = row.retry_after if row.retry_after is not None else retry_after
        row.retry_after = None
        limits.observe(headers, ok=usage is not None, rate_limited=rate_limited, retry_after=retry_after)
        limits.settle(charge, *(usage or (None, None)))
        if self.leased is not None and deployment is not None:
            if row.fatal:  # every other worker cools it down too: paused for the run
                row.fatal, retry_after = False, FOR_THE_RUN
            await self.leased.landed(deployment.id, charge, headers, usage, rate_limited, retry_after)
        if (usage is not None or headers) and (reach := self.deployments.reach(model)) is not None:
            reach.heard()

    def spent(
        self, worst: float, cost: float | None, prompt: int, provider_prompt: int | None, estimated: bool = False
    ) -> None:
        if self.leased is not None:
            self.leased.spent(worst, cost, prompt, provider_prompt, estimated)
        if self.budget is not None:
            self.budget.settle(worst, cost, prompt, provider_prompt, estimated)

    def last_heard(self, model: str) -> float:
        reach = self.deployments.reach(model)
        return reach.last_heard if reach is not None else 0.0

    async def gave_up(self, model: str, heard_before: float) -> Verdict:
        reach = self.deployments.reach(model)
        return reach.gave_up(heard_before) if reach is not None else Verdict.RECORD
