"""What a new user may hand runner as input: a BOM, gzip, Latin-1, standard input, an empty file."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from runner import api
from runner.errors import UsageError
from runner.job.definition import load_job
from runner.options import RunOptions
from runner.preflight import input_files, run_dir_for
from runner.run.source import BOM, BadLine, Row, check_input, count_lines, read_rows
from tests.doubles.provider import FakeProvider
from tests.support.cli import JOBS, one_line_error, runner
from tests.support.files import ROOT, read_jsonl, write_jsonl
from tests.support.run import MODEL, tickets

CLASSIFY = load_job("classify", ROOT / "jobs")


def lines_of(rows: list[dict]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in rows)


async def read_all(path: Path) -> list[Row | BadLine]:
    return [item async for items in read_rows(path, "id") for item in items]


async def test_a_byte_order_mark_is_skipped_by_every_reader(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(BOM + lines_of(tickets(3)))
    items = await read_all(path)
    assert [(i.line, i.custom_id) for i in items] == [(1, "t-0000"), (2, "t-0001"), (3, "t-0002")]
    assert all(isinstance(i, Row) for i in items)
    assert count_lines(path) == 3 and check_input(path)


async def test_gzip_input_is_read_as_it_streams(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl.gz"
    path.write_bytes(gzip.compress(BOM + lines_of(tickets(5))))
    assert [i.custom_id for i in await read_all(path) if isinstance(i, Row)] == [f"t-{i:04d}" for i in range(5)]
    assert count_lines(path) == 5 and check_input(path)
    # Appending a gzip member (gzip -c new >> in.jsonl.gz) is growth, read as one stream.
    with path.open("ab") as f:
        f.write(gzip.compress(lines_of(tickets(2, prefix="late"))))
    assert count_lines(path) == 7 and (await read_all(path))[-1].custom_id == "late-0001"


def test_input_that_is_not_utf8_is_refused_once_naming_the_offset(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(BOM + b'{"id": "a", "text": "ok"}\n{"id": "b", "text": "caf\xe9"}\n')
    with pytest.raises(UsageError, match=r"is not UTF-8: byte 0xe9 at offset 53 "):
        check_input(path)
    broken = tmp_path / "broken.jsonl.gz"
    broken.write_bytes(gzip.compress(b'{"id": "a"}\n')[:-6])  # cut short: no end of stream
    with pytest.raises(UsageError, match="can't be read"):
        check_input(broken)


async def test_a_stray_non_utf8_line_past_the_checked_head_says_so(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"id": "a", "text": "ok"}\n{"id": "b", "text": "caf\xe9"}\n')
    bad = [i for i in await read_all(path) if isinstance(i, BadLine)]
    assert [b.message for b in bad] == ["line 2: not UTF-8 (byte 0xe9 at column 25)"]


def test_empty_input_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(BOM + b"\n  \n")
    assert not check_input(path)


def test_an_input_directory_takes_gzip_files_and_names_runs_by_their_stem(tmp_path: Path) -> None:
    (tmp_path / "2026-11-24.jsonl.gz").write_bytes(gzip.compress(b"{}\n"))
    (tmp_path / "2026-11-25.jsonl").write_bytes(b"{}\n")
    (tmp_path / "notes.txt").write_text("not an input")
    found = input_files(CLASSIFY, tmp_path, None)
    assert [p.name for p in found] == ["2026-11-24.jsonl.gz", "2026-11-25.jsonl"]
    args = RunOptions("classify", runs_dir=Path("runs"), run_id=None, model=None)
    assert run_dir_for(args, CLASSIFY, found[0]) == Path("runs/classify/2026-11-24")
    (tmp_path / "2026-11-25.jsonl.gz").write_bytes(gzip.compress(b"{}\n"))
    with pytest.raises(UsageError, match="would both be run 2026-11-25"):
        input_files(CLASSIFY, tmp_path, None)


def test_another_model_than_the_jobs_own_gets_its_own_default_run(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    args = RunOptions("classify", runs_dir=runs, run_id=None, model=MODEL)
    input_path = Path("data/classify.jsonl")
    assert run_dir_for(args, CLASSIFY, input_path) == runs / "classify" / "classify"  # nothing there yet
    quick_start = runs / "classify" / "classify"
    quick_start.mkdir(parents=True)
    (quick_start / "manifest.json").write_bytes(orjson.dumps({"fingerprint": {"model": CLASSIFY.model}}))
    assert run_dir_for(args, CLASSIFY, input_path) == runs / "classify" / "classify.openai_gpt-4o-mini"
    for same in (None, CLASSIFY.model):  # the job's own model keeps the plain name
        assert (
            run_dir_for(RunOptions("classify", runs_dir=runs, run_id=None, model=same), CLASSIFY, input_path)
            == quick_start
        )
    named = RunOptions("classify", runs_dir=runs, run_id="mine", model=MODEL)
    assert run_dir_for(named, CLASSIFY, input_path) == runs / "classify" / "mine"


def test_switching_from_the_default_model_starts_a_new_run(tmp_path: Path, provider: FakeProvider) -> None:
    write_jsonl(tmp_path / "in.jsonl", tickets(3))
    quick_start = tmp_path / "runs" / "classify" / "in"
    quick_start.mkdir(parents=True)  # what `make run JOB=classify` left: a run of the offline default model
    (quick_start / "manifest.json").write_bytes(orjson.dumps({"fingerprint": {"model": CLASSIFY.model}}))
    args = ["run", "classify", "--jobs-dir", JOBS, "--input", "in.jsonl", "--model", MODEL, "--api-base", provider.url]
    proc = runner(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert len(read_jsonl(tmp_path / "runs" / "classify" / "in.openai_gpt-4o-mini" / "results.jsonl")) == 3


def test_gzip_input_with_a_bom_runs_and_resumes(tmp_path: Path, provider: FakeProvider) -> None:
    (tmp_path / "in.jsonl.gz").write_bytes(gzip.compress(BOM + lines_of(tickets(4))))
    # The input reader is under test, not the command line: `runner run`'s run through the Python API, in process.
    options = {"jobs_dir": JOBS, "model": MODEL, "api_base": provider.url, "runs_dir": tmp_path / "runs"}
    done = api.run("classify", tmp_path / "in.jsonl.gz", **options)
    assert done.status == "completed"
    run_dir = tmp_path / "runs" / "classify" / "in"
    assert done.run_dir == run_dir
    assert sorted(r["custom_id"] for r in read_jsonl(run_dir / "results.jsonl")) == [f"t-{i:04d}" for i in range(4)]
    assert not (run_dir / "errors.jsonl").exists() or not read_jsonl(run_dir / "errors.jsonl")
    manifest = orjson.loads((run_dir / "manifest.json").read_bytes())
    assert manifest["request_counts"] == {"total": 4, "completed": 4, "failed": 0}
    provider.reset()
    assert api.run("classify", tmp_path / "in.jsonl.gz", **options).status == "completed"
    assert provider.stats().total == 0


def test_latin1_input_is_a_usage_error_before_anything_is_sent(tmp_path: Path, provider: FakeProvider) -> None:
    (tmp_path / "in.jsonl").write_bytes('{"id": "a", "text": "café"}\n'.encode("latin-1"))
    args = ["run", "classify", "--jobs-dir", JOBS, "--input", "in.jsonl", "--model", MODEL, "--api-base", provider.url]
    proc = runner(*args, cwd=tmp_path)
    assert proc.returncode == 2
    assert "input file in.jsonl is not UTF-8: byte 0xe9 at offset 24" in one_line_error(proc)
    assert provider.stats().total == 0 and not (tmp_path / "runs").exists()


def test_an_empty_input_warns_and_exits_0(tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_bytes(b"")
    proc = runner("run", "classify", "--jobs-dir", JOBS, "--input", "in.jsonl", "--model", MODEL, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "input file in.jsonl is empty: nothing to do" in proc.stderr
    assert not (tmp_path / "runs").exists()


def stdin_run(cwd: Path, data: bytes | None, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "runner", "run", "classify", "--jobs-dir", JOBS, "--input", "-", *args],
        cwd=cwd,
        input=data,
        stdin=subprocess.DEVNULL if data is None else None,
        capture_output=True,
        timeout=120,
    )


def test_standard_input_needs_a_run_id_and_resumes_from_its_copy(tmp_path: Path, provider: FakeProvider) -> None:
    data = lines_of(tickets(5))
    refused = stdin_run(tmp_path, data, "--model", MODEL)
    assert refused.returncode == 2 and b"--input - (standard input) needs --run-id NAME" in refused.stderr
    assert not (tmp_path / "runs").exists()

    args = ["--model", MODEL, "--api-base", provider.url, "--run-id", "piped"]
    proc = stdin_run(tmp_path, data, *args)
    assert proc.returncode == 0, proc.stderr
    run_dir = tmp_path / "runs" / "classify" / "piped"
    assert (run_dir / "input.jsonl").read_bytes() == data and len(read_jsonl(run_dir / "results.jsonl")) == 5

    provider.reset()
    again = stdin_run(tmp_path, None, *args)  # nothing piped this time: the copy is what it resumes from
    assert again.returncode == 0, again.stderr
    assert provider.stats().total == 0 and b"copy of standard input" in again.stderr

    empty = stdin_run(tmp_path, b"", *args[:-1], "other")
    assert empty.returncode == 0 and b"standard input is empty: nothing to do" in empty.stderr
    assert not (tmp_path / "runs" / "classify" / "other").exists()


def test_a_runs_dir_that_is_a_file_is_a_usage_error(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "in.jsonl", tickets(2))
    (tmp_path / "runs").write_text("not a directory")
    for runs_dir in ("runs", "runs/deeper"):
        proc = runner(
            "run", "classify", "--jobs-dir", JOBS, "--input", "in.jsonl", "--runs-dir", runs_dir, cwd=tmp_path
        )
        assert proc.returncode == 2, proc.stderr
        assert f"--runs-dir {runs_dir}: runs is a file, not a directory" in one_line_error(proc)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through any permission bits")
def test_a_runs_dir_without_write_permission_is_a_usage_error(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "in.jsonl", tickets(2))
    (tmp_path / "runs").mkdir(mode=0o555)
    proc = runner("run", "classify", "--jobs-dir", JOBS, "--input", "in.jsonl", cwd=tmp_path)
    assert proc.returncode == 2
    assert "--runs-dir runs: runs is not writable" in one_line_error(proc)


FAST = """
import sys
from runner.cli import main
code = main(sys.argv[1:])
print("litellm imported" if "litellm" in sys.modules else "litellm not imported", file=sys.stderr)
sys.exit(code)
"""


def refused_fast(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", FAST, "run", "classify", "--jobs-dir", JOBS, "--input", "in.jsonl", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_a_locked_run_and_a_missing_key_are_refused_before_litellm_is_imported(tmp_path: Path) -> None:
    from runner.run.lock import RunLock

    write_jsonl(tmp_path / "in.jsonl", tickets(2))
    run_dir = tmp_path / "runs" / "classify" / "in"
    run_dir.mkdir(parents=True)
    with RunLock(run_dir):
        proc = refused_fast(tmp_path, "--model", MODEL)
    assert proc.returncode == 75, proc.stderr
    assert f"is in use by PID {os.getpid()}" in proc.stderr and "litellm not imported" in proc.stderr

    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    for model, key in (("gpt-4o-mini", "OPENAI_API_KEY"), ("anthropic/claude-3-5-haiku-latest", "ANTHROPIC_API_KEY")):
        proc = refused_fast(tmp_path, "--model", model, env=env)
        assert proc.returncode == 2, proc.stderr
        assert f"{key} is not set: model {model!r} needs it" in proc.stderr and "litellm not imported" in proc.stderr

    (tmp_path / "in.jsonl").write_bytes(b"\xff\xfe{")  # UTF-16 from a Windows editor
    proc = refused_fast(tmp_path, "--model", MODEL)
    assert proc.returncode == 2 and "is not UTF-8: byte 0xff at offset 0" in proc.stderr
    assert "litellm not imported" in proc.stderr
