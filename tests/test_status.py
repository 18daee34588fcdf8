"""`runner status`: real runs read back, live runs read while they write, and the edge cases by hand."""

from __future__ import annotations

import asyncio
import calendar
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from runner.cli import main
from runner.records import error_record
from runner.run.lock import RunLock
from runner.run.manifest import write_manifest
from runner.serve.show import show_status
from runner.serve.status import TAIL_BYTES, find_runs, read_run
from tests.doubles.provider import FakeProvider
from tests.support.files import SECRET, read_jsonl
from tests.support.run import run_rows, tickets


def manifest(
    status: str = "in_progress", total: int | None = 100, completed: int = 30, failed: int = 10, **extra: Any
) -> dict[str, Any]:
    """A manifest as the pipeline writes one (the parts status reads)."""
    usage = {
        "input_tokens": 4000,
        "output_tokens": 80,
        "total_tokens": 4080,
        "cached_tokens": 512,
        "reasoning_tokens": 7,
    }
    return {
        "object": "batch",
        "id": "r1",
        "job": {"name": "classify", "model": "openai/gpt-4o-mini", "timeout": 30.0, "max_attempts": 6},
        "created_at": "2026-11-25T16:00:00Z",
        "status": status,
        "request_counts": {"total": total, "completed": completed, "failed": failed},
        "usage": usage,
        "cost_usd": 0.00125,
        "cost_known": True,
        "models": {"openai/gpt-4o-mini": {"requests": 40, **usage, "cost_usd": 0.00125, "unpriced_requests": 0}},
        "finish_reasons": {"stop": 28, "length": 2},
        "error_codes": {"invalid_result": 10},
        "retries": 6,
        "rate_limited": 4,
        "limits": {
            "openai/gpt-4o-mini": {
                "rate_limited": 4,
                "waited_s": 2.5,
                "concurrency": 8,
                "concurrency_ceiling": 16,
                "rpm": 500,
                "tpm": None,
                "learned_limits": {"tpm": 200000.0},
            }
        },
        "rows_per_s": 4.0,
        "updated_at": "2026-11-25T16:10:00Z",
        "elapsed_s": 10.0,
        **extra,
    }


def make_run(
    runs_dir: Path,
    job: str = "classify",
    run_id: str = "r1",
    data: dict[str, Any] | None = None,
    errors: bytes | None = None,
    lock_pid: int | None = None,
) -> Path:
    """A run directory by hand: an optional manifest, errors.jsonl bytes and lock file PID.

    ``lock_pid=os.getpid()`` also takes the run's flock (held until the test ends), since that, not
    the PID in the file, is what makes a run live.
    """
    run_dir = runs_dir / job / run_id
    run_dir.mkdir(parents=True)
    if data is not None:
        write_manifest(run_dir / "manifest.json", data)
    if errors is not None:
        (run_dir / "errors.jsonl").write_bytes(errors)
    if lock_pid == os.getpid():
        HELD.append(RunLock(run_dir).__enter__())
    elif lock_pid is not None:
        (run_dir / "lock").write_text(f"{lock_pid}\n")
    return run_dir


HELD: list[RunLock] = []


@pytest.fixture(autouse=True)
def _release_locks() -> Iterator[None]:
    yield
    while HELD:
        HELD.pop().__exit__(None, None, None)


def error_line(i: int, code: str = "invalid_result") -> bytes:
    record = error_record(f"t-{i:04d}", code, f"expected one label, got 'x{i}'", {"line": i + 1, "attempts": 1})
    return orjson.dumps(record.line) + b"\n"


