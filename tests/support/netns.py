"""Two hosts on one machine: two network namespaces joined by a veth pair, for the multi-machine tests.

    ┌ namespace <name>a ─────────────┐          ┌ namespace <name>b ─────────────┐
    │ lo, <name>a0  10.213.0.1/24    │── veth ──│ lo, <name>b0  10.213.0.2/24    │
    └────────────────────────────────┘          └────────────────────────────────┘

Each namespace sees only itself and the other one: no route leads out, so nothing reaches the
internet, and two pairs made at once (pytest-xdist) never see each other. ``Host.argv`` runs a
command in a namespace (``ip netns exec``); ``Host.enter`` moves the calling thread into it, so a
server thread of the test process can listen there. Namespaces share the file system and the PID
space: ``ray stop`` inside one would stop every Ray on the machine, so a namespace's processes are
found by the namespace they are in (as ``ip netns pids`` does) and killed by PID.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["Host", "Unavailable", "two_hosts"]

CLONE_NEWNET = 0x40000000  # <sched.h>: setns(2)'s namespace type
SUBNET = "10.213.0"


class Unavailable(Exception):
    """This machine can't make network namespaces (not Linux, not root, no ``ip``, or ``ip netns add`` refused)."""


@dataclass(frozen=True)
class Host:
    """One network namespace with its own address: a machine, as far as the network can tell."""

    netns: str
    address: str

    def argv(self, command: list[str]) -> list[str]:
        """``command`` run inside this namespace."""
        return ["ip", "netns", "exec", self.netns, *command]

    def enter(self) -> None:
        """Move the calling thread (only it) into this namespace: the sockets it makes from now on are there."""
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/run/netns/{self.netns}", os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                errno = ctypes.get_errno()
                raise OSError(errno, f"setns into {self.netns}: {os.strerror(errno)}")
        finally:
            os.close(fd)

    def pids(self) -> list[int]:
        """The live processes inside this namespace (never this one, whose threads may have entered it)."""
        try:
            ns = os.stat(f"/run/netns/{self.netns}")
        except FileNotFoundError:
            return []
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                st = os.stat(f"/proc/{entry}/ns/net")  # a zombie has none: it is gone already
            except OSError:
                continue
            if (st.st_dev, st.st_ino) == (ns.st_dev, ns.st_ino):
                found.append(int(entry))
        return found

    def kill_all(self, timeout: float = 30.0) -> list[int]:
        """SIGKILL every process in this namespace (the machine is gone), until none is left; their PIDs."""
        killed: list[int] = []
        deadline = time.monotonic() + timeout
        while pids := self.pids():
            if time.monotonic() > deadline:
                raise RuntimeError(f"processes in {self.netns} survived SIGKILL: {pids}")
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    if pid not in killed:  # one that has not finished dying is found again
                        killed.append(pid)
            time.sleep(0.01)  # SIGKILL can't be refused: this only waits for the kernel to finish them
        return killed


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


def _check(proc: subprocess.CompletedProcess[str]) -> None:
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(proc.args)}: {proc.stderr.strip()}")


@contextlib.contextmanager
def two_hosts() -> Iterator[tuple[Host, Host]]:
    """Two namespaces, 10.213.0.1 and 10.213.0.2, joined by a veth pair; on leaving, every process
    in them is killed and both are deleted (the veth pair goes with them). Raises Unavailable first
    if this machine can't make them."""
    if sys.platform != "linux":
        raise Unavailable("network namespaces are Linux's")
    if os.geteuid() != 0:
        raise Unavailable("`ip netns add` needs root")
    if shutil.which("ip") is None:
        raise Unavailable("no `ip` command (iproute2)")
    name = "rn" + secrets.token_hex(3)  # interface names stay under Linux's 15 characters
    hosts = (Host(f"{name}a", f"{SUBNET}.1"), Host(f"{name}b", f"{SUBNET}.2"))
    made: list[Host] = []
    try:
        for host in hosts:
            added = _ip("netns", "add", host.netns)
            if added.returncode != 0:
                raise Unavailable(f"`ip netns add` failed: {added.stderr.strip()}")
            made.append(host)
        a, b = hosts
        _check(_ip("link", "add", f"{a.netns}0", "type", "veth", "peer", "name", f"{b.netns}0"))
        for host in hosts:
            dev = f"{host.netns}0"
            _check(_ip("link", "set", dev, "netns", host.netns))
            _check(_ip("-n", host.netns, "addr", "add", f"{host.address}/24", "dev", dev))
            _check(_ip("-n", host.netns, "link", "set", dev, "up"))
            _check(_ip("-n", host.netns, "link", "set", "lo", "up"))  # Ray's own processes talk over loopback too
        yield a, b
    finally:
        try:
            for host in made:
                host.kill_all()
        finally:
            for host in made:
                _ip("netns", "del", host.netns)
            _ip("link", "del", f"{name}a0")  # only if it never made it into a namespace
