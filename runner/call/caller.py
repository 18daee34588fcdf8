"""One row through the provider: build the request, call with retries, turn the answer into a record.

A row's life: the job builds the request; the coordinator's permits let it go (``Permits``: rate
limits, budget, pauses); the retry policy owns its attempts (each one a plain or a streamed call,
whose failure is classified once where it crosses the litellm boundary); the job parses the
answer. Every stage that fails the row raises; one place turns that into the error record. An answer the job
rejects may be re-asked a bounded number of times (``Job.reasks``); every answer paid for on the
way is kept in the record's ``meta.reasked`` so the totals count it.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from runner.call.retry import RetryPolicy
from runner.clock import iso_now
from runner.errors import FatalProviderError, InvalidResult, RowError
from runner.job.definition import Job, first_choice
from runner.job.endpoints import CHAT, split
from runner.job.structured import parse_as, response_format
from runner.permits.budget import Budget, BudgetReached
from runner.permits.limits import Limits, TooLarge
from runner.permits.permits import LocalPermits, Permits
from runner.permits.reachability import Verdict
from runner.provider import endpoints
from runner.provider.failures import Disposition, ProviderFailure, mapped
from runner.provider.provider import (
    Answer,
    Complete,
    acompletion,
    collect_stream,
    credentials,
    response_headers,
    supports_schema,
)
from runner.provider.setup import prepare_model
from runner.records import NO_RESULT, Record, error_record, result_record
from runner.redact import redact
from runner.rows import Row

if TYPE_CHECKING:
    from runner.plan import CallPlan
    from runner.provider.tracing import Tracing

__all__ = ["Caller", "Record"]

logger = logging.getLogger(__name__)


PRICED_TIERS = ("flex", "priority")  # tiers with prices of their own (litellm's map: *_flex, *_priority)


class _Failed(RowError):
    """A row that failed for good at some stage; ``answer`` is the paid answer it keeps, if any."""

    def __init__(self, code: str, message: str, status: int | None = None, answer: Answer | None = None) -> None:
        super().__init__(code, message, status)
        self.answer = answer


@dataclass(frozen=True)
class Caller:
    """Turns rows into records: the job's request, the provider call, the job's parser.

    Frozen: built complete, once (``runner.call.assemble.build_caller`` from the run's call plan), and
    never changed afterwards; a variant is a new Caller."""

    job: Job
    policy: RetryPolicy
    timeout: float
    model: str | None = None  # --model: beats the request's own model and the job's
    api_base: str | None = None
    stream: bool = False  # --stream: stream every request, whatever the job says
    complete: Complete = acompletion
    calls: Mapping[str, Complete] = field(default_factory=dict)  # other endpoints' functions by URL (default litellm's)
    clock: Callable[[], float] = time.monotonic
    limits: Limits = field(default_factory=lambda: Limits(concurrency=16))
    budget: Budget | None = None  # --max-cost
    keyless: bool = False  # --dry-run: build requests without needing a key, since nothing is sent
    permits: Permits | None = None  # default: this process's limits and budget (LocalPermits)
    annotate: Callable[[dict[str, Any]], None] | None = None  # adds to a row's meta (e.g. meta.deployment)
    tracing: Tracing | None = None  # --otel: one span per attempt (runner.provider.tracing)
    service_tier: str | None = None  # --service-tier: chat requests ask for it
    tier_until: float | None = None  # --flex-deadline: epoch seconds after which requests go at the default tier
    plan: CallPlan | None = field(default=None, repr=False)  # the plan it was built from (a Ray worker builds its own)
    _credentials: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)
    _local: LocalPermits = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_local", LocalPermits(self.limits, self.budget))

    @property
    def _permits(self) -> Permits:
        """The permits given, else this process's own limits and budget."""
        return self.permits if self.permits is not None else self._local

    def credentials_for(self, model: str) -> dict[str, Any]:
        """Call arguments for ``model``'s key, checked once per model (UsageError if missing); a model
        with a hook (the offline ``local/`` ones) is installed on first use."""
        if model not in self._credentials:
            prepare_model(self.job, model)
            self._credentials[model] = {} if self.keyless else credentials(model, self.api_base)
        return self._credentials[model]

    async def __call__(self, row: Row) -> Record:
        """The record for ``row``; raises FatalProviderError when the whole run must stop, BudgetReached
        when the row may not be sent."""
        return await self._record(row, {"line": row.line})

    async def settle(self, row: Row, answer: Answer, meta: dict[str, Any] | None = None) -> Record:
        """The record for an answer obtained elsewhere (a Batch API output line, a cached answer), made
        exactly as online: the job parses it, a rejected answer is re-asked online within ``Job.reasks``,
        and a failure is the same error record. ``meta`` is merged into the record's meta (e.g. ``via``)."""
        return await self._record(row, {"line": row.line, **(meta or {})}, answer)

    async def _record(self, row: Row, meta: dict[str, Any], first: Answer | None = None) -> Record:
        """The record for ``row``: asked online, or starting from the answer ``first`` when given."""
        try:
            request = self._request(row, meta)
            answer, result = await self._answer(row, request, meta, first)
        except _Failed as failed:
            meta.setdefault("finished_at", iso_now())
            fields = {"custom_id": row.custom_id, "code": failed.code, "status": failed.status}
            logger.warning("%s ✗ %s: %s", row.custom_id, failed.code, failed.message, extra=fields)
            kept = failed.answer
            return error_record(row.custom_id, failed.code, failed.message, meta, failed.status,
                                kept.body if kept else None, kept.request_id if kept else None)  # fmt: skip
        return result_record(row.custom_id, answer.body, answer.request_id, result, meta)

    def request(self, row: Row) -> tuple[dict[str, Any] | None, dict[str, Any]]:
        """The exact request a batch would send for ``row`` (keys included), or None and the error record."""
        meta: dict[str, Any] = {"line": row.line}
        try:
            return self._request(row, meta), meta
        except _Failed as failed:
            meta.setdefault("finished_at", iso_now())
            return None, error_record(row.custom_id, failed.code, failed.message, meta, failed.status).line

    def served_by(self, request: dict[str, Any]) -> dict[str, Any]:
        """``request`` as what decides its answer (its cache key): with ``--deployments``, the deployments that
        may answer its group stand in for the group's name (``DeploymentFile.serving``)."""
        deployments = self.plan.deployments if self.plan is not None else None
        return request if deployments is None else deployments.serving(request)

    def parse(self, body: dict[str, Any]) -> Any:
        """The job's result for a response body; raises RowError/InvalidResult as a batch would record."""
        if self.job.parse_result is not None:
            return self.job.parse_result(body)
        if self.job.schema is not None:
            return parse_as(self.job.schema, body)
        return NO_RESULT

    def _request(self, row: Row, meta: dict[str, Any]) -> dict[str, Any]:
        """The full request for ``row``; _Failed says why there is none."""
        try:
            params = self.job.build_request(row.record)
        except RowError as exc:
            raise _Failed(exc.code, f"line {row.line}: {exc.message}") from exc
        except Exception as exc:
            message = f"line {row.line}: the job could not build a request: {type(exc).__name__}: {exc}"
            raise _Failed("invalid_record", message) from exc
        try:  # the endpoint it goes to; streaming and tools on any but chat are this row's error
            url, params = split(params, self.job.endpoint)
        except RowError as exc:
            raise _Failed(exc.code, f"line {row.line}: {exc.message}") from exc
        model = self.model or params.pop("model", None) or self.job.model
        params.pop("model", None)
        if not model:
            raise _Failed("no_model", "no model: give --model or put 'model' in the request")
        request = {**params, "model": model, "timeout": self.timeout, "max_retries": 0}
        request.update(self.credentials_for(model))
        if self.api_base:
            request["api_base"] = self.api_base
        # Where the model takes one, the schema goes as response_format; elsewhere the prompt must ask for
        # JSON and the answer is still checked against the schema.
        wants_format = url == CHAT and "response_format" not in request and "tools" not in request
        if self.job.schema is not None and wants_format and supports_schema(model):
            request["response_format"] = response_format(self.job.schema)
        if url == CHAT and self.service_tier and "service_tier" not in request:
            request["service_tier"] = self.service_tier
        if url == CHAT and (self.stream or self.job.stream or request.get("stream")):
            request["stream"] = True
            request["stream_options"] = {**(request.get("stream_options") or {}), "include_usage": True}
        meta["model"] = model
        return request

    async def _answer(
        self, row: Row, request: dict[str, Any], meta: dict[str, Any], first: Answer | None = None
    ) -> tuple[Answer, Any]:
        """Ask until the job accepts an answer (re-asking up to ``Job.reasks`` times): the answer and its result.
        With ``first``, that answer stands for the first ask (nothing is sent unless it is rejected)."""
        reasked: list[dict[str, Any]] = []
        rejected: Answer | None = None
        while True:
            try:
                answer, first = (first, None) if first is not None else (await self._ask(row, request, meta), None)
            except BudgetReached:
                if rejected is None:
                    raise
                # The rejected answers were paid for: record them rather than lose their cost. The last
                # one goes in the record's response, so it leaves meta.reasked (counted once).
                reasked.pop()
                if not reasked:
                    del meta["reasked"]
                raise _Failed("max_cost_reached", "not re-asked: --max-cost reached", answer=rejected) from None
            try:
                return answer, self.parse(answer.body)
            except InvalidResult as exc:
                follow_up = self.job.reask(request, answer.body, exc) if len(reasked) < self.job.reasks else None
                if follow_up is None:
                    raise _Failed(exc.code, exc.message, exc.status, answer) from exc
                logger.debug("%s ↻ re-asking: %s", row.custom_id, exc.message)
                reasked.append(_spent(answer, exc.message))
                rejected, request, meta["reasked"] = answer, follow_up, reasked
            except RowError as exc:
                raise _Failed(exc.code, exc.message, exc.status, answer) from exc
            except Exception as exc:
                message = redact(f"the job's parse_result failed: {type(exc).__name__}: {exc}")
                raise _Failed("parse_failed", message, answer=answer) from exc

    async def _ask(self, row: Row, request: dict[str, Any], meta: dict[str, Any]) -> Answer:
        """The provider's answer to ``request`` after the retries it deserves."""
        model, permits = request["model"], self._permits
        estimate = endpoints.estimate_tokens(request) if permits.counts_tokens(model) else (0, 0)
        try:
            permits.check(model, sum(estimate))
        except TooLarge as exc:
            raise _Failed("request_too_large", str(exc)) from exc
        worst = await permits.reserve(model, *estimate)  # BudgetReached: not sent, and the run stops taking rows
        cost: float | None = 0.0
        provider_prompt = None
        estimated = False
        try:
            answer = await self._attempts(row, request, meta, estimate)
            cost, estimated = answer.cost_usd, answer.usage_estimated
            # litellm's own count says nothing of how the provider counts: it leaves the budget's margin alone
            provider_prompt = None if estimated else endpoints.prompt_tokens(answer.body)
            return answer
        finally:
            permits.spent(worst, cost, estimate[0], provider_prompt, estimated)

    async def _attempts(
        self, row: Row, request: dict[str, Any], meta: dict[str, Any], estimate: tuple[int, int]
    ) -> Answer:
        rate_limited = 0

        def on_retry(failure: ProviderFailure, attempt: int, wait: float) -> None:
            nonlocal rate_limited
            rate_limited += failure.rate_limited
            logger.debug("%s ↻ attempt %d: %s (%s), retrying in %.2fs", row.custom_id, attempt, failure.code,
                         failure.status, wait, extra={"custom_id": row.custom_id, "code": failure.code,
                                                      "status": failure.status, "attempt": attempt})  # fmt: skip

        started = self.clock()
        model, permits = request["model"], self._permits
        tries = itertools.count(meta.get("attempts", 0) + 1)  # the attempt's number, for its span
        while True:
            heard_before = permits.last_heard(model)
            outcome = await self.policy.call(
                lambda: self._send(self._tiered(request), estimate, (row.custom_id, next(tries))), on_retry
            )
            meta["attempts"] = meta.get("attempts", 0) + outcome.attempts
            failure = outcome.error
            if failure is None or not failure.unreachable or failure.disposition is not Disposition.RETRY:
                break
            verdict = await permits.gave_up(model, heard_before)
            if verdict is Verdict.STOP:
                endpoint = self.api_base or model
                raise FatalProviderError(
                    f"no answer from {endpoint} ({failure.code}: {failure.message}) — stopped the run; the rows "
                    "still waiting were not recorded: check the network or --api-base, then run the same command "
                    "again to resume"
                ) from failure
            if verdict is Verdict.RECORD:
                break
            pause = self.policy.round_pause()
            logger.info("%s ↻ %s: no answer from %s yet; trying again in %.1fs", row.custom_id, failure.code,
                        model, pause, extra={"custom_id": row.custom_id, "code": failure.code})  # fmt: skip
            await self.policy.sleep(pause)
        if self.annotate is not None:
            self.annotate(meta)
        meta["latency_s"] = round(meta.get("latency_s", 0) + self.clock() - started, 3)
        meta["rate_limited"] = meta.get("rate_limited", 0) + rate_limited + bool(failure and failure.rate_limited)
        if failure is not None:
            if failure.disposition is Disposition.FATAL:
                raise FatalProviderError(
                    f"{failure.code} calling {request['model']}: {failure.message} — stopped the run; "
                    "fix this and run the same command again to resume"
                ) from failure
            message = failure.message
            if failure.disposition is Disposition.RETRY:
                message = f"gave up after {outcome.attempts} attempts: {message}"
            raise _Failed(failure.code, message, failure.status)
        response, first_token, seconds = outcome.value  # type: ignore[misc]
        answer = endpoints.answer_from(request, response)
        meta["cost_usd"] = answer.cost_usd
        # litellm's count, not the provider's (a stream that ended before its usage chunk, or a body that came
        # with no usage at all): said so, never passed off as the provider's. A re-ask's answer says it of its own.
        meta.pop("usage_estimated", None)
        if answer.usage_estimated:
            meta["usage_estimated"] = True
        if request.get("service_tier"):  # the tier that served it (litellm priced it at that tier's prices)
            served = answer.body.get("service_tier")
            meta["service_tier"] = served
            if served in PRICED_TIERS:
                meta["via"] = served  # its own lane in the manifest
        if request.get("stream"):
            _stream_meta(meta, answer, first_token, seconds)
        meta["finished_at"] = iso_now()
        return answer

    def _tiered(self, request: dict[str, Any]) -> dict[str, Any]:
        """``request`` as this attempt sends it: past --flex-deadline, at the default tier."""
        if self.tier_until is not None and request.get("service_tier") == "flex" and time.time() >= self.tier_until:
            return {k: v for k, v in request.items() if k != "service_tier"}
        return request

    async def _send(
        self, request: dict[str, Any], estimate: tuple[int, int], attempt: tuple[str, int] = ("", 1)
    ) -> tuple[Any, float | None, float]:
        """One attempt (``attempt``: the row's id and the attempt's number), when the permits allow it: the
        response, the time to its first token if streamed, and how long it took. A failure leaves as a
        ProviderFailure, classified once, here."""
        first_token = None
        model, permits = request["model"], self._permits
        async with permits.slot(model, *estimate) as charge:
            started = self.clock()
            span = self.tracing.attempt(request, *attempt) if self.tracing else contextlib.nullcontext()
            try:
                with span as traced, mapped():
                    response = await endpoints.send(request, self.complete, self.calls)
                    if request.get("stream"):
                        response, first_token = await collect_stream(response, request["messages"], started, self.clock)
                    if traced is not None:
                        traced.answered(response)
            except ProviderFailure as failure:
                await permits.landed(model, charge, failure.headers, None, failure.rate_limited, failure.retry_after)
                raise
        await permits.landed(model, charge, response_headers(response), endpoints.used_tokens(response))
        return response, first_token, self.clock() - started


def _spent(answer: Answer, why: str) -> dict[str, Any]:
    """What a rejected answer cost, kept for the totals."""
    spent = {"usage": answer.body.get("usage"), "cost_usd": answer.cost_usd,
             "finish_reason": first_choice(answer.body).get("finish_reason"), "rejected": why}  # fmt: skip
    return {**spent, "usage_estimated": True} if answer.usage_estimated else spent


def _stream_meta(meta: dict[str, Any], answer: Answer, first_token: float | None, elapsed: float) -> None:
    """Time to first token and output tokens per second after it."""
    meta["ttft_s"] = round(first_token, 3) if first_token is not None else None
    output = (answer.body.get("usage") or {}).get("completion_tokens") or 0
    generating = elapsed - (first_token or 0.0)
    meta["output_tokens_per_s"] = round(output / generating, 1) if output and generating > 0 else None
