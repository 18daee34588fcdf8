"""runner from Python (runner.api): the command line's run, directory and resume, through the real HTTP path."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

import runner
from runner.api import run
from runner.errors import BudgetExhausted, UsageError
from tests.doubles.provider import FakeProvider
from tests.support.files import ROOT, line_count, read_jsonl, wait_until, write_jsonl
from tests.support.run import INLINE, MODEL, tickets

pytestmark = pytest.mark.timeout(120)


def test_an_inline_job_over_a_list_of_records_then_the_same_call_resumes(
    tmp_path: Path, provider: FakeProvider
) -> None:
    rows = tickets(12, "a")
    options = {"runs_dir": tmp_path / "runs", "api_base": provider.url, "concurrency": 4, "no_cache": True}
    result = runner.run(INLINE, rows, **options)  # type: ignore[operator]  # (the name also holds a subpackage)
    assert result.status == "completed" and result.counts == {"total": 12, "completed": 12, "failed": 0}
    assert [r["custom_id"] for r in result.records()] == [r["id"] for r in rows]  # input order
    assert result.results() == ["bug", "feature", "billing", "other"] * 3
    assert result.cost_usd > 0 and result.usage["input_tokens"] > 0
    assert result.run_dir.parent == tmp_path / "runs" / "inline" and result.run_dir.name.startswith("rows-")
    again = run(INLINE, rows, **options)  # the same records: the same run, already complete
    assert again.run_dir == result.run_dir and provider.stats().total == 12
    table = result.to_arrow()
    assert table.num_rows == 12 and table.column("custom_id").to_pylist() == [r["id"] for r in rows]


def test_a_job_by_name_over_a_file_with_the_command_lines_options(tmp_path: Path, provider: FakeProvider) -> None:
    rows = tickets(6, "f")
    rows[2]["text"] += " [[fail:400]]"
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    result = run("classify", inp, jobs_dir=ROOT / "jobs", runs_dir=tmp_path / "runs", model=MODEL,
                        api_base=provider.url, max_attempts=2)  # fmt: skip
    assert result.run_dir == tmp_path / "runs" / "classify" / "in"  # the command line's run directory
    assert result.counts == {"total": 6, "completed": 5, "failed": 1}
    assert [e["custom_id"] for e in result.errors()] == ["f-0002"]
    status = subprocess.run([sys.executable, "-m", "runner", "status", "--runs-dir", "runs", "--json"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert status.returncode == 0 and '"in"' in status.stdout  # runner status sees the run


def test_errors_are_runners_own(tmp_path: Path, provider: FakeProvider) -> None:
    with pytest.raises(UsageError, match="unknown option 'concurency'"):
        run(INLINE, tickets(1), concurency=4)
    with pytest.raises(UsageError, match="unknown job 'nope'"):
        run("nope", tickets(1), jobs_dir=ROOT / "jobs", runs_dir=tmp_path / "runs")
    with pytest.raises(BudgetExhausted):
        run(INLINE, tickets(5, "b"), runs_dir=tmp_path / "runs", api_base=provider.url, max_cost=0.000001)


async def test_inside_a_running_loop_run_says_to_await_arun_and_arun_works(
    tmp_path: Path, provider: FakeProvider
) -> None:
    rows = tickets(8, "l")
    with pytest.raises(UsageError, match=r"await runner.arun\(\.\.\.\)"):
        run(INLINE, rows, runs_dir=tmp_path / "runs")
    ticking = asyncio.Event()
    loop_free = asyncio.get_running_loop().call_later(0.01, ticking.set)  # the notebook's loop keeps running
    result = await runner.arun(INLINE, rows, runs_dir=tmp_path / "runs", api_base=provider.url, run_id="cell")
    assert ticking.is_set() and loop_free is not None
    assert result.status == "completed" and result.counts["completed"] == 8


async def test_cancelling_arun_stops_the_run_cleanly_and_the_next_call_finishes_it(
    tmp_path: Path, provider: FakeProvider
) -> None:
    provider.configure(latency_ms=200)
    rows = tickets(40, "c")
    options = {"runs_dir": tmp_path / "runs", "api_base": provider.url, "concurrency": 4, "run_id": "c", "grace": 5}
    task = asyncio.ensure_future(runner.arun(INLINE, rows, **options))
    await asyncio.to_thread(provider.wait_for, lambda s: s.total >= 4, 60)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    run_dir = tmp_path / "runs" / "inline" / "c"
    manifest = orjson.loads((run_dir / "manifest.json").read_bytes())
    assert manifest["status"] == "interrupted" and 0 < manifest["request_counts"]["completed"] < 40
    provider.configure(latency_ms=0)
    result = await runner.arun(INLINE, rows, **options)
    ids = [r["custom_id"] for r in read_jsonl(run_dir / "results.jsonl")]
    assert result.status == "completed" and sorted(ids) == sorted(r["id"] for r in rows)  # each once


SCRIPT = """
import sys
import runner
from tests.support.run import INLINE, tickets
runner.run(INLINE, tickets(60, "k"), runs_dir=sys.argv[1], api_base=sys.argv[2], concurrency=4, run_id="k")
"""


@pytest.mark.slow
def test_a_run_from_python_resumes_after_its_process_is_sigkilled(tmp_path: Path, provider: FakeProvider) -> None:
    provider.configure(latency_ms=100)
    runs = tmp_path / "runs"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(runs), provider.url], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    results = runs / "inline" / "k" / "results.jsonl"
    try:
        wait_until(lambda: results.exists() and line_count(results) >= 10, "10 rows journaled", 90)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(30)
    provider.configure(latency_ms=0)
    result = run(INLINE, tickets(60, "k"), runs_dir=runs, api_base=provider.url, run_id="k")
    ids = [r["custom_id"] for r in read_jsonl(results)]
    assert result.status == "completed" and sorted(ids) == sorted(r["id"] for r in tickets(60, "k"))
    assert len(ids) == len(set(ids)) == 60


def test_a_parameter_the_model_does_not_take_stops_the_run_before_anything_is_sent(
    tmp_path: Path, provider: FakeProvider
) -> None:
    """The classify job asks for temperature 0, which litellm refuses for gpt-5 models: every row would fail
    alike, so the run stops at the first (before: 200 rows, 200 error records), nothing is sent, and the
    same command runs once the job or the model is changed."""
    from runner.errors import FatalProviderError

    inp = write_jsonl(tmp_path / "in.jsonl", tickets(20, "t"))
    options = {"jobs_dir": ROOT / "jobs", "runs_dir": tmp_path / "runs", "api_base": provider.url}
    with pytest.raises(FatalProviderError, match=r"unsupported_params.*temperature"):
        run("classify", inp, model="openai/gpt-5-mini", **options)
    assert provider.stats().total == 0
    assert read_jsonl(tmp_path / "runs" / "classify" / "in" / "errors.jsonl") == []
    resumed = run("classify", inp, model=MODEL, allow_changes=True, **options)  # the same run, another model
    assert resumed.counts["completed"] == 20
