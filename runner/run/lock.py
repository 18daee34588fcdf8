"""One run directory, one process: an flock that the kernel drops when its holder dies."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

from runner.errors import LockedError

__all__ = ["RunLock", "holder", "in_use"]

LOCK = "lock"


class RunLock:
    """Held for the whole run; a second holder gets LockedError naming the PID that has it."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise in_use(self.path.parent, holder) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None


def in_use(run_dir: Path, pid: int | str) -> LockedError:
    """The refusal for a run directory that process ``pid`` holds."""
    return LockedError(
        f"run {run_dir} is in use by PID {pid}; wait for it to finish or stop it (kill {pid}), "
        "then run this command again"
    )


def holder(run_dir: Path) -> int | None:
    """The PID of the process holding the run's lock now, else None; never takes the lock itself.

    Trying the flock to find out would make a run starting at that instant exit 75, and the PID in
    the lock file only says who took it last (a nightly fire takes each finished night's lock for a
    moment and moves on, alive). So the kernel's table of locks, /proc/locks, is asked; where there
    is none (not Linux), a live process named in the file is the best guess.
    """
    path = run_dir / LOCK
    try:
        st = path.stat()
        table = Path("/proc/locks").read_text()
    except FileNotFoundError:
        return None if not path.exists() else _named_and_alive(path)
    except OSError:
        return None
    key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in table.splitlines():
        # "1: FLOCK  ADVISORY  WRITE 6167 fe:00:2828158 0 EOF" (a waiter's line has "->" second)
        parts = line.split()
        if len(parts) >= 6 and parts[1] == "FLOCK" and parts[5] == key:
            return int(parts[4])
    return None


def _named_and_alive(path: Path) -> int | None:
    try:
        pid = int(path.read_text().strip() or 0)
    except (OSError, ValueError):
        return None
    if pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid  # alive, someone else's
    return pid
