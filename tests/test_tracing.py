"""OpenTelemetry: one span per request attempt, matching the journal (runner.provider.tracing).

The run goes through litellm's real HTTP path to the fake provider; spans go to the SDK's
in-memory exporter. A real OTLP/HTTP export (``runner run`` with OTEL_EXPORTER_OTLP_ENDPOINT
pointing at ``collector`` below, on 127.0.0.1) is checked by test_timeline's resume run, and that a
plain run never imports the SDK by test_charts_browser's run (both with ``CHECK``), to save process
starts.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from runner.permits.limits import Limits
from runner.provider.provider import aclose
from runner.provider.tracing import Tracing
from runner.run.coordinator import RunSettings, run
from tests.doubles.provider import FakeProvider
from tests.support.files import read_jsonl, write_jsonl
from tests.support.run import caller_for, tickets

pytestmark = pytest.mark.timeout(60)

MODEL = "openai/gpt-4o-mini"


def fault_rows() -> list[dict[str, Any]]:
    rows = tickets(20, "o")
    rows[1]["text"] += " [[fail:429:retry_after=0:times=1]]"
    rows[2]["text"] += " [[fail:500:times=2]]"
    rows[3]["text"] += " [[fail:400]]"
    return rows


async def test_one_span_per_attempt_matching_the_journal(tmp_path: Path, provider: FakeProvider) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import StatusCode

    exporter = InMemorySpanExporter()
    spans_provider = TracerProvider()
    spans_provider.add_span_processor(SimpleSpanProcessor(exporter))
    write_jsonl(tmp_path / "in.jsonl", fault_rows())
    caller = caller_for(provider, limits=Limits(4))
    tracing = Tracing(spans_provider.get_tracer("test"), spans_provider, "classify", "run")
    caller = dataclasses.replace(caller, tracing=tracing)
    settings = RunSettings(input_path=tmp_path / "in.jsonl", run_dir=tmp_path / "run", run_id="run", concurrency=4)
    try:
        await run(caller, settings)
    finally:
        await aclose()
        tracing.close()
    records = read_jsonl(tmp_path / "run" / "results.jsonl") + read_jsonl(tmp_path / "run" / "errors.jsonl")
    spans: list[tuple[dict[str, Any], StatusCode]] = [
        (dict(s.attributes or {}), s.status.status_code) for s in exporter.get_finished_spans()
    ]
    by_row = Counter(str(attributes["runner.custom_id"]) for attributes, _ in spans)
    assert by_row == {r["custom_id"]: r["meta"]["attempts"] for r in records}
    assert len(spans) == sum(r["meta"]["attempts"] for r in records) == provider.stats().total == 20 + 1 + 2
    for record in records:
        mine = sorted((s for s in spans if s[0]["runner.custom_id"] == record["custom_id"]),
                      key=lambda s: int(s[0]["runner.attempt"]))  # fmt: skip
        assert [a["runner.attempt"] for a, _ in mine] == list(range(1, len(mine) + 1))
        last, status = mine[-1]
        assert last["gen_ai.request.model"] == MODEL and last["runner.job"] == "classify"
        if record["error"] is None:
            usage = record["response"]["body"]["usage"]
            assert status is StatusCode.UNSET
            assert last["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
            assert last["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
            assert last["runner.cost_usd"] == pytest.approx(record["meta"]["cost_usd"])
            assert last["http.response.status_code"] == 200
        else:
            assert status is StatusCode.ERROR and last["http.response.status_code"] == 400
        assert all(s is StatusCode.ERROR for _, s in mine[:-1])  # the attempts that were retried
    errors = Counter(attributes.get("error.type") for attributes, _ in spans)
    assert errors["rate_limited"] == 1 and errors["server_error"] == 2 and errors["bad_request"] == 1
