"""Several deployments behind one model name: which one a request goes to, and what a failure there means.

The design point: runner's limits are asked *before* a request goes, per model, while litellm's
Router picks the deployment *inside* ``router.acompletion``, with retries and fallbacks of its own
(and a fallback there starts a fresh retry cycle, multiplying attempts). So the Router is only asked
to choose, and runner keeps the rest:

- ``DeploymentPermits.slot`` (``runner.call.deployment_permits``) picks: ``Router.select(group)``
  (its routing strategy, weighted by each deployment's rpm/tpm, and its cooldowns) unless that
  deployment is paused or full while another of the group is ready; the fallback groups when the
  group has no deployment left or ready. It then
  takes *that deployment's* permits: the coordinator's limits keyed by the deployment's name (its
  own RPM/TPM buckets, learned limits, adaptive concurrency and Retry-After pause).
- ``complete`` calls ``litellm.acompletion`` with that deployment's ``litellm_params`` and
  ``max_retries=0``. Every call is one attempt of the one retry policy, whichever deployment or
  fallback group it reached, so a fallback never resets the attempt count.
- A failed attempt is classified once (``failures.classify``); what it means for the deployment is
  decided here. FATAL (401, 403, 404, 402) cools the deployment down for the rest of the run, in the
  Router too, and is retried elsewhere; only when no deployment of the group or its fallbacks is left
  does it stay FATAL and stop the run (exit 3). A 429's Retry-After pauses that deployment only, and
  the row's own back-off is not stretched to it while another deployment is ready. A connection
  refused or a time-out sets the deployment aside for a doubling while (1 s, 2 s, ... 30 s) until it answers again;
  when every deployment is set aside or paused, a row waits for one that has answered in this run rather
  than for one that never has (one time-out on a loaded machine does not send the retries to a hung one).

Each record's ``meta.deployment`` names the deployment that answered (or was tried last), and
``meta.deployment_errors`` counts failed attempts by deployment and code; no key is ever in them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from runner.call.deployfile import Deployment, DeploymentFile
from runner.call.deployment_permits import FOR_THE_RUN, DeploymentPermits, RowState, row_state, take_row_state
from runner.permits.budget import Budget
from runner.permits.limits import Limits, ModelLimits
from runner.permits.reachability import Reachability
from runner.provider.failures import Disposition, ProviderFailure, classify
from runner.provider.provider import Complete, acompletion

if TYPE_CHECKING:
    from runner.permits.leases import LeasedPermits

__all__ = ["Deployments"]

logger = logging.getLogger(__name__)

_GONE = 0.5 * FOR_THE_RUN  # a pause this long: another worker cooled the deployment down for the run
_ASIDE_FIRST, _ASIDE_MOST = 1.0, 30.0  # a deployment refusing connections: set aside, doubling


class Deployments:
    """The run's deployments: the Router that chooses, the state of each one, and the completion function."""

    def __init__(
        self,
        plan: DeploymentFile,
        limits: Limits,
        complete: Complete = acompletion,
        budget: Budget | None = None,
        leased: LeasedPermits | None = None,
    ) -> None:
        from litellm import Router

        self.plan, self.limits = plan, limits
        self._complete = complete
        self.by_id = {d.id: d for d in plan.deployments}
        self.dead: dict[str, str] = {}  # deployment -> why it was cooled down for the run
        self._aside: dict[str, float] = {}  # deployment -> how long it was last set aside (refusing connections)
        self._answered: set[str] = set()  # deployments that have answered in this run (a hung one never has)
        for d in plan.deployments:  # each deployment's own rates, in these limits and in any granted from them
            limits.own_rates(d.id, d.rpm, d.tpm)
        model_list = [
            {"model_name": d.group, "model_info": {"id": d.id},
             "litellm_params": {**d.params, **{k: v for k, v in (("rpm", d.rpm), ("tpm", d.tpm)) if v}}}
            for d in plan.deployments
        ]  # fmt: skip
        # No retries, no fallbacks in the Router: the one retry policy owns every attempt.
        self.router = Router(model_list=model_list, num_retries=0, cooldown_time=FOR_THE_RUN, allowed_fails=0)
        self._reach: dict[str, Reachability] = {}
        self.leased = leased  # in a Ray worker: the coordinator's permission, per deployment, by lease
        self.permits = DeploymentPermits(self, budget, leased)

    def _now(self) -> float:
        return self.limits.clock() if self.limits.clock else asyncio.get_running_loop().time()

    def limits_of(self, deployment: Deployment) -> ModelLimits:
        """The limits of one deployment: its own rpm/tpm, else the run's (made on first use, in the loop)."""
        return self.limits.for_model(deployment.id)

    def pause_left(self, deployment: Deployment) -> float:
        """Seconds before a request may go to ``deployment``: its own pause, or the coordinator's (leased)."""
        here = self.limits_of(deployment).pause_left()
        return max(here, self.leased.pause_left(deployment.id)) if self.leased is not None else here

    def gone(self, deployment: Deployment) -> bool:
        """Cooled down for the run: here, or in another worker (the coordinator pauses it for the run)."""
        return deployment.id in self.dead or self.pause_left(deployment) >= _GONE

    def reach(self, group: str) -> Reachability | None:
        """Whether any deployment of ``group`` answers at all (None: not a group of the file)."""
        if group not in self.plan.groups:
            return None
        if group not in self._reach:
            self._reach[group] = Reachability(self._now, *self.limits.unreachable)
        return self._reach[group]

    def chain(self, group: str) -> list[str]:
        """The group, then its fallback groups, in order."""
        return [group, *self.plan.fallbacks.get(group, ())]

    def members(self, group: str) -> list[Deployment]:
        """Every deployment a request for ``group`` may go to: its own, then its fallbacks'."""
        return [d for name in self.chain(group) for d in self.plan.group(name)]

    async def pick(self, group: str, tried: Mapping[str, Mapping[str, int]] | None = None) -> Deployment:
        """The deployment the next attempt for ``group`` goes to; a FATAL failure if none is left.

        ``tried``: the row's failed attempts by deployment. A retry goes to a deployment the row failed on
        least (the Router's weights decide among those), so a 5xx is not asked of the same server again
        while another one is ready."""
        if group not in self.plan.groups:
            raise ProviderFailure(Disposition.ROW, "unknown_model", f"model {group!r} is not a model_name in "
                                  f"{self.plan.source} (it has {', '.join(self.plan.groups)})")  # fmt: skip
        for name in self.chain(group):
            alive = [d for d in self.plan.group(name) if not self.gone(d)]
            ready = [d for d in alive if self.pause_left(d) <= 0]
            if not ready:
                continue
            if tried:
                fewest = min(_failures(tried, d) for d in ready)
                ready = [d for d in ready if _failures(tried, d) == fewest]
                alive = [d for d in alive if d in ready or self.pause_left(d) > 0]
            chosen = self.by_id.get(await self._select(name, alive) or "", ready[0])
            if chosen in ready and (self.plan.strategy != "least-busy" and self._has_room(chosen)):
                return chosen
            roomy = [d for d in ready if self._has_room(d)]
            return min(roomy or ready, key=self._busy)
        alive = [d for d in self.members(group) if not self.gone(d)]
        if alive:  # everything left is paused: queue on the one free soonest (its slot waits the pause out),
            # but not on one set aside that never answered while one that answers is only resting
            return min(alive, key=lambda d: (d.id in self._aside and d.id not in self._answered, self.pause_left(d)))
        why = "; ".join(f"{d.id}: {self.dead.get(d.id, 'cooled down by another worker')}" for d in self.members(group))
        raise ProviderFailure(Disposition.FATAL, "no_deployment_left", f"every deployment of {group} failed ({why})")

    async def _select(self, group: str, alive: list[Deployment]) -> str | None:
        """The Router's pick (routing strategy, rpm/tpm weights, cooldowns), or None for least-busy."""
        if self.plan.strategy == "least-busy" or len(alive) == 1:
            return alive[0].id if len(alive) == 1 else None
        try:
            chosen = await self.router.select(group, {"messages": [{"role": "user", "content": ""}]})
        except Exception:  # every deployment cooled down in the Router: runner's own state decides
            return None
        info = chosen.get("model_info") if isinstance(chosen, Mapping) else None
        return info.get("id") if isinstance(info, Mapping) else None

    def _busy(self, deployment: Deployment) -> float:
        concurrency = self.limits_of(deployment).concurrency
        return concurrency.in_flight / concurrency.limit

    def _has_room(self, deployment: Deployment) -> bool:
        """Whether a request could start there now: a place in its concurrency and a request in its bucket."""
        limits = self.limits_of(deployment)
        if limits.concurrency.in_flight >= limits.concurrency.limit:
            return False
        return limits.requests is None or limits.requests.has_capacity(1)

    async def complete(self, **request: Any) -> Any:
        """One attempt, sent to the deployment the permits chose (``slot``), with its own arguments."""
        row = row_state()
        deployment = row.deployment
        if deployment is None:  # a Caller without these permits: nothing was picked
            raise RuntimeError("Deployments.complete needs Deployments.permits as the Caller's permits")
        call = {**request, **deployment.params, "max_retries": 0}
        if "api_base" not in deployment.params:  # the deployment's own endpoint, never --api-base
            call.pop("api_base", None)
        try:
            response = await self._complete(**call)
        except Exception as exc:
            failure = classify(exc)
            failure.__cause__ = exc  # what it was caused by (a refused connection) is read before it is raised
            raise self._failed(deployment, failure, row, exc) from exc
        self._aside.pop(deployment.id, None)
        self._answered.add(deployment.id)
        return response

    def _failed(
        self, deployment: Deployment, failure: ProviderFailure, row: RowState, exc: Exception
    ) -> ProviderFailure:
        """What a failed attempt means for the row, now that the deployment's state knows of it."""
        codes = row.errors.setdefault(deployment.id, {})
        codes[failure.code] = codes.get(failure.code, 0) + 1
        group = row.group or deployment.group
        if failure.disposition is Disposition.FATAL:
            if deployment.id not in self.dead:
                self.dead[deployment.id] = f"{failure.code} ({failure.status})"
                row.fatal = True  # its permits tell the coordinator, so every worker cools it down too
                with contextlib.suppress(Exception):  # runner's own ``dead`` decides; the Router only mirrors it
                    self.router.health().record_failure(deployment.id, exc, failure.status or 401)
                left = [d.id for d in self.members(group) if d.id not in self.dead]
                logger.warning("deployment %s (%s): %s: cooled down for the rest of the run; %s", deployment.id,
                               deployment.label, failure.message, f"going on with {', '.join(left)}" if left
                               else f"no deployment of {group} is left")  # fmt: skip
            if self._alive(group):
                return _again(failure, f"{deployment.id}: {failure.message}")
            return ProviderFailure(Disposition.FATAL, failure.code, f"every deployment of {group} failed; "
                                   f"last, {deployment.id}: {failure.message}", failure.status)  # fmt: skip
        # A refused connection or a time-out: no answer from there. Set it aside for a doubling while (once per
        # wave), so the retries go to a deployment that answers rather than wait on a hung one.
        silent = failure.unreachable or failure.code == "timeout"
        if silent and self.pause_left(deployment) <= 0:
            aside = min(_ASIDE_MOST, 2 * self._aside.get(deployment.id, _ASIDE_FIRST / 2))
            self._aside[deployment.id] = aside
            self.limits_of(deployment).observe({}, ok=False, retry_after=aside)
        if failure.retry_after is not None and self._ready_elsewhere(group, deployment):
            row.retry_after = failure.retry_after  # the deployment's pause; the row may go elsewhere now
            return _again(failure, failure.message)
        return failure

    def _alive(self, group: str) -> bool:
        return any(not self.gone(d) for d in self.members(group))

    def _ready_elsewhere(self, group: str, deployment: Deployment) -> bool:
        others = [d for d in self.members(group) if d is not deployment and not self.gone(d)]
        return any(self.pause_left(d) <= 0 for d in others)

    def annotate(self, meta: dict[str, Any]) -> None:
        """Name the row's deployment and its failed attempts by deployment in ``meta``; start the next row afresh."""
        row = take_row_state()
        if row is None:
            return
        if row.deployment is not None:
            meta["deployment"] = row.deployment.id
        if row.errors:
            merged = meta.setdefault("deployment_errors", {})
            for name, codes in row.errors.items():
                mine = merged.setdefault(name, {})
                for code, n in codes.items():
                    mine[code] = mine.get(code, 0) + n


def _failures(tried: Mapping[str, Mapping[str, int]], deployment: Deployment) -> int:
    return sum(tried.get(deployment.id, {}).values())


def _again(failure: ProviderFailure, message: str) -> ProviderFailure:
    """The same failure (same code: a 429 is still counted as one), retried at the policy's own pace
    rather than after a Retry-After: another deployment is ready for it."""
    return ProviderFailure(Disposition.RETRY, failure.code, message, failure.status, None, failure.headers)
