"""Permission across a process boundary: the coordinator grants leases in bulk, a worker spends them.

A worker in another process (a Ray actor) must not ask the coordinator once per request. It holds,
per model, a ``Lease``: a few request starts and tokens already taken from the coordinator's
buckets, and a budget reservation, valid for about ``term`` seconds. ``LeasedPermits`` spends it
locally and renews it with one call, ``Grantor.renew(report, want)``, that also carries back what
the worker saw (tokens really used, 429s, Retry-After, headers, answers, money spent). A 429 makes
the worker pause at once and renew early; the coordinator then pauses every other worker's next
lease, so a Retry-After pause reaches every worker within one lease term. Expired, unused starts
and tokens go back to the buckets at the next renewal.

``Grantor.renew`` is the only call that crosses the boundary; it takes and returns plain frozen
dataclasses, so any transport (a Ray actor method, a queue) can carry it.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace

from runner.permits.budget import Budget, BudgetReached
from runner.permits.limits import Charge, Limits, check_fits
from runner.permits.reachability import Verdict

__all__ = ["Grantor", "Lease", "LeasedPermits", "Report", "Want"]


@dataclass(frozen=True, slots=True)
class Want:
    """What a worker asks for with a renewal."""

    model: str
    requests: int = 1  # request starts
    tokens: float = 0.0  # tokens for them (estimates), when the model counts tokens
    dollars: float = 0.0  # budget to reserve, when there is a budget


@dataclass(frozen=True, slots=True)
class Lease:
    """A slice of one model's permission, granted by the coordinator."""

    model: str
    requests: int
    tokens: float
    dollars: float
    counts_tokens: bool  # whether the model has a token limit (requests need an estimate)
    tpm: float | None  # the whole per-minute token limit, for refusing impossible requests at once
    budget: bool  # whether the run has --max-cost
    pause_s: float  # seconds from the grant before any request may start (a Retry-After pause)
    term_s: float  # seconds from the grant after which the rest goes back
    metered: bool = True  # whether the model's requests or tokens are rate-limited (else renewed ahead)


@dataclass(frozen=True, slots=True)
class Report:
    """What a worker did since its last renewal, for one model."""

    model: str
    unused_requests: int = 0
    unused_tokens: float = 0.0  # estimates not used, plus the correction from real usage
    unused_dollars: float = 0.0  # reservation given back
    spent_dollars: float = 0.0  # what answered requests really cost
    answered: int = 0
    rate_limited: int = 0
    retry_after: float | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    prompt_pairs: tuple[tuple[int, int], ...] = ()  # (offline estimate, provider's count), for the budget margin
    estimated_dollars: float = 0.0  # what answers without the provider's usage cost by litellm's count


FREE_STARTS = 4  # an unmetered lease holds this many times the starts of a metered one (see Grantor.renew)


class Grantor:
    """The coordinator's side: grants leases from its limits and budget, and takes reports back.

    A lease lasts ``term`` seconds when the model's requests or tokens are metered (a slice of the
    rate), and ``free_term`` when they are not: then a lease holds nothing the others could use,
    and renewing it ten times a second only made workers wait on round trips (bench.ray: 308 ->
    350 calls/s with two workers). Pauses do not wait for a renewal either way: ``pauses()`` goes
    to every worker with each call (``LeasedPermits.pause``), and ``paused`` is set when a report
    starts or extends one, for the executor to push it at once."""

    def __init__(self, limits: Limits, budget: Budget | None = None, term: float = 0.1, free_term: float = 1.0) -> None:
        self.limits, self.budget, self.term, self.free_term = limits, budget, term, free_term
        self.paused = asyncio.Event()

    def pauses(self) -> dict[str, float]:
        """Seconds left of each model's Retry-After pause, for the models that have one."""
        return {name: left for name, m in self.limits.models.items() if (left := m.pause_left()) > 0}

    async def renew(self, report: Report | None, want: Want) -> Lease:
        """Apply ``report``, then grant what ``want`` asks for: fewer requests if the rate or the adaptive
        concurrency allows fewer in one term, and no more of the budget than is left."""
        if report is not None:
            self._apply(report)
        limits = self.limits.for_model(want.model)
        n = 0
        metered = limits.requests is not None or limits.counts_tokens
        if want.requests:
            # Unmetered, a lease only counts starts: up to FREE_STARTS times the concurrency, so a
            # busy worker renews a few times a second rather than many (each call costs it CPU).
            n = min(want.requests, limits.concurrency.limit * (1 if metered else FREE_STARTS))
            if limits.requests is not None:  # no more than one term's worth of the rate
                n = min(n, int(limits.requests.per_minute / 60 * self.term))
            n = max(1, n)
            await limits.grant(n, want.tokens * n / want.requests)
        dollars = self.budget.hold_up_to(want.dollars) if self.budget is not None and want.dollars else 0.0
        tokens = want.tokens * n / want.requests if want.requests else 0.0
        return Lease(want.model, n, tokens, dollars, limits.counts_tokens, limits.tpm, self.budget is not None,
                     limits.pause_left(), self.term if metered else self.free_term, metered)  # fmt: skip

    def _apply(self, report: Report) -> None:
        limits = self.limits.for_model(report.model)
        limits.give_back(report.unused_requests, report.unused_tokens)
        for _ in range(report.answered):
            limits.observe({}, ok=True)
        if report.rate_limited:
            limits.observe({}, ok=False, rate_limited=True, retry_after=report.retry_after)
        elif report.retry_after is not None:
            limits.observe({}, ok=False, retry_after=report.retry_after)
        if report.rate_limited or report.retry_after is not None:
            self.paused.set()
        if report.headers:
            limits.observe(report.headers, ok=False)
        if self.budget is not None:
            self.budget.settle(report.unused_dollars, 0.0)
            self.budget.spend(report.spent_dollars + self.budget.charge(report.estimated_dollars, estimated=True))
            for prompt, provider in report.prompt_pairs:
                self.budget.settle(0.0, 0.0, prompt, provider)

    async def gave_up(self, model: str, heard_before: float) -> Verdict:
        """Reachability is the coordinator's: it hears every worker's answers through their reports."""
        return self.limits.for_model(model).reach.gave_up(heard_before)


