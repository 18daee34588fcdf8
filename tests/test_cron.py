"""The nightly use: `make nightly` as cron runs it (env -i, no TTY, stdin from /dev/null), overlapping
fires, a night killed halfway and finished by the next fire, the run's own log, and no secrets in it.

Nothing here depends on how long a night takes: the fake provider holds every request past row
KILLED_AT of each night, so each fire is killed with exactly KILLED_AT rows journaled and the rest
in flight or not yet read.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import orjson
import pytest

from tests.doubles.provider import FakeProvider
from tests.support.files import ROOT, SECRET, line_count, read_jsonl, text_of, wait_until, write_jsonl
from tests.support.run import MODEL, tickets

NIGHTS = ("2026-11-24", "2026-11-25")
ROWS = 40
KILLED_AT = 10  # rows of each night journaled when the machine "dies"
CONCURRENCY = 2

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("make", path="/usr/bin:/bin") is None, reason="needs /usr/bin/make"),
    pytest.mark.timeout(180),
]


def fire(tmp_path: Path, provider: FakeProvider, log: Path) -> subprocess.Popen[bytes]:
    """One cron fire: the crontab's command line, in cron's bare environment, output appended to a file."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    args = f"--runs-dir {tmp_path / 'runs'} --api-base {provider.url} --concurrency {CONCURRENCY} --progress-interval 1"
    # -o: never (re)install the venv from a test; it is shared, and `install` would run pip.
    make = f"make -o .venv/bin/.installed nightly JOB=classify NIGHTLY_DIR={tmp_path / 'in'} MODEL={MODEL}"
    command = f"cd {ROOT} && {make} ARGS='{args}'"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "SHELL": "/bin/sh", "LOGNAME": "root"}
    if "PYTHONPATH" in os.environ:  # the checkout under test, not whichever one the shared venv points at
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    with log.open("ab") as out:
        return subprocess.Popen(
            ["/bin/sh", "-c", command],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, as cron gives each job
        )


def results(tmp_path: Path, night: str) -> list[dict]:
    return read_jsonl(tmp_path / "runs" / "classify" / night / "results.jsonl")


def journaled(tmp_path: Path, night: str) -> int:
    return line_count(tmp_path / "runs" / "classify" / night / "results.jsonl")


def test_cron_fires_resume_a_killed_night_and_skip_a_running_one(tmp_path: Path, provider: FakeProvider) -> None:
    (tmp_path / "in").mkdir()
    for night in NIGHTS:
        write_jsonl(tmp_path / "in" / f"{night}.jsonl", tickets(ROWS, prefix=night))
    held = {t["text"] for night in NIGHTS for t in tickets(ROWS, prefix=night)[KILLED_AT:]}
    provider.hold(lambda text: text in held)
    log = tmp_path / "cron.log"

    first = fire(tmp_path, provider, log)
    try:
        # The first night's first rows are journaled, and the next ones are in flight, parked.
        provider.wait_for(lambda s: s.held == CONCURRENCY)
        wait_until(lambda: journaled(tmp_path, NIGHTS[0]) >= KILLED_AT, f"{KILLED_AT} rows of {NIGHTS[0]}")
        # An overlapping fire: the first night is locked (75, named PID), so it goes on to the second night.
        second = fire(tmp_path, provider, log)
        try:
            provider.wait_for(lambda s: s.held == 2 * CONCURRENCY)
            wait_until(lambda: journaled(tmp_path, NIGHTS[1]) >= KILLED_AT, f"{KILLED_AT} rows of {NIGHTS[1]}")
            holder = int((tmp_path / "runs" / "classify" / NIGHTS[0] / "lock").read_text())
        finally:
            os.killpg(second.pid, signal.SIGKILL)
            second.wait(30)
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the machine "dies" halfway through both nights
        first.wait(30)
    provider.release()
    for night in NIGHTS:
        assert len(results(tmp_path, night)) == KILLED_AT
    assert f"runs/classify/{NIGHTS[0]} is in use by PID {holder}" in text_of(log)

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
