"""One row through the provider: build the request, call with retries, turn the answer into a record."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from runner.errors import FatalProviderError, RowError
from runner.jobs import Job
from runner.limits import Limits, ModelLimits, TooLarge
from runner.manifest import iso_now
from runner.provider import (
    Complete,
    Disposition,
    Failure,
    acompletion,
    answer_from,
    classify,
    credentials,
    estimate_tokens,
)
from runner.records import NO_RESULT, error_record, result_record
from runner.redact import redact
from runner.retry import RetryPolicy
from runner.source import Row

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
    complete: Complete = acompletion
    clock: Callable[[], float] = time.monotonic
    limits: Limits = field(default_factory=lambda: Limits(concurrency=16))
    _credentials: dict[str, dict[str, Any]] = field(default_factory=dict)

    def credentials_for(self, model: str) -> dict[str, Any]:
        """Call arguments for ``model``'s key, checked once per model (UsageError if missing)."""
        if model not in self._credentials:
            self._credentials[model] = credentials(model, self.api_base)
        return self._credentials[model]

    async def __call__(self, row: Row) -> Record:
        """The record for ``row``; raises FatalProviderError when the whole run must stop."""
        meta: dict[str, Any] = {"line": row.line}
        try:
            params = self.job.build_request(row.record)
        except RowError as exc:
            return False, self._error(row, exc.code, f"line {row.line}: {exc.message}", meta)
        except Exception as exc:
            message = f"line {row.line}: the job could not build a request: {type(exc).__name__}: {exc}"
            return False, self._error(row, "invalid_record", message, meta)
        model = self.model or params.pop("model", None) or self.job.model
        if not model:
            return False, self._error(row, "no_model", "no model: give --model or put 'model' in the request", meta)
        params.pop("model", None)
        request = {**params, "model": model, "timeout": self.timeout, "max_retries": 0}
        request.update(self.credentials_for(model))
        if self.api_base:
            request["api_base"] = self.api_base
        meta["model"] = model

        rate_limited = 0

        def on_retry(failure: Failure, attempt: int, wait: float) -> None:
            nonlocal rate_limited
            rate_limited += failure.code == "rate_limited"
            logger.debug(
                "%s ↻ attempt %d: %s (%s), retrying in %.2fs",
                row.custom_id,
                attempt,
                failure.code,
                failure.status,
                wait,
            )

        limits = self.limits.for_model(model)
        estimate = estimate_tokens(request) if limits.counts_tokens else 0
        try:
            limits.check(estimate)
        except TooLarge as exc:
            return False, self._error(row, "request_too_large", str(exc), meta)
        started = self.clock()
        outcome = await self.policy.call(lambda: self._send(request, limits, estimate), on_retry)
        meta["attempts"] = outcome.attempts
        meta["latency_s"] = round(self.clock() - started, 3)
        if outcome.error is not None:
            failure = classify(outcome.error)
            meta["rate_limited"] = rate_limited + (failure.code == "rate_limited")
            if failure.disposition is Disposition.FATAL:
                raise FatalProviderError(
                    f"{failure.code} calling {model}: {failure.message} — stopped the run; "
                    "fix this and run the same command again to resume"
                ) from outcome.error
            if failure.disposition is Disposition.RETRY:
                message = f"gave up after {outcome.attempts} attempts: {failure.message}"
            else:
                message = failure.message
            return False, self._error(row, failure.code, message, meta, failure.status)

        meta["rate_limited"] = rate_limited
        answer = answer_from(outcome.value)
        meta["cost_usd"] = answer.cost_usd
        meta["finished_at"] = iso_now()
        try:
            result = self.job.parse_result(answer.body) if self.job.parse_result else NO_RESULT
        except RowError as exc:
            record = error_record(
                row.custom_id, exc.code, exc.message, meta, exc.status, answer.body, answer.request_id
            )
            return False, record
        except Exception as exc:
            message = redact(f"the job's parse_result failed: {type(exc).__name__}: {exc}")
            return False, error_record(
                row.custom_id, "parse_failed", message, meta, None, answer.body, answer.request_id
            )
        return True, result_record(row.custom_id, answer.body, answer.request_id, result, meta)

    async def _send(self, request: dict[str, Any], limits: ModelLimits, estimate: int) -> Any:
        """One attempt, when the model's limits allow it; what it teaches them on the way back."""
        async with limits.slot(estimate):
            try:
                response = await self.complete(**request)
            except Exception as exc:
                failure = classify(exc)
                rate_limited = failure.code == "rate_limited"
                limits.observe(failure.headers, ok=False, rate_limited=rate_limited, retry_after=failure.retry_after)
                limits.settle(estimate, 0)  # a refused request used no tokens
                raise
        hidden = getattr(response, "_hidden_params", None) or {}
        limits.observe(hidden.get("headers") or {}, ok=True)
        usage = getattr(response, "usage", None)
        limits.settle(estimate, getattr(usage, "total_tokens", None))
        return response

    def _error(self, row: Row, code: str, message: str, meta: dict[str, Any], status: int | None = None) -> dict:
        meta.setdefault("finished_at", iso_now())
        logger.warning("%s ✗ %s: %s", row.custom_id, code, message)
        return error_record(row.custom_id, code, message, meta, status)