Renew = Callable[[Report | None, Want], Awaitable[Lease]]


@dataclass
class _Held:
    """One model's permission as the worker holds it: what is left, until when, and what to report."""

    requests: int = 0
    tokens: float = 0.0
    expires: float = -math.inf
    counts_tokens: bool = True  # until the first lease says otherwise: estimate
    tpm: float | None = None
    report: Report | None = None
    metered: bool = True
    granted: int = 0  # starts the last lease gave
    ahead: asyncio.Task[None] | None = None  # a renewal started before this lease ran out


class LeasedPermits:
    """The worker's side: ``Permits`` answered from leases, renewed through ``renew`` (one call per lease).

    Request starts and tokens are asked ``batch`` requests' worth at a time; budget reservations
    are asked for the same way. Whatever a lease left when it expires goes back with the next
    renewal's report. ``worst_case`` prices a request's worst case locally (litellm's price map is
    the same in every process); the coordinator only holds the money.
    """

    def __init__(
        self,
        renew: Renew,
        worst_case: Callable[[str, int, int], float] | None = None,
        gave_up: Callable[[str, float], Awaitable[Verdict]] | None = None,
        batch: int = 8,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._renew, self._worst_case, self._gave_up = renew, worst_case, gave_up
        self.batch, self._clock = batch, clock
        self._held: dict[str, _Held] = {}
        self._turn: dict[str, asyncio.Lock] = {}
        self._paused_until: dict[str, float] = {}
        self._last_heard: dict[str, float] = {}
        self._dollars = 0.0  # budget reserved and not yet handed to a request
        self._money = Report("")  # money spent and given back, not reported yet

    def counts_tokens(self, model: str) -> bool:
        held = self._held.get(model)
        return self._worst_case is not None or held is None or held.counts_tokens

    def check(self, model: str, tokens: int) -> None:
        held = self._held.get(model)
        check_fits(tokens, held.tpm if held is not None else None)

    async def reserve(self, model: str, prompt: int, max_tokens: int) -> float:
        if self._worst_case is None:
            return 0.0
        worst = self._worst_case(model, prompt, max_tokens)
        if self._dollars < worst:
            await self._renewed(model, Want(model, 0, 0.0, worst * self.batch))
        if self._dollars < worst:  # what is left of the budget can't hold this request's worst case
            raise BudgetReached(f"--max-cost reached (next request up to ${worst:.6g})")
        self._dollars -= worst
        return worst

    @asynccontextmanager
    async def slot(self, model: str, prompt: int, allowance: int) -> AsyncIterator[Charge]:
        charge = Charge(prompt, allowance, prompt + allowance)
        while True:
            await self._wait_out_pause(model)
            held = self._held.setdefault(model, _Held())
            fresh = self._clock() < held.expires
            enough = not held.counts_tokens or held.tokens >= charge.tokens
            if fresh and held.requests >= 1 and enough:
                held.requests -= 1
                held.tokens -= charge.tokens if held.counts_tokens else 0
                if not held.metered and held.ahead is None and held.requests < held.granted // 2:
                    # Nothing metered: renew before the lease runs out, so no request waits on the
                    # round trip (every request stalled on it at each renewal).
                    held.ahead = asyncio.create_task(self._renew_ahead(model, held))
                break
            n = self._starts(held)
            await self._renewed(model, Want(model, n, charge.tokens * n))
        yield charge

    async def _renew_ahead(self, model: str, held: _Held) -> None:
        try:
            await self._renewed(model, Want(model, self._starts(held)), ahead=True)
        finally:
            held.ahead = None

    def _starts(self, held: _Held) -> int:
        """How many starts to ask a lease for: ``batch``, or FREE_STARTS times that when nothing is metered."""
        return self.batch if held.metered else self.batch * FREE_STARTS

    async def landed(
        self,
        model: str,
        charge: Charge,
        headers: Mapping[str, str],
        usage: tuple[int | None, int | None] | None,
        rate_limited: bool = False,
        retry_after: float | None = None,
    ) -> None:
        held = self._held.setdefault(model, _Held())
        report = held.report or Report(model)
        unused = charge.tokens  # a refused request used no tokens
        if usage is not None or headers:
            self._last_heard[model] = self._clock()
        if usage is not None:
            prompt, completion = usage
            # The provider counts prompt + max_tokens; no usage at all: nothing to correct by, give it all back.
            unused = charge.tokens - (prompt + max(completion or 0, charge.allowance)) if prompt else charge.tokens
            report = replace(report, answered=report.answered + 1, headers=dict(headers) or report.headers)
        if held.counts_tokens:
            report = replace(report, unused_tokens=report.unused_tokens + unused)
        if rate_limited or retry_after is not None:
            wait = 1.0 if retry_after is None else retry_after
            self.pause(model, wait)
            report = replace(report, rate_limited=report.rate_limited + rate_limited,
                             retry_after=max(wait, report.retry_after or 0.0))  # fmt: skip
            held.expires = -math.inf  # what is left of the lease goes back (with the next renewal)
            # Reported now, not after the renewals queued for this model's turn (each may wait a rate
            # slot): the coordinator pauses every other worker from this call on.
            held.report = None
            lease = await self._renew(report, Want(model, 0))
            if lease.pause_s > 0:
                self.pause(model, lease.pause_s)
            return
        held.report = report

    def spent(
        self, worst: float, cost: float | None, prompt: int, provider_prompt: int | None, estimated: bool = False
    ) -> None:
        if self._worst_case is None:
            return
        pairs = self._money.prompt_pairs + (((prompt, provider_prompt),) if prompt and provider_prompt else ())
        guess = cost if estimated and cost is not None else 0.0  # the coordinator adds its margin
        self._money = replace(self._money, unused_dollars=self._money.unused_dollars + worst,
                              spent_dollars=self._money.spent_dollars + (worst if cost is None else cost - guess),
                              estimated_dollars=self._money.estimated_dollars + guess, prompt_pairs=pairs)  # fmt: skip

    def pause(self, model: str, seconds: float) -> None:
        """The coordinator paused ``model`` for ``seconds`` more (a 429 another worker saw): no request
        starts until then, whatever the lease still holds."""
        self._paused_until[model] = max(self._paused_until.get(model, 0.0), self._clock() + seconds)

    def pause_left(self, model: str) -> float:
        """Seconds before a request to ``model`` may start (a pause the coordinator pushed, or a 429 here)."""
        return max(0.0, self._paused_until.get(model, 0.0) - self._clock())

    def last_heard(self, model: str) -> float:
        return self._last_heard.get(model, -math.inf)

    async def gave_up(self, model: str, heard_before: float) -> Verdict:
        if self._gave_up is None:
            return Verdict.RECORD
        return await self._gave_up(model, heard_before)

    async def _wait_out_pause(self, model: str) -> None:
        # Not a poll: each sleep lasts until the current deadline, which a later 429 may have moved.
        while (left := self._paused_until.get(model, 0.0) - self._clock()) > 0:  # noqa: ASYNC110
            await asyncio.sleep(left)

    async def _renewed(self, model: str, want: Want, ahead: bool = False) -> None:
        """Report and renew in one call; what an expired lease left goes back with the report.
        ``ahead``: renewing early, while the lease still holds fewer than half its starts."""
        async with self._turn.setdefault(model, asyncio.Lock()):
            held = self._held.setdefault(model, _Held())
            now = self._clock()
            if (
                want.requests
                and now < held.expires
                and held.requests >= (max(1, held.granted // 2) if ahead else 1)
                and (not held.counts_tokens or held.tokens >= want.tokens / max(1, want.requests))
            ):
                return  # another request renewed while this one waited for its turn
            money = self._money
            report = replace(held.report or Report(model), unused_dollars=money.unused_dollars,
                             spent_dollars=money.spent_dollars, prompt_pairs=money.prompt_pairs,
                             estimated_dollars=money.estimated_dollars)  # fmt: skip
            if now >= held.expires:
                report = replace(report, unused_requests=report.unused_requests + held.requests,
                                 unused_tokens=report.unused_tokens + held.tokens)  # fmt: skip
                held.requests, held.tokens = 0, 0.0
            # Taken before the call: what lands while it is under way (a 429) goes with the next one.
            self._money, held.report = Report(""), None
            lease = await self._renew(report, want)
            now = self._clock()
            held.requests += lease.requests
            held.tokens += lease.tokens
            held.counts_tokens, held.tpm, held.metered = lease.counts_tokens, lease.tpm, lease.metered
            if lease.requests:
                held.expires = now + lease.term_s
                held.granted = lease.requests
            self._dollars += lease.dollars
            if lease.pause_s > 0:
                self.pause(model, lease.pause_s)
