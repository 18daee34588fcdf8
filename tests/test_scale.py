"""The core pipeline's acceptance run: 2,000 rows through faults, nothing lost, nothing doubled."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from tests.doubles.provider import FakeProvider
from tests.support.cli import runner
from tests.support.files import ROOT, read_jsonl, write_jsonl
from tests.support.run import MODEL, tickets

pytestmark = pytest.mark.slow


def test_two_thousand_rows_through_5pct_500s_and_5pct_429s(tmp_path: Path, provider: FakeProvider) -> None:
    provider.configure(latency_ms=50, p500=0.05, p429=0.05, retry_after=0.1, seed=11)  # each 429 pauses the model
    rows = tickets(2000)
    write_jsonl(tmp_path / "in.jsonl", rows)
    args = ["run", "classify", "--jobs-dir", str(ROOT / "jobs"), "--input", "in.jsonl", "--model", MODEL]
    proc = runner(*args, "--api-base", provider.url, "--concurrency", "64", "--max-attempts", "10", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]

    run_dir = tmp_path / "runs" / "classify" / "in"
    results, errors = read_jsonl(run_dir / "results.jsonl"), read_jsonl(run_dir / "errors.jsonl")
    assert errors == []
    assert sorted(r["custom_id"] for r in results) == [r["id"] for r in rows]
    stats = provider.stats()
    assert stats.by_status.get("429", 0) > 50 and stats.by_status.get("500", 0) > 50
    assert stats.total == 2000 + sum(r["meta"]["attempts"] - 1 for r in results)

    manifest = orjson.loads((run_dir / "manifest.json").read_bytes())
    bodies = [r["response"]["body"] for r in results]
    assert manifest["request_counts"] == {"total": 2000, "completed": 2000, "failed": 0}
    assert manifest["usage"]["input_tokens"] == sum(b["usage"]["prompt_tokens"] for b in bodies)
    assert manifest["usage"]["output_tokens"] == sum(b["usage"]["completion_tokens"] for b in bodies)
    assert manifest["rate_limited"] == stats.by_status["429"]
