"""One row through the provider: build the request, call with retries, turn the answer into a record.

A row's life: the job builds the request; the model's limits let it go; the retry policy owns its
attempts (each one a plain or a streamed call); the job parses the answer. An answer the job
rejects may be re-asked a bounded number of times (``Job.reasks``); every answer paid for on the
way is kept in the record's ``meta.reasked`` so the totals count it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from runner.call.budget import Budget, BudgetReached
from runner.call.limits import Limits, ModelLimits, TooLarge
from runner.call.provider import (
    Answer,
    Complete,
    Disposition,
    Failure,
    acompletion,
    answer_from,
    classify,
    collect_stream,
    credentials,
    estimate_tokens,
    response_headers,
    supports_schema,
)
from runner.call.retry import RetryPolicy
from runner.errors import FatalProviderError, InvalidResult, RowError
from runner.job.definition import Job
from runner.job.structured import parse_as, response_format
from runner.records import NO_RESULT, error_record, result_record
from runner.redact import redact
from runner.run.manifest import iso_now
from runner.run.source import Row

__all__ = ["Caller", "Record"]

Record = tuple[bool, dict[str, Any]]  # (True for results.jsonl, the line)

logger = logging.getLogger(__name__)


@dataclass
class Caller:
    """Turns rows into records: the job's request, the provider call, the job's parser."""

    job: Job
    policy: RetryPolicy
    timeout: float
    model: str | None = None  # --model: beats the request's own model and the job's
    api_base: str | None = None
    stream: bool = False  # --stream: stream every request, whatever the job says
    complete: Complete = acompletion
    clock: Callable[[], float] = time.monotonic
    limits: Limits = field(default_factory=lambda: Limits(concurrency=16))
    budget: Budget | None = None  # --max-cost
    keyless: bool = False  # --dry-run: build requests without needing a key, since nothing is sent
    _credentials: dict[str, dict[str, Any]] = field(default_factory=dict)

    def credentials_for(self, model: str) -> dict[str, Any]:
        """Call arguments for ``model``'s key, checked once per model (UsageError if missing); a local
        model is installed with the job's labels on first use."""
        if model not in self._credentials:
            if model.startswith("local/"):  # the offline provider, with this job's labels
                from runner.local.provider import install_for

                install_for(self.job, model)
            self._credentials[model] = {} if self.keyless else credentials(model, self.api_base)
        return self._credentials[model]

    async def __call__(self, row: Row) -> Record:
        """The record for ``row``; raises FatalProviderError when the whole run must stop."""
        meta: dict[str, Any] = {"line": row.line}
        request = self._request(row, meta)
        if isinstance(request, tuple):
            return request
        reasked: list[dict[str, Any]] = []
        rejected: Answer | None = None
        while True:
            try:
                answer = await self._ask(row, request, meta)
            except BudgetReached:
                if rejected is None:
                    raise
                # The rejected answers were paid for: record them rather than lose their cost. The last
                # one goes in the record's response, so it leaves meta.reasked (counted once).
                reasked.pop()
                if not reasked:
                    del meta["reasked"]
                return False, self._kept(row, "max_cost_reached", "not re-asked: --max-cost reached", meta,
                                         rejected, None)  # fmt: skip
            if not isinstance(answer, Answer):
                return answer
            try:
                result = self.parse(answer.body)
            except InvalidResult as exc:
                follow_up = self.job.reask(request, answer.body, exc) if len(reasked) < self.job.reasks else None
                if follow_up is None:
                    return False, self._kept(row, exc.code, exc.message, meta, answer, exc.status)
                logger.debug("%s ↻ re-asking: %s", row.custom_id, exc.message)
                reasked.append(_spent(answer, exc.message))
                rejected = answer
                meta["reasked"] = reasked
                request = follow_up
                continue
            except RowError as exc:
                return False, self._kept(row, exc.code, exc.message, meta, answer, exc.status)
            except Exception as exc:
                message = redact(f"the job's parse_result failed: {type(exc).__name__}: {exc}")
                return False, self._kept(row, "parse_failed", message, meta, answer, None)
            return True, result_record(row.custom_id, answer.body, answer.request_id, result, meta)

    def request(self, row: Row) -> tuple[dict[str, Any] | None, dict[str, Any]]:
        """The exact request a batch would send for ``row`` (keys included), or None and the error record."""
        meta: dict[str, Any] = {"line": row.line}
        built = self._request(row, meta)
        return (None, built[1]) if isinstance(built, tuple) else (built, meta)

    def parse(self, body: dict[str, Any]) -> Any:
        """The job's result for a response body; raises RowError/InvalidResult as a batch would record."""
        if self.job.parse_result is not None:
            return self.job.parse_result(body)
        if self.job.schema is not None:
            return parse_as(self.job.schema, body)
        return NO_RESULT

    def _request(self, row: Row, meta: dict[str, Any]) -> dict[str, Any] | Record:
        """The full request for ``row``, or the error record that says why there is none."""
        try:
            params = self.job.build_request(row.record)
        except RowError as exc:
            return False, self._error(row, exc.code, f"line {row.line}: {exc.message}", meta)
        except Exception as exc:
            message = f"line {row.line}: the job could not build a request: {type(exc).__name__}: {exc}"
            return False, self._error(row, "invalid_record", message, meta)
        model = self.model or params.pop("model", None) or self.job.model
        params.pop("model", None)
        if not model:
            return False, self._error(row, "no_model", "no model: give --model or put 'model' in the request", meta)
        request = {**params, "model": model, "timeout": self.timeout, "max_retries": 0}
        request.update(self.credentials_for(model))
        if self.api_base:
            request["api_base"] = self.api_base
        # Where the model takes one, the schema goes as response_format; elsewhere the prompt must ask for
        # JSON and the answer is still checked against the schema.
        wants_format = "response_format" not in request and "tools" not in request
        if self.job.schema is not None and wants_format and supports_schema(model):
            request["response_format"] = response_format(self.job.schema)
        if self.stream or self.job.stream or request.get("stream"):
            request["stream"] = True
            request["stream_options"] = {**(request.get("stream_options") or {}), "include_usage": True}
        meta["model"] = model
        return request

    async def _ask(self, row: Row, request: dict[str, Any], meta: dict[str, Any]) -> Answer | Record:
        """The provider's answer to ``request`` after the retries it deserves, or the error record."""
        limits = self.limits.for_model(request["model"])
        estimate = estimate_tokens(request) if limits.counts_tokens or self.budget else (0, 0)
        try:
            limits.check(sum(estimate))
        except TooLarge as exc:
            return False, self._error(row, "request_too_large", str(exc), meta)
        worst = 0.0
        if self.budget is not None:
            worst = self.budget.worst_case(request["model"], *estimate)
            self.budget.reserve(worst)  # BudgetReached: not sent, and the run stops taking rows
        cost: float | None = 0.0
        provider_prompt = None
        try:
            answer = await self._attempts(row, request, meta, limits, estimate)
            if isinstance(answer, Answer):
                cost, provider_prompt = answer.cost_usd, (answer.body.get("usage") or {}).get("prompt_tokens")
            return answer
        finally:
            if self.budget is not None:
                self.budget.settle(worst, cost, estimate[0], provider_prompt)

    async def _attempts(
        self, row: Row, request: dict[str, Any], meta: dict[str, Any], limits: ModelLimits, estimate: tuple[int, int]
    ) -> Answer | Record:
        rate_limited = 0

        def on_retry(failure: Failure, attempt: int, wait: float) -> None:
            nonlocal rate_limited
            rate_limited += failure.code == "rate_limited"
            logger.debug("%s ↻ attempt %d: %s (%s), retrying in %.2fs", row.custom_id, attempt, failure.code,
                         failure.status, wait)  # fmt: skip

        started = self.clock()
        outcome = await self.policy.call(lambda: self._send(request, limits, estimate), on_retry)
        meta["attempts"] = meta.get("attempts", 0) + outcome.attempts
        meta["latency_s"] = round(meta.get("latency_s", 0) + self.clock() - started, 3)
        if outcome.error is not None:
            failure = classify(outcome.error)
            meta["rate_limited"] = meta.get("rate_limited", 0) + rate_limited + (failure.code == "rate_limited")
            if failure.disposition is Disposition.FATAL:
                raise FatalProviderError(
                    f"{failure.code} calling {request['model']}: {failure.message} — stopped the run; "
                    "fix this and run the same command again to resume"
                ) from outcome.error
            message = failure.message
            if failure.disposition is Disposition.RETRY:
                message = f"gave up after {outcome.attempts} attempts: {message}"
            return False, self._error(row, failure.code, message, meta, failure.status)
        meta["rate_limited"] = meta.get("rate_limited", 0) + rate_limited
        response, first_token, seconds = outcome.value  # type: ignore[misc]
        answer = answer_from(response)
        meta["cost_usd"] = answer.cost_usd
        if request.get("stream"):
            _stream_meta(meta, answer, first_token, seconds)
        meta["finished_at"] = iso_now()
        return answer

    async def _send(
        self, request: dict[str, Any], limits: ModelLimits, estimate: tuple[int, int]
    ) -> tuple[Any, float | None, float]:
        """One attempt, when the limits allow it: the response, the time to its first token if streamed,
        and how long it took."""
        first_token = None
        async with limits.slot(*estimate) as charge:
            started = self.clock()
            try:
                response = await self.complete(**request)
                if request.get("stream"):
                    response, first_token = await collect_stream(response, request["messages"], started, self.clock)
            except Exception as exc:
                failure = classify(exc)
                rate_limited = failure.code == "rate_limited"
                limits.observe(failure.headers, ok=False, rate_limited=rate_limited, retry_after=failure.retry_after)
                limits.settle(charge, None, None)  # a refused request used no tokens
                raise
        limits.observe(response_headers(response), ok=True)
        usage = getattr(response, "usage", None)
        limits.settle(charge, getattr(usage, "prompt_tokens", None), getattr(usage, "completion_tokens", None))
        return response, first_token, self.clock() - started

    def _kept(
        self, row: Row, code: str, message: str, meta: dict[str, Any], answer: Answer, status: int | None
    ) -> dict[str, Any]:
        """An error record that keeps the answer the job rejected (its tokens were paid for)."""
        logger.warning("%s ✗ %s: %s", row.custom_id, code, message)
        return error_record(row.custom_id, code, message, meta, status, answer.body, answer.request_id)

    def _error(self, row: Row, code: str, message: str, meta: dict[str, Any], status: int | None = None) -> dict:
        meta.setdefault("finished_at", iso_now())
        logger.warning("%s ✗ %s: %s", row.custom_id, code, message)
        return error_record(row.custom_id, code, message, meta, status)


def _spent(answer: Answer, why: str) -> dict[str, Any]:
    """What a rejected answer cost, kept for the totals."""
    choices = answer.body.get("choices") or [{}]
    return {"usage": answer.body.get("usage"), "cost_usd": answer.cost_usd,
            "finish_reason": choices[0].get("finish_reason"), "rejected": why}  # fmt: skip


def _stream_meta(meta: dict[str, Any], answer: Answer, first_token: float | None, elapsed: float) -> None:
    """Time to first token and output tokens per second after it."""
    meta["ttft_s"] = round(first_token, 3) if first_token is not None else None
    output = (answer.body.get("usage") or {}).get("completion_tokens") or 0
    generating = elapsed - (first_token or 0.0)
    meta["output_tokens_per_s"] = round(output / generating, 1) if output and generating > 0 else None
