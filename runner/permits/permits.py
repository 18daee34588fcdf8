"""What a Caller asks of the coordinator around each request: rate-limit permission, budget, pauses.

The coordinator owns the per-model limits (RPM/TPM buckets, adaptive concurrency, Retry-After
pauses, ``runner.permits.limits``) and the budget (``--max-cost``, ``runner.permits.budget``). A Caller
never touches them directly; it asks through ``Permits``:

    check(model, tokens)                 refuse at once a request no wait would let through
    reserve(model, prompt, max_tokens)   hold the request's worst-case cost (BudgetReached if it can't)
    slot(model, prompt, allowance)       wait out pauses, concurrency and rate; hold the place while sent
    landed(model, charge, ...)           what the attempt used and what the provider said (429, headers)
    spent(worst, cost, ...)              give the reservation back and add the real cost
    last_heard / gave_up                 a row that got no answer at all: record, retry, or stop the run

``LocalPermits`` answers in-process, one request at a time (the online executor). A worker in
another process uses ``runner.permits.leases.LeasedPermits``: the same protocol over leases granted
in bulk, so that permission is not one cross-process call per request.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

from runner.permits.budget import Budget
from runner.permits.limits import Charge, Limits
from runner.permits.reachability import Verdict

__all__ = ["LocalPermits", "Permits"]


class Permits(Protocol):
    """The coordinator's side of every request, as a Caller sees it."""

    def counts_tokens(self, model: str) -> bool:
        """Whether requests to ``model`` need a token estimate (a token limit or a budget)."""
        ...

    def check(self, model: str, tokens: int) -> None:
        """Raise TooLarge for a request that no amount of waiting would let through."""
        ...

    async def reserve(self, model: str, prompt: int, max_tokens: int) -> float:
        """Hold the request's worst case against the budget (BudgetReached if it does not fit); the amount held."""
        ...

    def slot(self, model: str, prompt: int, allowance: int) -> AbstractAsyncContextManager[Charge]:
        """Wait until a request may go; hold its place while it runs."""
        ...

    async def landed(
        self,
        model: str,
        charge: Charge,
        headers: Mapping[str, str],
        usage: tuple[int | None, int | None] | None,
        rate_limited: bool = False,
        retry_after: float | None = None,
    ) -> None:
        """An attempt ended: ``usage`` (prompt, completion tokens) if it was answered, else None."""
        ...

    def spent(
        self, worst: float, cost: float | None, prompt: int, provider_prompt: int | None, estimated: bool = False
    ) -> None:
        """A request is over: give back ``worst`` and add ``cost`` (None: unknown, count the worst case;
        ``estimated``: litellm's count, not the provider's, counted with the budget's margin)."""
        ...

    def last_heard(self, model: str) -> float:
        """When ``model`` last answered anything (an opaque mark to hand back to ``gave_up``)."""
        ...

    async def gave_up(self, model: str, heard_before: float) -> Verdict:
        """A row could not connect in any attempt: record it, retry it, or stop the run."""
        ...


@dataclass
class LocalPermits:
    """Permits answered in-process from the coordinator's own limits and budget."""

    limits: Limits
    budget: Budget | None = None

    def counts_tokens(self, model: str) -> bool:
        return self.budget is not None or self.limits.for_model(model).counts_tokens

    def check(self, model: str, tokens: int) -> None:
        self.limits.for_model(model).check(tokens)

    async def reserve(self, model: str, prompt: int, max_tokens: int) -> float:
        if self.budget is None:
            return 0.0
        worst = self.budget.worst_case(model, prompt, max_tokens)
        self.budget.reserve(worst)
        return worst

    def slot(self, model: str, prompt: int, allowance: int) -> AbstractAsyncContextManager[Charge]:
        return self.limits.for_model(model).slot(prompt, allowance)

    async def landed(
        self,
        model: str,
        charge: Charge,
        headers: Mapping[str, str],
        usage: tuple[int | None, int | None] | None,
        rate_limited: bool = False,
        retry_after: float | None = None,
    ) -> None:
        limits = self.limits.for_model(model)
        limits.observe(headers, ok=usage is not None, rate_limited=rate_limited, retry_after=retry_after)
        limits.settle(charge, *(usage or (None, None)))  # a refused request used no tokens

    def spent(
        self, worst: float, cost: float | None, prompt: int, provider_prompt: int | None, estimated: bool = False
    ) -> None:
        if self.budget is not None:
            self.budget.settle(worst, cost, prompt, provider_prompt, estimated)

    def last_heard(self, model: str) -> float:
        return self.limits.for_model(model).reach.last_heard

    async def gave_up(self, model: str, heard_before: float) -> Verdict:
        return self.limits.for_model(model).reach.gave_up(heard_before)
