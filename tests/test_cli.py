"""The command line as a user runs it: a subprocess, exit codes, one-line errors, a real run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from openai.types.chat import ChatCompletion

from runner import api
from tests.doubles.provider import FakeProvider
from tests.support.cli import JOBS, one_line_error, runner
from tests.support.files import ROOT, SECRET, line_count, read_jsonl, wait_until, write_jsonl
from tests.support.run import MODEL, tickets


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["run", "nosuchjob"], "unknown job 'nosuchjob'"),
        (["run", "classify", "--input", "missing.jsonl"], "input file missing.jsonl does not exist"),
        (["run", "classify", "--concurrency", "0"], "--concurrency: expected a whole number from 1 to 10000"),
        (["run", "classify", "--timeout", "soon"], "--timeout: expected a number of seconds > 0"),
        (["run", "classify", "--api-base", "localhost:8000"], "--api-base: expected an http(s):// URL"),
        (["run", "classify", "--rpm", "0"], "--rpm: expected a number per minute of at least 1"),
        (["run", "classify", "--grace", "-1"], "--grace: expected seconds from 0 to 3600"),
        (["run", "classify", "--run-id", "../escape"], "--run-id: expected letters, digits"),
        (["run", "batch"], "the batch job needs --input PATH"),
        (["run", "classify", "--model", "no-such-provider-model"], "is not a model litellm knows how to call"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(tmp_path: Path, args: list[str], says: str) -> None:
    (tmp_path / "data").mkdir()
    write_jsonl(tmp_path / "data" / "classify.jsonl", tickets(2))
    if args[0] == "run":
        args = [*args, "--jobs-dir", JOBS]
    proc = runner(*args, cwd=tmp_path)
    assert proc.returncode == 2
    assert says in one_line_error(proc)
    assert not (tmp_path / "runs").exists()


def test_a_missing_key_is_named_before_the_input_is_read(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    write_jsonl(tmp_path / "in.jsonl", tickets(2))
    proc = runner("run", "classify", "--jobs-dir", JOBS, "--input", "in.jsonl", "--model", "gpt-4o-mini", cwd=tmp_path,
                  env=env)  # fmt: skip
    assert proc.returncode == 2
    line = one_line_error(proc)
    assert "OPENAI_API_KEY is not set" in line and "--model" in line
    assert not (tmp_path / "runs").exists()


def test_a_broken_job_module_says_what_to_fix(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / "broken.py").write_text(
        "from runner import Job\njob = Job(name='broken', build_request=dict, concurrency=0)\n"
    )
    (jobs / "empty.py").write_text("x = 1\n")
    proc = runner("run", "broken", cwd=tmp_path)
    assert proc.returncode == 2
    assert "job field 'concurrency' must be a whole number >= 1" in one_line_error(proc)
    proc = runner("run", "empty", cwd=tmp_path)
    assert "must define `job = Job(...)`" in one_line_error(proc)

    listing = runner("jobs", "--jobs-dir", JOBS, cwd=tmp_path)
    assert listing.returncode == 0
    assert "classify" in listing.stdout and "batch" in listing.stdout


def test_the_sample_job_runs_end_to_end_without_leaking_the_key(tmp_path: Path, provider: FakeProvider) -> None:
    provider.configure(latency_ms=20, p500=0.05, p429=0.05, retry_after=0.1, seed=3)
    sample = ROOT / "data" / "classify.jsonl"
    args = ["run", "classify", "--jobs-dir", JOBS, "--input", str(sample), "--model", MODEL, "--api-base", provider.url]
    proc = runner(*args, "--concurrency", "32", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr

    run_dir = tmp_path / "runs" / "classify" / "classify"
    results = read_jsonl(run_dir / "results.jsonl")
    ids = [orjson.loads(line)["id"] for line in sample.read_bytes().splitlines() if line.strip()]
    assert sorted(r["custom_id"] for r in results) == sorted(ids)
    assert {r["result"] for r in results} == {"bug", "feature", "billing", "other"}
    for record in results:
        ChatCompletion.model_validate(record["response"]["body"])
    manifest = orjson.loads((run_dir / "manifest.json").read_bytes())
    assert manifest["status"] == "completed" and manifest["request_counts"]["completed"] == len(ids)
    assert manifest["retries"] > 0 and "completed:" in proc.stderr and "progress:" in proc.stderr
    for path in run_dir.iterdir():
        assert SECRET not in path.read_text()
    assert SECRET not in proc.stderr + proc.stdout
    # A finished run started again sends nothing: test_resume's test_a_completed_run_started_again_does_nothing.


def test_exit_codes_for_failed_rows_and_fatal_errors(tmp_path: Path, provider: FakeProvider) -> None:
    rows = tickets(5)
    rows[2]["text"] += " [[fail:400]]"
    write_jsonl(tmp_path / "some_fail.jsonl", rows)
    args = ["run", "classify", "--jobs-dir", JOBS, "--model", MODEL, "--api-base", provider.url]
    proc = runner(*args, "--input", "some_fail.jsonl", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr

    rows[2]["text"] = "anything [[fail:401]]"
    write_jsonl(tmp_path / "fatal.jsonl", rows)
    proc = runner(*args, "--input", "fatal.jsonl", "--concurrency", "1", cwd=tmp_path)
    assert proc.returncode == 3
    assert "authentication_failed" in proc.stderr.splitlines()[-1]
    assert SECRET not in proc.stderr


def test_sigterm_checkpoints_and_exits_143_then_resume_finishes(tmp_path: Path, provider: FakeProvider) -> None:
    provider.configure(latency_ms=200)
    write_jsonl(tmp_path / "in.jsonl", tickets(300))
    args = [
        "run",
        "classify",
        "--jobs-dir",
        JOBS,
        "--input",
        "in.jsonl",
        "--model",
        MODEL,
        "--api-base",
        provider.url,
        "--concurrency",
        "10",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner", *args],
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    results = tmp_path / "runs" / "classify" / "in" / "results.jsonl"
    # Whole lines only: the run may be halfway through appending a batch while it is polled.
    wait_until(lambda: line_count(results) >= 30, "30 rows journaled", timeout=60)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    partial = read_jsonl(results)
    manifest = orjson.loads((results.parent / "manifest.json").read_bytes())
    assert manifest["status"] == "interrupted" and manifest["request_counts"]["completed"] == len(partial) < 300

    provider.configure(latency_ms=0)  # the resume, in this process: the checkpoint is under test, not a second start
    done = api.run("classify", tmp_path / "in.jsonl", jobs_dir=JOBS, model=MODEL, api_base=provider.url,
                   runs_dir=tmp_path / "runs", concurrency=10)  # fmt: skip
    assert done.status == "completed" and done.run_dir == results.parent
    final = read_jsonl(results)
    assert len(final) == 300 and len({r["custom_id"] for r in final}) == 300


def test_an_input_directory_runs_each_file_and_returns_the_worst_code(tmp_path: Path, provider: FakeProvider) -> None:
    from runner.run.lock import RunLock

    nights = tmp_path / "in"
    nights.mkdir()
    bad = tickets(4, prefix="a")
    bad[1]["text"] += " [[fail:400]]"
    write_jsonl(nights / "2026-11-23.jsonl", bad)  # finishes with a failed row: 1
    write_jsonl(nights / "2026-11-24.jsonl", tickets(4, prefix="b"))  # locked by "another fire": 75
    write_jsonl(nights / "2026-11-25.jsonl", tickets(4, prefix="c"))  # fine: 0
    (nights / "notes.txt").write_text("not an input")
    locked = tmp_path / "runs" / "classify" / "2026-11-24"
    locked.mkdir(parents=True)
    args = ["run", "classify", "--jobs-dir", JOBS, "--model", MODEL, "--api-base", provider.url, "--input", "in"]
    with RunLock(locked):
        proc = runner(*args, cwd=tmp_path)
    assert proc.returncode == 75, proc.stderr
    assert f"runs/classify/2026-11-24 is in use by PID {os.getpid()}" in proc.stderr
    for night, done in (("2026-11-23", 3), ("2026-11-24", 0), ("2026-11-25", 4)):
        assert len(read_jsonl(tmp_path / "runs" / "classify" / night / "results.jsonl")) == done
    assert runner(*args, cwd=tmp_path).returncode == 1  # the next fire finishes the locked night
    assert len(read_jsonl(locked / "results.jsonl")) == 4

    assert runner(*args, "--run-id", "x", cwd=tmp_path).returncode == 2  # one run id cannot name several runs


@pytest.mark.parametrize("flag", ["--rpm", "--tpm"])
@pytest.mark.parametrize("value", ["0.5", "0.99", "-3"])
def test_a_rate_below_one_a_minute_is_a_usage_error(tmp_path: Path, flag: str, value: str) -> None:
    proc = runner("run", "classify", "--jobs-dir", JOBS, flag, value, cwd=tmp_path)
    assert proc.returncode == 2
    assert f"{flag}: expected a number per minute of at least 1, got '{value}'" in one_line_error(proc)


def test_a_fractional_rate_of_one_or_more_is_kept_exactly(tmp_path: Path, provider: FakeProvider) -> None:
    write_jsonl(tmp_path / "in.jsonl", tickets(2))
    proc = runner("run", "classify", "--jobs-dir", JOBS, "--input", "in.jsonl", "--model", MODEL,
                  "--api-base", provider.url, "--rpm", "600.5", "--tpm", "2500000.25", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    limits = orjson.loads((tmp_path / "runs" / "classify" / "in" / "manifest.json").read_bytes())["limits"][MODEL]
    assert (limits["rpm"], limits["tpm"]) == (600.5, 2500000.25)
    shown = runner("status", "classify", cwd=tmp_path)
    assert "rpm 600.5, tpm 2,500,000.25" in shown.stdout, shown.stdout
