"""``runner run --workers N`` as a user runs it: Ray only when asked, and nothing of it left after a SIGKILL."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import psutil
import pytest

from runner.executors.ray_cluster import PIDS, alive, temp_prefix
from tests.doubles.provider import FakeProvider
from tests.support.cli import runner
from tests.support.files import ROOT, line_count, read_jsonl, wait_until, write_jsonl
from tests.support.run import MODEL, tickets

pytestmark = pytest.mark.slow  # each test starts runner processes and Ray clusters

JOBS = str(ROOT / "jobs")

NO_RAY = """
import sys
from runner.cli import main
try:
    main(["--help"])
except SystemExit:
    pass
main(["status", "--runs-dir", "runs"])
main(sys.argv[1:])
print("ray imported" if "ray" in sys.modules else "ray not imported", file=sys.stderr)
"""


def test_help_status_and_a_plain_run_do_not_import_ray(tmp_path: Path, provider: FakeProvider) -> None:
    write_jsonl(tmp_path / "in.jsonl", tickets(3))
    args = ["run", "classify", "--jobs-dir", JOBS, "--input", "in.jsonl", "--model", MODEL, "--api-base", provider.url]
    proc = subprocess.run([sys.executable, "-c", NO_RAY, *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "ray not imported" in proc.stderr and provider.stats().total == 3


def _cmdline(pid: int) -> str:
    try:
        return " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return ""


def processes_naming(marker: str) -> list[int]:
    """Live (not zombie) processes whose command line names ``marker`` (a cluster's temp directory)."""
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        if marker in " ".join(process.info["cmdline"] or ()) and process.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(process.pid)
    return found


def ray_processes(run_dir: Path) -> list[int]:
    """Live processes of a Ray cluster started for ``run_dir`` (their command lines name its temp dir)."""
    return processes_naming(temp_prefix(run_dir))


def start_two_workers(
    tmp_path: Path, provider: FakeProvider, rows: int, latency_ms: int, **popen: Any
) -> tuple[list[dict[str, str]], list[str], Path, subprocess.Popen[str]]:
    """``runner run --workers 2`` over ``rows`` tickets, started in the background: the rows, the
    command's arguments (to run it again), its run directory and the process."""
    provider.configure(latency_ms=latency_ms)
    made = tickets(rows)
    write_jsonl(tmp_path / "in.jsonl", made)
    args = ["run", "classify", "--jobs-dir", JOBS, "--input", "in.jsonl", "--model", MODEL, "--api-base",
            provider.url, "--workers", "2", "--concurrency", "8"]  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "runner", *args], cwd=tmp_path, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, text=True, **popen)  # fmt: skip
    return made, args, tmp_path / "runs" / "classify" / "in", proc


@pytest.mark.timeout(600)  # two clusters and four workers start here; on a loaded 2-core machine that is slow
def test_a_killed_coordinator_leaves_no_ray_process_and_the_next_run_finishes(
    tmp_path: Path, provider: FakeProvider
) -> None:
    rows, args, run_dir, first = start_two_workers(tmp_path, provider, 200, 50, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: line_count(run_dir / "results.jsonl") >= 30, "30 results from the first run", timeout=240)
        recorded = orjson.loads((run_dir / PIDS).read_bytes())["pids"]
        # Named while the coordinator lives: once it is killed they may be gone before /proc is read.
        workers = [(p, t) for p, t in recorded if "ray::Worker" in _cmdline(p)]
        first.send_signal(signal.SIGKILL)
    finally:
        first.kill()
        first.wait()
    assert len(workers) == 2, [(p, _cmdline(p)) for p, _ in recorded]
    # The workers die with the coordinator (their owner), within seconds.
    wait_until(lambda: not any(alive(p, t) for p, t in workers), "the workers to die with the coordinator")

    again = runner(*args, cwd=tmp_path, timeout=400)
    assert again.returncode == 0, again.stderr
    assert "Ray processes a killed run left behind" in again.stderr  # the agents that outlive their driver
    results = read_jsonl(run_dir / "results.jsonl")
    assert sorted(r["custom_id"] for r in results) == sorted(r["id"] for r in rows)  # each row once
    assert not any(alive(p, t) for p, t in recorded)  # the first cluster's, by PID and start time
    assert ray_processes(run_dir) == [] and not (run_dir / PIDS).exists()  # and nothing of the second one


def test_status_shows_the_workers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from runner.cli import main

    run_dir = tmp_path / "runs" / "classify" / "in"
    run_dir.mkdir(parents=True)
    workers = {"alive": 2, "replaced": 1, "in_flight": {"w2": 16, "w3": 9}, "hosts": {"w2": "a:1", "w3": "b:2"}}
    manifest = {"status": "in_progress", "request_counts": {"total": 10, "completed": 1, "failed": 0},
                "workers": workers}  # fmt: skip
    (run_dir / "manifest.json").write_bytes(orjson.dumps(manifest))
    assert main(["status", "classify", "--runs-dir", str(tmp_path / "runs")]) == 0
    assert "workers   2 alive, 1 replaced; rows in flight: w2 16, w3 9\n" in capsys.readouterr().out
    assert main(["status", "classify", "--runs-dir", str(tmp_path / "runs"), "--json"]) == 0
    assert orjson.loads(capsys.readouterr().out)[0]["workers"] == workers


