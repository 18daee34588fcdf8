"""``python -m runner`` as a user starts it: run to the end, or started in the background until it answers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.support.files import ROOT

JOBS = str(ROOT / "jobs")

# `runner ...` that also says, on its last stderr line, whether runner's OTLP exporter or prometheus_client was
# imported. (litellm itself may import the opentelemetry API on some error paths when it is installed: not ours.)
CHECK = ("import sys; from runner.cli import main\n"
         "try: code = main(sys.argv[1:])\nexcept SystemExit as e: code = e.code\n"
         "ours = ('opentelemetry.exporter', 'prometheus_client')\n"
         "print(sorted(m.split('.')[0] for m in sys.modules if m.startswith(ours))[:1], file=sys.stderr)\n"
         "sys.exit(code)")  # fmt: skip


def runner(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    """``python -m runner ARGS`` in ``cwd``, with no terminal attached."""
    return subprocess.run(
        [sys.executable, "-m", "runner", *args],
        cwd=cwd,
        env=env or dict(os.environ),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    """The one line a failed command wrote to stderr (fails if it wrote more)."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def start_runner(*args: str, log: Path) -> subprocess.Popen[bytes]:
    """``python -m runner ARGS`` in the background, from the repository's root, its output to ``log``."""
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "runner", *args], stdout=out, stderr=subprocess.STDOUT,
                                cwd=ROOT, env=os.environ.copy())  # fmt: skip


def start_quietly(args: list[str], cwd: Path) -> subprocess.Popen[bytes]:
    """``python -m runner ARGS`` in the background in ``cwd``, no terminal, its output dropped (to kill it)."""
    quiet = subprocess.DEVNULL
    return subprocess.Popen([sys.executable, "-m", "runner", *args], cwd=cwd, stdin=quiet, stdout=quiet, stderr=quiet)


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_up(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    """Until ``url`` answers 200 (``timeout`` only fails a broken test: start-up imports litellm)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"runner serve exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError(f"runner serve did not answer at {url}:\n{log.read_text()}")
