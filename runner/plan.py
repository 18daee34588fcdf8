"""The call plan: everything that decides how a row becomes a request and a record, built once.

The command line builds one ``CallPlan`` from its options; every executor turns it into its
``Caller`` the same way (``runner.call.assemble.build_caller``): in this process, in each Ray
worker (the plan travels pickled), and in the Batch API executor. Nothing sets a caller's field
after it is built, so an option added here reaches every executor without touching any of them.

What is *not* in the plan is what the coordinator owns and grants: the limits, the budget, the
pauses (``runner.permits.permits``). A plan only says whether requests must price their worst case
(``priced``: a ``--max-cost`` run) so that a worker can reserve money it asks the coordinator for.

The plan is frozen and picklable: a job loaded from a file travels as a reference to that file
(``Job.__reduce__``), tracing as its settings (each process starts its own exporter), model hooks
(the offline ``local/`` models) as the functions themselves.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from runner.call.deployfile import DeploymentFile
    from runner.call.retry import RetryPolicy
    from runner.job.definition import Job
    from runner.provider.setup import ModelHook

__all__ = ["TIERS", "CallPlan", "TraceSettings"]

TIERS = ("auto", "default", "flex", "priority")  # OpenAI's (and litellm's) service tiers

# The OpenTelemetry SDK reads its exporter's endpoint, headers and resource from these; a worker on
# another machine gets the coordinator's values, so its spans go where the coordinator's go.
_OTEL_PREFIX = "OTEL_"


@dataclass(frozen=True)
class TraceSettings:
    """``--otel``: one span per attempt, named for the job and run, exported as the environment says."""

    job: str
    run_id: str
    environment: tuple[tuple[str, str], ...] = ()  # the OTEL_* variables of the process that made the plan

    @classmethod
    def here(cls, job: str, run_id: str) -> TraceSettings:
        """Tracing settings with this process's OTEL_* environment."""
        found = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(_OTEL_PREFIX)))
        return cls(job, run_id, found)

    def apply(self) -> None:
        """Set the OTEL_* variables in this process (a worker), where they are not set already."""
        for name, value in self.environment:
            os.environ.setdefault(name, value)


@dataclass(frozen=True)
class CallPlan:
    """How every row of a run becomes a request and a record, whichever executor sends it."""

    job: Job
    policy: RetryPolicy
    timeout: float
    model: str | None = None  # --model: beats the request's own model and the job's
    api_base: str | None = None
    stream: bool = False  # --stream: stream every chat request, whatever the job says
    keyless: bool = False  # --dry-run: build requests without needing a key, since nothing is sent
    deployments: DeploymentFile | None = None  # --deployments (or the job's): several deployments per model name
    tracing: TraceSettings | None = None  # --otel
    priced: bool = False  # --max-cost: each request reserves its worst case before it goes
    service_tier: str | None = None  # --service-tier: chat requests ask for it (flex, priority, auto, default)
    tier_until: float | None = None  # --flex-deadline: epoch seconds after which requests go at the default tier
    hooks: tuple[tuple[str, ModelHook], ...] = field(default=(), repr=False)  # model hooks (offline local/ models)
    sender: Literal["auto", "litellm"] = "auto"  # --sender: "litellm" sends every request through litellm.acompletion

    @property
    def reserved_tier(self) -> str | None:
        """The tier --max-cost reserves each request at: the one asked for, unless --flex-deadline may send
        it at the default tier (dearer than flex), which is then reserved."""
        if self.service_tier == "flex" and self.tier_until is not None:
            return None
        return self.service_tier if self.service_tier in ("flex", "priority") else None

    @property
    def models(self) -> list[str]:
        """The litellm models this plan may call, where it knows them: each deployment's, else --model/the job's."""
        if self.deployments is not None:
            return list(dict.fromkeys(str(d.params["model"]) for d in self.deployments.deployments))
        model = self.model or self.job.model
        return [model] if model else []
