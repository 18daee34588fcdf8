"""Logs: human lines on stderr, JSON lines with --log-format json, run.log when no one is watching, no secrets."""

from __future__ import annotations

import asyncio
import logging
import os
import pty
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from runner import logs
from tests.doubles.provider import FakeProvider
from tests.support.cli import runner
from tests.support.files import ROOT, SECRET, write_jsonl
from tests.support.run import MODEL, tickets

JOBS = str(ROOT / "jobs")


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_run_log_masks_keys_in_every_format(tmp_path: Path, restore_logging: None) -> None:
    log = logging.getLogger("runner.test")
    for fmt in logs.FORMATS:
        logs.configure(logging.INFO, fmt)
        handler = logs.add_run_log(tmp_path / fmt, fmt)
        log.warning("provider said: Incorrect API key provided: %s", SECRET)
        log.info("and sk-proj-abcdefghijklmnop in a message")
        logs.remove(handler)
        text = (tmp_path / fmt / logs.RUN_LOG).read_text()
        assert SECRET not in text and "abcdefghijklmnop" not in text
        assert text.count("***") == 2


def test_json_lines_carry_time_level_logger_and_message(tmp_path: Path, restore_logging: None) -> None:
    logs.configure(logging.INFO, "json")
    handler = logs.add_run_log(tmp_path, "json")
    logging.getLogger("runner.run.coordinator").warning("row %s failed", "t-1")
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("runner").exception("unexpected")
    logs.remove(handler)
    lines = [orjson.loads(line) for line in (tmp_path / logs.RUN_LOG).read_text().splitlines()]
    assert [(x["level"], x["logger"], x["message"]) for x in lines] == [
        ("WARNING", "runner.run.coordinator", "row t-1 failed"),
        ("ERROR", "runner", "unexpected"),
    ]
    assert lines[0]["time"].endswith("Z") and lines[0]["pid"] == os.getpid()
    assert "ValueError: boom" in lines[1]["exc"]


def test_unattended_run_appends_to_run_log_and_json_goes_to_stderr(tmp_path: Path, provider: FakeProvider) -> None:
    write_jsonl(tmp_path / "in.jsonl", tickets(6))
    args = ["run", "classify", "--jobs-dir", JOBS, "--input", "in.jsonl", "--model", MODEL, "--api-base", provider.url]
    first = runner(*args, cwd=tmp_path)
    again = runner(*args, "--log-format", "json", cwd=tmp_path)
    assert (first.returncode, again.returncode) == (0, 0), first.stderr + again.stderr
    stderr_lines = [orjson.loads(line) for line in again.stderr.splitlines()]
    assert any("0 to go (complete)" in x["message"] for x in stderr_lines)
    text = (tmp_path / "runs" / "classify" / "in" / "run.log").read_text()
    # Both invocations, appended: the first as dated text lines, the second as JSON lines.
    assert text.count("---- pid") == 1 and "INFO job classify, model openai/gpt-4o-mini" in text
    assert "INFO exit 0" in text
    last = orjson.loads(text.splitlines()[-1])
    assert last["message"] == "exit 0" and last["level"] == "INFO"
    assert SECRET not in text + first.stderr + again.stderr


def test_a_terminal_gets_no_run_log(tmp_path: Path, provider: FakeProvider) -> None:
    write_jsonl(tmp_path / "in.jsonl", tickets(3))
    main, secondary = pty.openpty()
    try:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "runner",
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
            ],
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=secondary,
            timeout=120,
        )
    finally:
        os.close(secondary)
        os.close(main)
    assert proc.returncode == 0
    run_dir = tmp_path / "runs" / "classify" / "in"
    assert (run_dir / "results.jsonl").exists() and not (run_dir / "run.log").exists()


