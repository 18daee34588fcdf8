"""The Ray cluster a run uses: started for the run (or joined), shut down after, and its leftovers reaped.

``ray.init()`` without an address starts a local cluster as children of this process (gcs_server,
raylet, a log monitor, the dashboard agent, the runtime-env agent, and the workers). A clean
``ray.shutdown()`` stops them all; a coordinator killed with SIGKILL takes the core (gcs_server,
raylet) and the actors with it within seconds, but measured here the dashboard and runtime-env agents
survive, re-parented to PID 1. So every process Ray started for the run is written to the run
directory (``ray.pids``: PID and the start time psutil gives it, which proves it is still the same
process), and the next run of that directory kills those that are still alive, by PID, never by
name. Ray's temporary files (sockets, session logs) go to a fresh directory under the system's
temporary directory, removed with the cluster; Ray itself still keeps ``/tmp/ray`` and ``~/.ray``.

Joining an existing cluster (``--ray-address`` or ``RAY_ADDRESS``) starts no processes here: the
cluster is the user's, and only the run's actors are stopped.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import psutil

from runner.errors import UsageError

__all__ = ["PIDS", "alive", "cause", "cluster", "gone", "reap", "record_pids", "temp_prefix"]

logger = logging.getLogger(__name__)
PIDS = "ray.pids"  # in the run directory: {"temp_dir": ..., "pids": [[pid, start time], ...]}
SAME_START = 0.5  # seconds: two start times of one PID this close are one process


def _start_time(pid: int) -> float | None:
    """The process's start time (psutil's ``create_time``, seconds since the epoch); None: no such process,
    or a zombie (dead, waiting to be reaped by its parent: nothing left to stop)."""
    try:
        process = psutil.Process(pid)
        if process.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
            return None
        return process.create_time()
    except psutil.Error:  # gone, or not ours to look at
        return None


def _children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (children, then theirs), as psutil walks the process table."""
    try:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def temp_prefix(run_dir: Path) -> str:
    """The name Ray's temporary directory for ``run_dir`` starts with (every Ray process's command line has it)."""
    return "runner-ray-" + hashlib.blake2b(str(run_dir.resolve()).encode(), digest_size=4).hexdigest() + "-"


def alive(pid: int, started: float) -> bool:
    """Whether ``pid`` is still the process that started at ``started`` and has not exited.

    psutil's start time is the wall clock's, so a step of the clock (NTP) moves it: half a second is let
    through. A process that took the PID over started after the recorded one ended, and Ray's processes
    live for seconds."""
    now = _start_time(pid)
    return now is not None and abs(now - started) < SAME_START


def record_pids(run_dir: Path, temp_dir: str | None) -> list[tuple[int, float]]:
    """Write every process this one started (Ray's, here) with its start time to ``run_dir/ray.pids``."""
    pids = [(pid, t) for pid in _children(os.getpid()) if (t := _start_time(pid)) is not None]
    data = orjson.dumps({"temp_dir": temp_dir, "pids": pids})
    tmp = run_dir / f".{PIDS}.tmp"
    tmp.write_bytes(data)
    os.replace(tmp, run_dir / PIDS)
    return pids


def _kill(pids: list[tuple[int, float]], wait: float = 5.0) -> list[int]:
    """SIGKILL each process that is still the one recorded; the PIDs that were killed."""
    killed = []
    for pid, started in pids:
        if alive(pid, started):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
    deadline = time.monotonic() + wait
    for pid, started in pids:  # SIGKILL can't be refused; this only waits for the kernel to finish it
        while alive(pid, started) and time.monotonic() < deadline:
            time.sleep(0.01)
    return killed


def reap(run_dir: Path, left_behind: bool = True) -> list[int]:
    """Kill what a run of ``run_dir`` left of its Ray cluster (by recorded PID); the PIDs killed.

    ``left_behind``: a killed run's leftovers, said in a warning (after a clean shutdown, quietly)."""
    path = run_dir / PIDS
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return []
    killed = _kill([(int(p), float(t)) for p, t in data.get("pids") or []])
    if killed and left_behind:
        logger.warning("stopped %d Ray processes a killed run left behind (PIDs %s)", len(killed), killed)
    if temp := data.get("temp_dir"):
        shutil.rmtree(temp, ignore_errors=True)
    path.unlink(missing_ok=True)
    return killed


def cause(exc: BaseException) -> str:
    """Ray's error text, first line only (it appends pages of context)."""
    return str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__


def gone() -> str | None:
    """Why the cluster can no longer run a worker (no node with a CPU is alive, or its head does not
    answer); None while it can. Blocking: its head is asked over the network."""
    import ray

    try:
        nodes = ray.nodes()
    except Exception as exc:  # the head (GCS) itself is gone
        return f"its head does not answer: {cause(exc)}"
    if not any(node.get("Alive") and node.get("Resources", {}).get("CPU") for node in nodes):
        return "no node of it is alive"
    return None


def _not_joined(address: str, exc: BaseException) -> str:
    """What to do when ray.init could not join the cluster at ``address``.

    `ray start` turns Ray's token authentication on, and ray.init never does for an address it is given
    (the token would go to whatever listens there); a missing token shows only as a failed connection."""
    first = cause(exc)
    fix = "check that `ray start --head` runs there"
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
        fix += (", and set RAY_AUTH_MODE=token with the token of the machine that ran it in ~/.ray/auth_token "
                "(or RAY_AUTH_TOKEN): `ray start` turns token authentication on")  # fmt: skip
    return f"could not join the Ray cluster at {address} ({first}): {fix}"


@contextlib.contextmanager
def cluster(run_dir: Path, cpus: int, address: str | None = None) -> Iterator[Callable[[], object] | None]:
    """Ray, for one run: a local cluster of ``cpus`` CPUs started here, or the cluster at ``address``.

    Yields what records the cluster's processes again (after workers start), None for a joined cluster."""
    import ray

    reap(run_dir)
    temp_dir = None
    started = time.monotonic()
    quiet: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if address:
        try:
            ray.init(address=address, **quiet)
        except (ConnectionError, ray.exceptions.AuthenticationError) as exc:
            raise UsageError(_not_joined(address, exc)) from None
    else:
        # A short path: Ray's socket paths must stay under 108 bytes, which a deep run directory would pass.
        temp_dir = tempfile.mkdtemp(prefix=temp_prefix(run_dir))
        run_dir.mkdir(parents=True, exist_ok=True)
        # Loopback only: a cluster started for one run has no business listening on the network.
        ray.init(num_cpus=cpus, _temp_dir=temp_dir, _node_ip_address="127.0.0.1", **quiet)
        record_pids(run_dir, temp_dir)
    logger.info("Ray cluster %s in %.1fs", f"at {address}" if address else "started", time.monotonic() - started)
    try:
        yield None if address else functools.partial(record_pids, run_dir, temp_dir)
    finally:
        try:
            ray.shutdown()
        finally:
            if not address:
                reap(run_dir, left_behind=False)  # whatever shutdown did not stop (it should have stopped everything)