@pytest.mark.timeout(600)
def test_ctrl_c_finishes_the_rows_at_the_workers_and_stops_ray(tmp_path: Path, provider: FakeProvider) -> None:
    rows, _, run_dir, first = start_two_workers(tmp_path, provider, 300, 100, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: line_count(run_dir / "results.jsonl") >= 20, "20 results from the first run", timeout=240)
        recorded = orjson.loads((run_dir / PIDS).read_bytes())["pids"]
        first.send_signal(signal.SIGINT)
        _, stderr = first.communicate(timeout=120)
    finally:
        first.kill()
        first.wait()
    assert first.returncode == 130, stderr
    done = read_jsonl(run_dir / "results.jsonl")
    assert 20 <= len(done) < len(rows)
    assert len({r["custom_id"] for r in done}) == len(done)
    # Every request the provider answered became a record: the workers finished what they had sent.
    assert provider.stats().total == len(done)
    assert orjson.loads((run_dir / "manifest.json").read_bytes())["status"] == "interrupted"
    assert not any(alive(p, t) for p, t in recorded) and ray_processes(run_dir) == []
    assert not (run_dir / PIDS).exists()
    # Resuming it is the SIGKILL test's second half (the journal is the same; a second cluster costs ~10 s).


@pytest.mark.timeout(600)
def test_a_dead_cluster_ends_the_run_with_a_resumable_stop(tmp_path: Path, provider: FakeProvider) -> None:
    rows, _, run_dir, first = start_two_workers(tmp_path, provider, 300, 100, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: line_count(run_dir / "results.jsonl") >= 20, "20 results from the run", timeout=240)
        recorded = orjson.loads((run_dir / PIDS).read_bytes())["pids"]
        [agent] = [p for p, _ in recorded if "RuntimeEnvAgent" in _cmdline(p)]
        os.kill(agent, signal.SIGKILL)  # the raylet dies with it (as under the OOM killer), and the workers
        _, stderr = first.communicate(timeout=60)  # never a hang: seconds, on a loaded machine
    finally:
        first.kill()
        first.wait()
    assert first.returncode == 1, stderr
    assert "the Ray cluster is gone" in stderr and "run the same command again to resume" in stderr, stderr
    done = read_jsonl(run_dir / "results.jsonl")
    assert 20 <= len(done) < len(rows) and len({r["custom_id"] for r in done}) == len(done)  # each row once
    assert ray_processes(run_dir) == [] and not (run_dir / PIDS).exists()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.timeout(600)
def test_ray_address_joins_a_cluster_started_with_ray_start_and_leaves_it_running(
    tmp_path: Path, provider: FakeProvider
) -> None:
    """The README's multi-machine recipe on one machine: ``ray start --head``, then ``--ray-address``."""
    import tempfile

    temp = tempfile.mkdtemp(prefix="rt-")  # Ray's socket paths must stay short
    port = _free_port()
    # The key is in ray start's environment, as the README says. So is a token of this cluster's own:
    # ~/.ray/auth_token is shared with every other Ray test here, and two that start at once on a
    # fresh machine could each write one.
    token = secrets.token_hex(32)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    ray = str(Path(sys.executable).with_name("ray"))
    start = [ray, "start", "--head", f"--port={port}", "--num-cpus=2", f"--temp-dir={temp}",
             "--include-dashboard=false", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]  # fmt: skip
    started = subprocess.run(start, env=env, capture_output=True, text=True, timeout=180)
    try:
        assert started.returncode == 0, started.stderr[-2000:]
        rows = tickets(40)
        write_jsonl(tmp_path / "in.jsonl", rows)
        args = ["run", "classify", "--jobs-dir", JOBS, "--input", "in.jsonl", "--model", MODEL, "--api-base",
                provider.url, "--ray-address", f"127.0.0.1:{port}", "--workers", "2"]  # fmt: skip
        # `ray start` turned token authentication on; ray.init never sends the token to an address it is given.
        refused = runner(*args, cwd=tmp_path, env={k: v for k, v in env.items() if k != "RAY_AUTH_MODE"}, timeout=300)
        assert refused.returncode == 2 and "set RAY_AUTH_MODE=token with the token" in refused.stderr, refused.stderr
        done = runner(*args, cwd=tmp_path, env=env, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        run_dir = tmp_path / "runs" / "classify" / "in"
        results = read_jsonl(run_dir / "results.jsonl")
        assert sorted(r["custom_id"] for r in results) == sorted(r["id"] for r in rows)
        assert {r["meta"]["worker"] for r in results} <= {"w1", "w2"} and provider.stats().total == 40
        assert orjson.loads((run_dir / "manifest.json").read_bytes())["workers"]["alive"] == 0
        assert not (run_dir / PIDS).exists()  # a joined cluster is not runner's to record or reap
        assert processes_naming(temp), "the cluster should still be running: it is the user's"
    finally:
        for pid in processes_naming(temp):  # by PID, never `ray stop` (it stops every cluster here)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)