def test_an_error_exit_is_in_the_run_log(tmp_path: Path, provider: FakeProvider) -> None:
    write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "text": "[[fail:401]] hello"}, *tickets(3)])
    proc = runner("run", "classify", "--jobs-dir", JOBS, "--input", "in.jsonl", "--model", MODEL,
                  "--api-base", provider.url, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 3, proc.stderr
    text = (tmp_path / "runs" / "classify" / "in" / "run.log").read_text()
    assert "ERROR exit 3: authentication_failed calling openai/gpt-4o-mini" in text
    assert SECRET not in text


def test_credentials_in_the_api_base_stay_out_of_manifest_and_logs(tmp_path: Path, provider: FakeProvider) -> None:
    write_jsonl(tmp_path / "in.jsonl", tickets(3))
    base = provider.url.replace("http://", "http://me:pw-LEAKCHECK-2468@")
    proc = runner("run", "classify", "--jobs-dir", JOBS, "--input", "in.jsonl", "--model", MODEL,
                  "--api-base", base, "--max-attempts", "1", cwd=tmp_path)  # fmt: skip
    # (litellm's HTTP client refuses credentials in the URL next to a key, so the rows fail: what
    # matters here is where the URL is written down.)
    assert proc.returncode in (0, 1), proc.stderr
    run_dir = tmp_path / "runs" / "classify" / "in"
    manifest = orjson.loads((run_dir / "manifest.json").read_bytes())
    assert manifest["job"]["api_base"] == provider.url.replace("http://", "http://***@")
    for path in run_dir.iterdir():
        assert "LEAKCHECK" not in path.read_text(errors="replace"), path
    assert "LEAKCHECK" not in proc.stderr + proc.stdout


def test_json_lines_carry_the_fields_a_caller_passes_in_extra(tmp_path: Path, restore_logging: None) -> None:
    logs.configure(logging.INFO, "json")
    handler = logs.add_run_log(tmp_path, "json")
    log = logging.getLogger("runner.call.caller")
    extra = {"custom_id": "t-0007", "code": "rate_limited", "status": 429, "attempt": 2}
    log.warning("t-0007 ↻ rate_limited, retrying", extra=extra)
    log.info("no fields")
    logs.remove(handler)
    first, second = [orjson.loads(line) for line in (tmp_path / logs.RUN_LOG).read_text().splitlines()]
    assert {k: first[k] for k in extra} == extra and first["message"] == "t-0007 ↻ rate_limited, retrying"
    assert not set(second) & {"custom_id", "code", "status", "attempt", "run_id", "job"}


def test_json_lines_inside_a_run_context_name_the_run(tmp_path: Path, restore_logging: None) -> None:
    logs.configure(logging.INFO, "json")
    handler = logs.add_run_log(tmp_path, "json")
    log = logging.getLogger("runner")

    async def in_a_task_and_a_thread() -> None:
        log.info("in a task")
        await asyncio.to_thread(log.info, "in a worker thread")

    with logs.run_context(job="classify", run_id="2026-11-25"):
        log.info("in the run", extra={"custom_id": "t-1"})
        asyncio.run(in_a_task_and_a_thread())
    log.info("after the run")
    logs.remove(handler)
    lines = [orjson.loads(line) for line in (tmp_path / logs.RUN_LOG).read_text().splitlines()]
    named = [(x["message"], x.get("job"), x.get("run_id")) for x in lines]
    assert named == [
        ("in the run", "classify", "2026-11-25"),
        ("in a task", "classify", "2026-11-25"),
        ("in a worker thread", "classify", "2026-11-25"),
        ("after the run", None, None),
    ]
    assert lines[0]["custom_id"] == "t-1"


def test_every_json_line_of_a_real_run_names_its_job_and_run(tmp_path: Path, provider: FakeProvider) -> None:
    rows = tickets(4)
    rows[1]["text"] += " [[fail:400]]"
    write_jsonl(tmp_path / "in.jsonl", rows)
    proc = runner("run", "classify", "--jobs-dir", JOBS, "--input", "in.jsonl", "--model", MODEL,
                  "--api-base", provider.url, "--run-id", "night-1", "--log-format", "json", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    stderr_lines = [orjson.loads(line) for line in proc.stderr.splitlines()]
    logged = (tmp_path / "runs" / "classify" / "night-1" / "run.log").read_text().splitlines()
    run_log_lines = [orjson.loads(line) for line in logged]
    assert len(stderr_lines) >= 3 and len(run_log_lines) == len(stderr_lines)
    for line in stderr_lines + run_log_lines:
        assert (line["job"], line["run_id"]) == ("classify", "night-1"), line
    assert run_log_lines[-1]["message"] == "exit 1"
