"""The run's timeline (metrics.jsonl): samples during a run, 429s and concurrency dips, restarts, bounds."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from runner.cli import main
from runner.permits.limits import Limits
from runner.records import result_record
from runner.run.manifest import Totals
from runner.run.timeline import LATENCY_LE, MAX_SERIES, METRICS, Sketch, Timeline, last_samples
from runner.serve.spark import sparkline
from tests.doubles.provider import FakeProvider
from tests.support.cli import CHECK
from tests.support.files import ROOT, Lines, read_jsonl, wait_until, write_jsonl
from tests.support.run import run_rows, tickets
from tests.support.tracing import exported

pytestmark = pytest.mark.timeout(60)

MODEL = "openai/gpt-4o-mini"


def samples(run_dir: Path) -> list[dict[str, Any]]:
    return [line for line in read_jsonl(run_dir / METRICS) if line["kind"] == "sample"]


async def test_samples_appear_during_a_run_and_show_429s_and_the_concurrency_dip(
    tmp_path: Path, provider: FakeProvider
) -> None:
    rows = tickets(60)
    for row in rows:
        row["text"] += " [[latency:20]]"
    for i in (10, 11, 12):  # a burst of 429s with a 0.5 s Retry-After: every worker pauses, concurrency halves
        rows[i]["text"] += " [[fail:429:retry_after=0.5:times=1]]"
    done = await run_rows(tmp_path, provider, rows, concurrency=8, metrics_interval=0.1)
    lines = read_jsonl(tmp_path / "run" / METRICS)
    assert lines[0]["kind"] == "start" and lines[0]["restart"] is False
    assert lines[-1] == {**lines[-1], "kind": "end", "status": "completed"}
    found = samples(tmp_path / "run")
    assert any(0 < s["done"] < 60 for s in found), "samples are written while the run goes on, not only at its end"
    assert [s["done"] for s in found] == sorted(s["done"] for s in found)
    last = found[-1]
    assert last["done"] == last["completed"] == 60 == done.manifest["request_counts"]["completed"]
    assert sum(s["rate_limited"] for s in found) == done.manifest["rate_limited"] == 3
    assert sum(s["retries"] for s in found) == done.manifest["retries"] == 3
    assert any(s["concurrency"] < s["concurrency_ceiling"] == 8 for s in found), "the halving shows"
    assert any(s["in_flight"] > 0 for s in found)
    assert last["cost_usd"] == pytest.approx(done.manifest["cost_usd"])
    assert last["input_tokens"] == done.manifest["usage"]["input_tokens"]
    assert sum(last["latency_hist"]) == 60 and len(last["latency_hist"]) == len(LATENCY_LE) + 1
    series = last["by"][f"model:{MODEL}"]
    assert series["cost_usd"] == pytest.approx(done.manifest["cost_usd"]) and sum(series["latency_hist"]) == 60
    slow = [s for s in found if s["latency_s"] and s["latency_s"]["p99"] >= 0.5]
    assert slow, "the rows that waited out a Retry-After show in the interval's p99"
    assert sum(s["rows_per_s"] * s["interval_s"] for s in found) == pytest.approx(60, abs=0.5)


async def test_no_timeline_with_interval_zero(tmp_path: Path, provider: FakeProvider) -> None:
    await run_rows(tmp_path, provider, tickets(5), metrics_interval=0)
    assert not (tmp_path / "run" / METRICS).exists()


@pytest.mark.timeout(180)  # two runner processes: slow on a machine busy with other test runs
def test_sigkill_and_resume_continue_the_timeline_with_a_restart_marker(
    tmp_path: Path,
    provider: FakeProvider,
    collector: tuple[str, list[bytes]],
) -> None:
    """Also, to save a process start: the resume exports its spans to an OTLP/HTTP collector (the
    environment's endpoint turns tracing on), one per attempt (tests.test_tracing has the details)."""
    rows = tickets(30)
    write_jsonl(tmp_path / "in.jsonl", rows)
    held = {r["text"] for r in rows[10:]}
    provider.hold(lambda text: text in held)  # ten rows land, the rest wait until the kill
    run_dir = tmp_path / "runs" / "classify" / "in"
    command = [sys.executable, "-m", "runner", "run", "classify", "--jobs-dir", str(ROOT / "jobs"), "--input",
               "in.jsonl", "--model", MODEL, "--api-base", provider.url, "--concurrency", "4",
               "--metrics-interval", "0.1", "-q"]  # fmt: skip
    proc = subprocess.Popen(command, cwd=tmp_path, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: Lines(run_dir / "results.jsonl")() >= 10, "ten rows journaled")
        wait_until(lambda: any(s["done"] >= 10 for s in _complete_samples(run_dir)), "a sample after ten rows")
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    finally:
        proc.kill()
        provider.release()
    with (run_dir / METRICS).open("ab") as f:
        f.write(b'{"kind":"sample","t":"2026-')  # as if the machine died mid-line
    resume = [sys.executable, "-c", CHECK, *command[3:]]  # the same command, saying what it imported
    env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": collector[0], "OTEL_SERVICE_NAME": "nightly"}
    again = subprocess.run(resume, cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert again.stderr.strip().endswith("['opentelemetry']"), again.stderr
    spans, services = exported(collector[1])
    assert services == {"nightly"} and sorted(spans) == [r["id"] for r in rows[10:]]
    lines = read_jsonl(run_dir / METRICS)  # every line parses: the torn one was cut off
    starts = [i for i, line in enumerate(lines) if line["kind"] == "start"]
    assert len(starts) == 2 and lines[starts[1]]["restart"] is True and lines[starts[1]]["done"] >= 10
    assert [line["kind"] for line in lines].count("end") == 1  # the killed invocation never wrote its end
    before, after = samples(run_dir)[: starts[1] - 1], [s for s in lines[starts[1] :] if s["kind"] == "sample"]
    assert before and after and after[-1]["done"] == 30
    assert sum(after[0]["latency_hist"]) >= sum(before[-1]["latency_hist"]) >= 10  # carried over the restart


def _complete_samples(run_dir: Path) -> list[dict[str, Any]]:
    try:
        data = (run_dir / METRICS).read_bytes()
    except FileNotFoundError:
        return []
    whole = data[: data.rfind(b"\n") + 1].splitlines()
    return [line for line in map(orjson.loads, whole) if line["kind"] == "sample"]


def _record(i: int, model: str, latency: float) -> Any:
    body = {"usage": {"prompt_tokens": 50, "completion_tokens": 2, "total_tokens": 52}, "choices": []}
    meta = {"line": i, "model": model, "attempts": 1 + i % 3, "latency_s": latency, "cost_usd": 1e-5}
    return result_record(f"r-{i}", body, "req", "bug", meta)


def test_an_hour_of_samples_stays_within_its_size_bound(tmp_path: Path) -> None:
    """One line per interval, a bounded number of series per line: at most ~600 KB an hour at 5 s."""
    now = [0.0]
    totals, limits = Totals(), Limits(16, clock=lambda: now[0])
    for name in ("a", "b", "c"):
        limits.for_model(name)
    timeline = Timeline(tmp_path, 5.0, lambda: totals, lambda: limits, clock=lambda: now[0], wall=lambda: now[0])
    timeline.open()
    rng = random.Random(1)
    for tick in range(720):  # an hour of samples at 5 s, 30 rows each
        records = [_record(tick * 30 + j, rng.choice("abc"), rng.lognormvariate(0, 1)) for j in range(30)]
        for record in records:
            totals.add(record.line, record.ok)
        timeline.observe(records)
        now[0] += 5.0
        timeline.sample()
    timeline.close("completed")
    size = (tmp_path / METRICS).stat().st_size
    lines = read_jsonl(tmp_path / METRICS)
    assert len(lines) == 720 + 3  # start, 720 samples, the last sample, end
    assert size < 720 * 1500, f"{size} bytes for an hour of three models"
    assert sum(lines[-2]["latency_hist"]) == 720 * 30


def test_series_are_capped_per_line(tmp_path: Path) -> None:
    totals = Totals()
    timeline = Timeline(tmp_path, 1.0, lambda: totals, lambda: Limits(4, clock=float))
    timeline.open()
    timeline.observe([_record(i, f"m{i}", 0.1) for i in range(MAX_SERIES * 3)])
    timeline.sample()
    by = samples(tmp_path)[-1]["by"]
    assert len(by) == MAX_SERIES and sum(s["rows"] for s in by.values()) == MAX_SERIES * 3
    assert len(orjson.dumps(samples(tmp_path)[-1])) < 16 * 1024


def test_the_sketch_is_fixed_size_and_close_to_the_true_quantiles() -> None:
    sketch, rng = Sketch(), random.Random(7)
    values = sorted(rng.lognormvariate(-1, 1.2) for _ in range(50_000))
    for value in values:
        sketch.add(value)
    assert len(sketch.counts) == Sketch.SIZE
    for q in (0.5, 0.95, 0.99):
        true = values[int(q * (len(values) - 1))]
        assert sketch.quantile(q) == pytest.approx(true, rel=0.05)
    sketch.clear()
    assert sketch.quantile(0.5) is None and sketch.percentiles() is None


def test_last_samples_reads_only_the_tail(tmp_path: Path) -> None:
    lines = [{"kind": "sample", "done": i, "pad": "x" * 200} for i in range(2000)]
    write_jsonl(tmp_path / METRICS, [{"kind": "start"}, *lines])
    got = last_samples(tmp_path, most=50, tail_bytes=64 * 1024)
    assert [s["done"] for s in got] == list(range(1950, 2000))
    assert last_samples(tmp_path / "nowhere") == []


def test_status_prints_a_sparkline_of_rows_per_second(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "runs" / "classify" / "night"
    run_dir.mkdir(parents=True)
    rates = [0, 1, 2, 4, 8, 8, 4, 2]
    write_jsonl(
        run_dir / METRICS, [{"kind": "start"}] + [{"kind": "sample", "rows_per_s": r, "interval_s": 5} for r in rates]
    )
    write_jsonl(run_dir / "manifest.json", [{"status": "completed", "request_counts": {"total": 9, "completed": 9}}])
    assert main(["status", "classify", "--runs-dir", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert "rows/s    ▁▂▃▅██▅▃  last 40s, max 8.0 rows/s" in out, out
    assert sparkline([0, 0]) == "▁▁" and sparkline([]) == ""


def test_status_and_help_import_no_metrics_libraries(tmp_path: Path) -> None:
    for args in (["--help"], ["status", "--runs-dir", str(tmp_path)]):
        done = subprocess.run([sys.executable, "-c", CHECK, *args], capture_output=True, text=True, timeout=60)
        assert done.stderr.strip().endswith("[]"), done.stderr
