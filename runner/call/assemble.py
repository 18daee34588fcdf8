"""A call plan into a Caller: the one way every executor builds the caller it sends with.

The coordinator's process builds its caller from the plan with the run's own limits and budget
(``LocalPermits``); a Ray worker builds its own from the same plan with leased permits; the Batch
API executor uses the coordinator's. Deployments, tracing and model hooks are set up here, so a
caller is complete when it is made and nothing changes it afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from runner.call.caller import Caller
from runner.permits.limits import Limits
from runner.provider.setup import add_model_hook

if TYPE_CHECKING:
    from runner.permits.budget import Budget
    from runner.permits.leases import LeasedPermits
    from runner.permits.permits import Permits
    from runner.plan import CallPlan
    from runner.provider.provider import Complete

__all__ = ["build_caller"]


def build_caller(
    plan: CallPlan,
    limits: Limits,
    budget: Budget | None = None,
    leased: LeasedPermits | None = None,
    complete: Complete | None = None,
    calls: Mapping[str, Complete] | None = None,
    clock: Callable[[], float] | None = None,
) -> Caller:
    """The Caller for ``plan``: with the coordinator's ``limits`` and ``budget`` in its process, or with
    ``leased`` permits (a Ray worker; ``limits`` are then the worker's own, its share of the concurrency).
    ``complete``/``calls`` replace litellm's completion functions (tests, benchmarks). Unless the plan
    says ``sender="litellm"``, plain chat and embeddings to an OpenAI-compatible server go straight over
    HTTP (``runner.provider.wire``, ``runner.provider.wire_embed``), everything else through litellm."""
    from runner.provider.provider import acompletion

    for prefix, hook in plan.hooks:
        add_model_hook(prefix, hook)
    if complete is None and plan.sender == "auto":
        from runner.provider.wire import Sender

        complete = Sender(acompletion)
    if calls is None and plan.sender == "auto":
        from runner.job.endpoints import EMBEDDINGS
        from runner.provider.endpoints import FUNCTIONS
        from runner.provider.wire_embed import EmbedSender

        calls = {EMBEDDINGS: EmbedSender(FUNCTIONS[EMBEDDINGS])}
    send = complete or acompletion
    extra: dict[str, object] = {}
    if clock is not None:
        extra["clock"] = clock
    if calls is not None:
        extra["calls"] = calls
    tracing = None
    if plan.tracing is not None:
        from runner.provider.tracing import start_tracing

        plan.tracing.apply()
        tracing = start_tracing(plan.tracing.job, plan.tracing.run_id)
    permits: Permits | None = leased
    annotate, keyless = None, plan.keyless
    if plan.deployments is not None:
        from runner.call.deployments import Deployments

        deployments = Deployments(plan.deployments, limits, send, budget, leased)
        send, permits, annotate = deployments.complete, deployments.permits, deployments.annotate
        keyless = True  # each deployment brings its own key; the group name is no litellm model
    return Caller(
        job=plan.job,
        policy=plan.policy,
        timeout=plan.timeout,
        model=plan.model,
        api_base=None if plan.deployments is not None else plan.api_base,
        stream=plan.stream,
        complete=send,
        limits=limits,
        budget=budget,
        keyless=keyless,
        permits=permits,
        annotate=annotate,
        tracing=tracing,
        service_tier=plan.service_tier,
        tier_until=plan.tier_until,
        plan=plan,
        **extra,  # type: ignore[arg-type]
    )
