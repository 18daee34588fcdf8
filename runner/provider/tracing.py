"""One OpenTelemetry span per request attempt (``runner run --otel``, or OTEL_EXPORTER_OTLP_ENDPOINT set).

The Caller opens ``Tracing.attempt`` around each attempt it sends (``Caller._send``): the span
starts when the permits let the request go and ends when its answer (streamed ones whole) or its
failure is in. A retried row is several spans, one per attempt, as the journal's ``meta.attempts``
counts them. Attributes follow OpenTelemetry's GenAI conventions where they have a name:

    gen_ai.operation.name "chat", gen_ai.request.model, gen_ai.response.id,
    gen_ai.response.finish_reasons, gen_ai.usage.input_tokens / output_tokens,
    http.response.status_code, error.type (the failure's code: rate_limited, timeout, ...),
    runner.custom_id, runner.attempt (1 for the first), runner.retry_count (attempt - 1),
    runner.cost_usd, runner.rate_limited, runner.retry_after_s, runner.job, runner.run_id

Spans go over OTLP/HTTP (protobuf) to ``OTEL_EXPORTER_OTLP_ENDPOINT`` (default
http://localhost:4318), batched off the event loop by the SDK's BatchSpanProcessor; the standard
OTEL_* variables (headers, service name, resource attributes) apply. The OpenTelemetry SDK is the
``otel`` extra and is imported only when tracing is on: a run without it never loads it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from runner.errors import UsageError
from runner.provider.failures import ProviderFailure

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

__all__ = ["Attempt", "Tracing", "start_tracing", "wanted"]

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


def wanted(flag: bool) -> bool:
    """Whether a run traces: ``--otel``, or an OTLP endpoint named in the environment."""
    return flag or any(os.environ.get(name) for name in ENDPOINT_VARIABLES)


def start_tracing(job: str, run_id: str) -> Tracing:
    """Tracing to the OTLP/HTTP endpoint the environment names; UsageError if the extra is missing."""
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise UsageError(
            f"--otel needs the OpenTelemetry SDK ({exc.name} is missing): pip install 'runner[otel]', "
            "or unset OTEL_EXPORTER_OTLP_ENDPOINT"
        ) from None
    provider = TracerProvider(resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "runner")}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return Tracing(provider.get_tracer("runner"), provider, job, run_id)


class Attempt:
    """The span of one attempt, told about its answer by the Caller."""

    __slots__ = ("span",)

    def __init__(self, span: Span) -> None:
        self.span = span

    def answered(self, response: Any) -> None:
        """Tokens, cost, id and finish reason of the answer this attempt got."""
        usage = getattr(response, "usage", None)
        hidden = getattr(response, "_hidden_params", None) or {}
        cost = hidden.get("response_cost")
        reasons = [str(getattr(c, "finish_reason", None)) for c in getattr(response, "choices", None) or []]
        attributes: dict[str, Any] = {
            "http.response.status_code": 200,
            "gen_ai.response.id": getattr(response, "id", None),
            "gen_ai.response.finish_reasons": reasons,
            "gen_ai.usage.input_tokens": getattr(usage, "prompt_tokens", None),
            "gen_ai.usage.output_tokens": getattr(usage, "completion_tokens", None),
            "runner.cost_usd": float(cost) if cost is not None else None,
        }
        self.span.set_attributes({k: v for k, v in attributes.items() if v is not None})


@dataclass
class Tracing:
    """Makes the spans; ``close`` flushes what the batch processor still holds."""

    tracer: Tracer
    provider: TracerProvider | None = None
    job: str = ""
    run_id: str = ""

    @contextlib.contextmanager
    def attempt(self, request: dict[str, Any], custom_id: str, number: int) -> Iterator[Attempt]:
        """The span of attempt ``number`` (1 for the first) of row ``custom_id``."""
        from opentelemetry.trace import SpanKind, StatusCode

        model = str(request.get("model"))
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": model,
            "runner.custom_id": custom_id,
            "runner.attempt": number,
            "runner.retry_count": number - 1,
            "runner.job": self.job,
            "runner.run_id": self.run_id,
            "runner.stream": bool(request.get("stream")),
        }
        with self.tracer.start_as_current_span(
            f"chat {model}", kind=SpanKind.CLIENT, attributes=attributes, record_exception=False,
            set_status_on_exception=False,
        ) as span:  # fmt: skip
            try:
                yield Attempt(span)
            except ProviderFailure as failure:
                failed: dict[str, Any] = {"error.type": failure.code, "runner.rate_limited": failure.rate_limited,
                          "http.response.status_code": failure.status,
                          "runner.retry_after_s": failure.retry_after}  # fmt: skip
                span.set_attributes({k: v for k, v in failed.items() if v is not None})
                span.set_status(StatusCode.ERROR, failure.code)
                raise
            except BaseException as exc:  # cancelled (a stop), or a bug: the span still ends, marked
                span.set_attributes({"error.type": type(exc).__name__})
                span.set_status(StatusCode.ERROR, type(exc).__name__)
                raise

    def close(self) -> None:
        """Send what is still batched (at the end of a run)."""
        if self.provider is not None:
            self.provider.shutdown()