def dead_pid() -> int:
    """The PID of a process that has exited and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", ""])
    proc.wait()
    return proc.pid


def set_mtime(path: Path, seconds_ago: float) -> None:
    then = time.time() - seconds_ago
    os.utime(path, (then, then))


def status_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runner", "status", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=30,
    )


# --- real runs -------------------------------------------------------------------------------------------------


async def test_a_finished_run_reads_back_what_its_journal_holds(tmp_path: Path, provider: FakeProvider) -> None:
    rows: list[Any] = tickets(12)
    rows[3]["text"] += " [[fail:400]]"
    rows[7]["text"] += " [[answer:banana]]"  # the job rejects it: an error record that kept the paid answer
    rows.append("{not json")
    done = await run_rows(tmp_path / "runs" / "classify", provider, rows)
    run_dir = tmp_path / "runs" / "classify" / "run"
    assert (run_dir / "lock").read_text().strip() == str(os.getpid())  # a live PID, but not running it any more

    status = read_run(run_dir)
    assert status["status"] == "completed" and status["running"] is False and status["pid"] is None
    assert (status["job"], status["run_id"], status["path"]) == ("classify", "run", str(run_dir))
    assert (status["total"], status["completed"], status["failed"], status["done"]) == (13, 10, 3, 13)
    assert status["percent"] == 100.0 and status["eta_s"] is None
    assert status["usage"] == done.manifest["usage"] and status["usage"]["input_tokens"] > 0
    assert status["cost_usd"] == done.manifest["cost_usd"] > 0 and status["cost_known"] is True
    assert status["rows_per_s"] == done.manifest["rows_per_s"] > 0
    assert status["error_codes"] == {"bad_request": 1, "invalid_result": 1, "invalid_json": 1}
    assert status["finish_reasons"] == {"stop": 11}
    assert status["model"] == "openai/gpt-4o-mini" and status["created_at"] == done.manifest["created_at"]
    assert 0 <= status["age_s"] < 5
    errors = read_jsonl(run_dir / "errors.jsonl")
    assert status["last_errors"] == [
        {
            "custom_id": e["custom_id"],
            "code": e["error"]["code"],
            "message": e["error"]["message"],
            "line": e["meta"]["line"],
        }
        for e in errors
    ]
    assert {e["line"] for e in status["last_errors"]} == {4, 8, 13}
    assert [e["custom_id"] for e in read_run(run_dir, last_errors=2)["last_errors"]] == [
        e["custom_id"] for e in errors[-2:]
    ]
    assert read_run(run_dir, last_errors=0)["last_errors"] == []
    orjson.dumps(status)  # JSON-able as it is


async def test_status_of_a_live_run_in_process_and_from_a_subprocess(tmp_path: Path, provider: FakeProvider) -> None:
    provider.configure(latency_ms=40)
    runs_dir = tmp_path / "runs"
    run_dir = runs_dir / "classify" / "run"
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_rows(
            runs_dir / "classify", provider, tickets(400), concurrency=2, stop=stop, manifest_interval=0.05, grace=5.0
        )
    )
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + 20
    while not (seen and seen[-1]["running"] and seen[-1]["done"] >= 4 and seen[-1]["eta_s"]):
        assert time.monotonic() < deadline and not task.done(), seen[-1:]
        seen.append(await asyncio.to_thread(read_run, run_dir))
        await asyncio.sleep(0.02)
    live = seen[-1]
    assert live["status"] == "in_progress" and live["pid"] == os.getpid() and live["total"] == 400
    assert live["eta_s"] == pytest.approx((400 - live["done"]) / live["rows_per_s"], abs=0.1)

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "runner",
        "status",
        "classify",
        "--json",
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err
    assert SECRET.encode() not in out + err  # the environment (a key is set) never reaches the output
    [other] = orjson.loads(out)
    assert other["running"] is True and other["pid"] == os.getpid() and other["status"] == "in_progress"
    assert other["done"] >= live["done"]

    stop.set()
    finished = await task
    assert finished.report.status == "interrupted"
    dones = [s["done"] for s in seen]
    assert dones == sorted(dones)  # never read a torn or older manifest
    final = read_run(run_dir)
    assert final["status"] == "interrupted" and final["running"] is False and final["eta_s"] is None
    assert final["done"] == len(finished.results) + len(finished.errors) < 400

    proc2 = status_cli("classify", cwd=tmp_path)
    assert proc2.returncode == 0, proc2.stderr
    assert "status    interrupted; run the same `runner run` command again to resume" in proc2.stdout
    assert f"progress  {final['done']} of 400 rows" in proc2.stdout


# --- status rules, by hand -------------------------------------------------------------------------------------


def test_in_progress_whose_process_is_gone_is_stopped(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, data=manifest(), lock_pid=dead_pid())
    status = read_run(run_dir)
    assert status["status"] == "stopped" and status["running"] is False and status["pid"] is None
    assert status["eta_s"] is None and status["rows_per_s"] == 4.0


def test_in_progress_held_by_a_live_process_is_running_with_an_eta(tmp_path: Path) -> None:
    run_dir = tmp_path / "classify" / "r1"
    run_dir.mkdir(parents=True)
    with RunLock(run_dir):
        write_manifest(run_dir / "manifest.json", manifest())
        status = read_run(run_dir)
        assert status["status"] == "in_progress" and status["running"] is True and status["pid"] == os.getpid()
        assert status["eta_s"] == 15.0  # 60 rows to go at 4 rows/s
        assert status["percent"] == 40.0


def test_a_live_lock_taken_after_the_manifest_is_a_run_starting(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, data=manifest("interrupted"))
    set_mtime(run_dir / "manifest.json", 3600)
    with RunLock(run_dir):  # a resume that has not written its first manifest yet
        status = read_run(run_dir)
        assert status["status"] == "starting" and status["running"] is True and status["pid"] == os.getpid()
        assert status["eta_s"] is None and status["done"] == 40  # the counts so far are still shown


def test_a_run_with_no_manifest_yet(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, lock_pid=os.getpid())
    status = read_run(run_dir)
    assert status["status"] == "starting" and status["running"] is True and status["pid"] == os.getpid()
    assert (status["total"], status["done"], status["percent"], status["eta_s"]) == (None, 0, None, None)
    assert status["usage"]["total_tokens"] == 0 and status["last_errors"] == [] and status["age_s"] is None
    assert find_runs(tmp_path) == [run_dir]

    HELD.pop().__exit__(None, None, None)  # the process died: the kernel dropped its lock
    assert read_run(run_dir)["status"] == "stopped"
    (run_dir / "lock").write_text(f"{os.getpid()}\n")  # a live PID in the file is not a lock
    assert read_run(run_dir)["status"] == "stopped"
    empty = tmp_path / "classify" / "bare"
    empty.mkdir()
    assert read_run(empty)["status"] == "stopped"  # not even a lock file: no crash
    assert find_runs(tmp_path) == [run_dir]  # but not listed as a run


def test_counts_costs_and_the_max_cost_fields_are_copied(tmp_path: Path) -> None:
    data = manifest("completed", total=None, stop_reason="max_cost", max_cost_usd=0.5, cost_known=False)
    data["models"]["openai/gpt-4o-mini"]["unpriced_requests"] = 3
    run_dir = make_run(tmp_path, data=data, lock_pid=os.getpid())
    set_mtime(run_dir / "lock", 60)  # a live PID from before the manifest: not running it
    now = calendar.timegm((2026, 11, 25, 16, 11, 30, 0, 0, 0))
    status = read_run(run_dir, now=now)
    assert status["age_s"] == 90.0
    assert (status["stop_reason"], status["max_cost_usd"], status["cost_known"]) == ("max_cost", 0.5, False)
    assert status["unpriced_requests"] == 3 and status["percent"] is None and status["running"] is False
    assert status["limits"] == data["limits"] and status["retries"] == 6 and status["rate_limited"] == 4


# --- the errors file's tail ------------------------------------------------------------------------------------


def test_a_torn_last_line_and_garbage_lines_are_skipped(tmp_path: Path) -> None:
    torn = error_line(1) + b"garbage\n" + error_line(2) + b"[1, 2]\n" + error_line(3) + error_line(4)[:40]
    run_dir = make_run(tmp_path, data=manifest(), errors=torn)
    assert [e["custom_id"] for e in read_run(run_dir)["last_errors"]] == ["t-0001", "t-0002", "t-0003"]
    assert read_run(run_dir)["last_errors"][-1] == {
        "custom_id": "t-0003",
        "code": "invalid_result",
        "message": "expected one label, got 'x3'",
        "line": 4,
    }
    (run_dir / "errors.jsonl").write_bytes(error_line(5)[:-1])  # one half-written line, nothing else
    assert read_run(run_dir)["last_errors"] == []
    (run_dir / "errors.jsonl").unlink()
    assert read_run(run_dir)["last_errors"] == []


def test_only_the_tail_of_a_huge_errors_file_is_read(tmp_path: Path) -> None:
    garbage = (b"\xff\xfe not json at all {" * 64 + b"\n") * 4000  # ~5 MB nobody should parse
    records = b"".join(error_line(i, code=f"code_{i}") for i in range(7))
    run_dir = make_run(tmp_path, data=manifest(), errors=garbage + records)
    assert (run_dir / "errors.jsonl").stat().st_size > 5_000_000
    io = Path("/proc/self/io")
    before = _bytes_read(io)
    status = read_run(run_dir)
    after = _bytes_read(io)
    assert [e["code"] for e in status["last_errors"]] == [f"code_{i}" for i in range(2, 7)]
    if before is not None and after is not None:
        assert after - before < 4 * TAIL_BYTES  # the tail, the manifest and the lock file; not 5 MB


def _bytes_read(io: Path) -> int | None:
    """Bytes this process has read so far (Linux), else None."""
    try:
        return int(dict(line.split(": ") for line in io.read_text().splitlines())["rchar"])
    except (OSError, KeyError, ValueError):
        return None


def test_a_line_that_starts_exactly_at_the_window_is_kept(tmp_path: Path) -> None:
    first = error_line(0)
    pad = TAIL_BYTES - len(first) - len(error_line(1))
    padded = orjson.loads(first)
    padded["error"]["message"] += "x" * pad
    window = orjson.dumps(padded) + b"\n" + error_line(1)
    assert len(window) == TAIL_BYTES
    run_dir = make_run(tmp_path, data=manifest(), errors=error_line(99) + window)
    assert [e["custom_id"] for e in read_run(run_dir, last_errors=10)["last_errors"]] == ["t-0000", "t-0001"]


# --- finding runs ----------------------------------------------------------------------------------------------


def test_find_runs_most_recently_updated_first(tmp_path: Path) -> None:
    old = make_run(tmp_path, "classify", "old", data=manifest())
    new = make_run(tmp_path, "classify", "new", data=manifest())
    other = make_run(tmp_path, "extract", "mid", data=manifest())
    for run_dir, age in ((old, 300), (new, 10), (other, 100)):
        set_mtime(run_dir / "manifest.json", age)
    (tmp_path / "classify" / "not-a-run").mkdir()
    (tmp_path / "classify" / "in.jsonl").write_text("{}\n")
    (tmp_path / ".hidden" / "x").mkdir(parents=True)
    (tmp_path / ".hidden" / "x" / "manifest.json").write_text("{}")
    assert find_runs(tmp_path) == [new, other, old]
    assert find_runs(tmp_path, "classify") == [new, old]
    assert find_runs(tmp_path, "nope") == [] and find_runs(tmp_path, "..") == []
    assert find_runs(tmp_path / "missing") == []


# --- the command line ------------------------------------------------------------------------------------------


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    """classify/old (stopped, 2 errors), classify/new (running here), extract/new (completed, unpriced)."""
    runs_dir = tmp_path / "runs"
    old = make_run(
        runs_dir, "classify", "old", data=manifest(), errors=error_line(1) + error_line(2), lock_pid=dead_pid()
    )
    new = make_run(
        runs_dir,
        "classify",
        "new",
        data=manifest(completed=3000, failed=0, total=12000, rows_per_s=25.0),
        lock_pid=os.getpid(),
    )
    data = manifest("completed", total=7, completed=7, failed=0, cost_known=False, rows_per_s=None)
    data["models"]["openai/gpt-4o-mini"]["unpriced_requests"] = 2
    done = make_run(runs_dir, "extract", "new", data=data)
    for run_dir, age in ((old, 300), (new, 10), (done, 100)):
        set_mtime(run_dir / "manifest.json", age)
    set_mtime(new / "lock", 1000)  # taken before its manifest was written, as a run does
    return runs_dir


def test_the_table_lists_every_run(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--runs-dir", str(runs)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["RUN", "STATUS", "DONE/TOTAL", "%", "OK", "FAILED", "TOKENS", "COST", "RATE", "UPDATED"]
    assert [line.split()[:2] for line in out[1:]] == [
        ["classify/new", "running"],
        ["extract/new", "completed"],
        ["classify/old", "stopped"],
    ]
    assert out[1].split()[2:9] == ["3,000/12,000", "25.0", "3,000", "0", "4,080", "$0.001250", "25.0/s"]
    assert out[2].split()[2:9] == ["7/7", "100.0", "7", "0", "4,080", "$0.001250+", "-"]


def test_a_job_shows_its_latest_run_in_detail_and_lists_the_others(
    runs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", "classify", "--runs-dir", str(runs)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"classify/new  {runs / 'classify' / 'new'}\n")
    assert f"status    running (PID {os.getpid()})\n" in out
    assert "progress  3,000 of 12,000 rows (25.0%): 3,000 succeeded, 0 failed\n" in out
    assert "rate      25.0 rows/s, ETA 6m 00s\n" in out
    assert "tokens    4,000 in, 80 out, 512 cached, 7 reasoning\n" in out
    assert "cost      $0.001250\n" in out and "finish    stop 28, length 2\n" in out
    assert "retries   6 retries, 4 rate-limited (429)\n" in out
    assert "limits    openai/gpt-4o-mini: concurrency 8/16, 4 × 429, waited 2.5s, rpm 500, learned tpm 200,000\n" in out
    assert "other runs of classify" in out and out.rstrip().splitlines()[-1].split()[:2] == ["classify/old", "stopped"]


def test_one_named_run_in_detail_with_its_last_errors(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "classify", "--run-id", "old", "--runs-dir", str(runs)]) == 0
    out = capsys.readouterr().out
    assert "status    stopped: no process is running it; run the same `runner run` command again to resume" in out
    assert "rate      4.0 rows/s (its last invocation)\n" in out
    assert out.endswith(
        "last errors (2 of 10, oldest first):\n"
        "  t-0001 (line 2) invalid_result: expected one label, got 'x1'\n"
        "  t-0002 (line 3) invalid_result: expected one label, got 'x2'\n"
    )
    assert main(["status", "extract", "--runs-dir", str(runs)]) == 0
    out = capsys.readouterr().out
    assert "cost      $0.001250 (unknown for 2 answers: no price for their model)\n" in out
    assert "other runs" not in out and "rate      unknown\n" in out


def test_json_is_a_list_unless_a_run_is_named(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--runs-dir", str(runs), "--json"]) == 0
    listed = orjson.loads(capsys.readouterr().out)
    assert [(r["job"], r["run_id"], r["status"]) for r in listed] == [
        ("classify", "new", "in_progress"),
        ("extract", "new", "completed"),
        ("classify", "old", "stopped"),
    ]
    assert listed[2]["last_errors"][0]["custom_id"] == "t-0001"
    assert main(["status", "extract", "--runs-dir", str(runs), "--json"]) == 0
    assert [r["run_id"] for r in orjson.loads(capsys.readouterr().out)] == ["new"]
    assert main(["status", "--run-id", "old", "--runs-dir", str(runs), "--json"]) == 0
    one = orjson.loads(capsys.readouterr().out)
    assert one == read_run(runs / "classify" / "old", now=time.time()) | {"age_s": one["age_s"]}


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--runs-dir", "{tmp}/nowhere"], "no runs found in {tmp}/nowhere; start one with `runner run JOB`"),
        (["nojob", "--runs-dir", "{runs}"], "no runs of job nojob in {runs} (jobs with runs: classify, extract)"),
        (
            ["classify", "--run-id", "nope", "--runs-dir", "{runs}"],
            "no run nope for job classify (runs: new, old); pick one of those with --run-id",
        ),
        (["--run-id", "nope", "--runs-dir", "{runs}"], "(runs: classify/new, extract/new, classify/old)"),
        (
            ["--run-id", "new", "--runs-dir", "{runs}"],
            "run new exists for several jobs (classify, extract); name one: runner status JOB --run-id ID",
        ),
    ],
)
def test_usage_errors_exit_2_with_one_line(
    runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], says: str
) -> None:
    args = [a.format(tmp=tmp_path, runs=runs) for a in args]
    assert main(["status", *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1
    assert captured.err.startswith("runner: ") and says.format(tmp=tmp_path, runs=runs) in captured.err


def test_show_status_is_callable_directly(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert show_status(runs, "extract", "new") == 0
    assert capsys.readouterr().out.startswith("extract/new  ")


def test_a_finished_run_whose_lock_file_names_a_live_process_is_not_running(tmp_path: Path) -> None:
    # A nightly fire takes each finished night's lock for a moment, writes its PID, and moves on.
    run_dir = make_run(tmp_path, data=manifest("completed", completed=40, failed=0, total=40))
    set_mtime(run_dir / "manifest.json", 3600)
    (run_dir / "lock").write_text(f"{os.getpid()}\n")
    status = read_run(run_dir)
    assert (status["status"], status["running"], status["pid"]) == ("completed", False, None)


async def test_a_run_whose_rows_all_failed_says_so_in_every_view(
    tmp_path: Path, provider: FakeProvider, capsys: pytest.CaptureFixture[str]
) -> None:
    rows: list[Any] = tickets(5)
    for row in rows:
        row["text"] += " [[fail:400]]"
    done = await run_rows(tmp_path / "runs" / "classify", provider, rows)
    assert done.manifest["status"] == "completed" and done.manifest["request_counts"]["failed"] == 5
    runs_dir = tmp_path / "runs"

    assert main(["status", "--runs-dir", str(runs_dir)]) == 0
    header, line = capsys.readouterr().out.splitlines()
    assert header.split()[:6] == ["RUN", "STATUS", "DONE/TOTAL", "%", "OK", "FAILED"]
    assert line.startswith("classify/run  completed with errors  ")
    assert line.split()[4:8] == ["5/5", "100.0", "0", "5"]

    assert main(["status", "classify", "--runs-dir", str(runs_dir)]) == 0
    out = capsys.readouterr().out
    assert "status    completed with errors: 0 ok, 5 failed (in errors.jsonl; " in out
    assert "progress  5 of 5 rows (100.0%): 0 succeeded, 5 failed\n" in out

    assert main(["status", "classify", "--run-id", "run", "--runs-dir", str(runs_dir), "--json"]) == 0
    one = orjson.loads(capsys.readouterr().out)
    assert (one["status"], one["state"], one["ok"], one["failed"]) == ("completed", "completed with errors", 0, 5)


def test_the_state_word_of_each_kind_of_run(tmp_path: Path) -> None:
    clean = make_run(tmp_path, run_id="clean", data=manifest("completed", total=7, completed=7, failed=0))
    mixed = make_run(tmp_path, run_id="mixed", data=manifest("completed", total=7, completed=5, failed=2))
    live = make_run(tmp_path, run_id="live", data=manifest(), lock_pid=os.getpid())
    set_mtime(live / "lock", 1000)
    gone = make_run(tmp_path, run_id="gone", data=manifest(), lock_pid=dead_pid())
    states = {r.name: (read_run(r)["state"], read_run(r)["ok"]) for r in (clean, mixed, live, gone)}
    assert states == {
        "clean": ("completed", 7),
        "mixed": ("completed with errors", 5),
        "live": ("running", 30),
        "gone": ("stopped", 30),
    }


def test_a_stopped_run_with_a_corrupt_manifest_counts_its_journal_and_says_each_reason_once(tmp_path: Path) -> None:
    """Issue 24, item 13 (before: "0 rows so far (the input is still being counted)" for a run no process
    runs, with rows in results.jsonl; and a failed run's reason printed once per worker that met it)."""
    from runner.serve.show import _detail, _status_line

    run_dir = make_run(tmp_path, data=manifest(), errors=error_line(1))
    (run_dir / "results.jsonl").write_bytes(b'{"custom_id":"a"}\n{"custom_id":"b"}\n')
    (run_dir / "manifest.json").write_bytes(b"{not json")
    status = read_run(run_dir)
    assert (status["status"], status["ok"], status["failed"], status["done"]) == ("stopped", 2, 1, 3)
    assert any("3 rows so far (the input was not counted)" in line for line in _detail(status))
    failed = {**status, "status": "failed", "run_errors": ["every deployment of fast failed"] * 2}
    assert _status_line(failed) == "failed: every deployment of fast failed"
