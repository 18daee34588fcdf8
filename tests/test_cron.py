"""The nightly use: `make nightly` as cron runs it (env -i, no TTY, stdin from /dev/null), overlapping
fires, a night killed halfway and finished by the next fire, the run's own log, and no secrets in it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import orjson
import pytest

from tests.conftest import ROOT, SECRET, read_jsonl, write_jsonl
from tests.fake_provider import FakeProvider
from tests.helpers import MODEL, tickets

NIGHTS = ("2026-11-24", "2026-11-25")
ROWS = 40

pytestmark = pytest.mark.skipif(shutil.which("make", path="/usr/bin:/bin") is None, reason="needs /usr/bin/make")


def fire(tmp_path: Path, provider: FakeProvider, log: Path) -> subprocess.Popen[bytes]:
    """One cron fire: the crontab's command line, in cron's bare environment, output appended to a file."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    args = f"--runs-dir {tmp_path / 'runs'} --api-base {provider.url} --concurrency 2 --progress-interval 1"
    command = f"cd {ROOT} && make nightly JOB=classify NIGHTLY_DIR={tmp_path / 'in'} MODEL={MODEL} ARGS='{args}'"
    with log.open("ab") as out:
        return subprocess.Popen(
            ["/bin/sh", "-c", command],
            env={"PATH": "/usr/bin:/bin", "HOME": str(home), "SHELL": "/bin/sh", "LOGNAME": "root"},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, as cron gives each job
        )


def results(tmp_path: Path, night: str) -> list[dict]:
    return read_jsonl(tmp_path / "runs" / "classify" / night / "results.jsonl")


def wait_for(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_cron_fires_resume_a_killed_night_and_skip_a_running_one(tmp_path: Path, provider: FakeProvider) -> None:
    provider.configure(latency_ms=400)  # 40 rows at concurrency 2: about 8 s a night
    (tmp_path / "in").mkdir()
    for night in NIGHTS:
        write_jsonl(tmp_path / "in" / f"{night}.jsonl", tickets(ROWS, prefix=night))
    log = tmp_path / "cron.log"

    first = fire(tmp_path, provider, log)
    wait_for(lambda: len(results(tmp_path, NIGHTS[0])) >= 5)
    # An overlapping fire: the first night is locked (75, named PID), so it goes on to the second night.
    second = fire(tmp_path, provider, log)
    wait_for(lambda: len(results(tmp_path, NIGHTS[1])) >= 3)
    holder = int((tmp_path / "runs" / "classify" / NIGHTS[0] / "lock").read_text())
    os.killpg(first.pid, signal.SIGKILL)  # the machine "dies" halfway through the first night
    os.killpg(second.pid, signal.SIGKILL)
    first.wait(10)
    second.wait(10)
    assert 0 < len(results(tmp_path, NIGHTS[0])) < ROWS
    assert 0 < len(results(tmp_path, NIGHTS[1])) < ROWS
    assert f"runs/classify/{NIGHTS[0]} is in use by PID {holder}" in log.read_text()

    # The next fire finishes both nights, each row exactly once.
    third = fire(tmp_path, provider, log)
    assert third.wait(120) == 0, log.read_text()[-3000:]
    for night in NIGHTS:
        ids = [r["custom_id"] for r in results(tmp_path, night)]
        assert sorted(ids) == [t["id"] for t in tickets(ROWS, prefix=night)]
        run_dir = tmp_path / "runs" / "classify" / night
        manifest = orjson.loads((run_dir / "manifest.json").read_bytes())
        assert manifest["status"] == "completed"
        run_log = (run_dir / "run.log").read_text()
        assert "resuming:" in run_log and "progress:" in run_log and "exit 0" in run_log
        assert SECRET not in run_log

    # And a fire after that has nothing left to do: both runs say so at once.
    before = len(log.read_text())
    calls = provider.stats().total
    assert fire(tmp_path, provider, log).wait(60) == 0
    assert log.read_text()[before:].count("0 to go (complete)") == 2
    assert provider.stats().total == calls
