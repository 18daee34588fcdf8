"""What the benchmarks share: the fake provider in its own process, clients in child processes
with their CPU and memory sampled, inputs, and "median (min–max)" figures.

CPU is read from /proc/<pid>/stat (user + system, every thread) every few milliseconds while a
client runs, so the CPU a client spent between the server seeing its first request and sending
its last answer can be told apart from its start-up (litellm's import) and its shut-down.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
MODEL = "openai/gpt-4o-mini"
TICK = os.sysconf("SC_CLK_TCK")
DATE = time.strftime("%Y-%m-%d")
NO_REUSE = ("--no-cache", "--no-dedup")  # benchmarks of the online path send every row


@dataclass
class Window:
    """When the server saw a client's first request and sent its last answer (time.monotonic)."""

    first: float
    last: float
    answered: int

    @property
    def seconds(self) -> float:
        return self.last - self.first


class Server:
    """``python -m bench.server`` (the project's fake provider, timed) in its own process."""

    def __init__(self, **config: Any) -> None:
        flags = [f"--{k.replace('_', '-')}={v}" for k, v in config.items()]
        self.proc = subprocess.Popen(
            [PY, "-m", "bench.server", *flags], cwd=ROOT, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True
        )
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()  # the api_base, e.g. http://127.0.0.1:40123/v1
        if not self.url.startswith("http"):
            raise SystemExit("bench.server did not start")
        self.root = self.url.removesuffix("/v1")

    def _call(self, path: str, data: bytes | None = None) -> Any:
        with urllib.request.urlopen(urllib.request.Request(self.root + path, data=data), timeout=10) as reply:
            return json.loads(reply.read())

    def reset(self) -> None:
        """Zero the counters and the timing window."""
        self._call("/_reset", b"")
        self._call("/_window/reset", b"")

    def window(self) -> Window:
        w = self._call("/_window")
        if w["first"] is None:
            raise SystemExit("the server saw no request")
        return Window(w["first"], w["last"], w["answered"])

    def requests(self) -> list[tuple[float, float, int | None]]:
        """Every chat request since the last reset: (arrived, answered, client port)."""
        return [(r[0], r[1], r[2]) for r in self._call("/_window?requests")["requests"]]

    def stats(self) -> dict[str, Any]:
        return dict(self._call("/_stats"))

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait()


@contextlib.contextmanager
def server(**config: Any) -> Iterator[Server]:
    """A running bench server, stopped on leaving the block."""
    s = Server(**config)
    try:
        yield s
    finally:
        s.close()


@dataclass
class Usage:
    """One child process: wall seconds, CPU samples, CPU and peak RSS in all."""

    wall: float
    cpu: float
    max_rss_mib: float
    samples: list[tuple[float, float]] = field(default_factory=list)  # (monotonic, CPU seconds so far)

    def cpu_at(self, t: float) -> float:
        """CPU seconds the child had used at time ``t`` (linear between samples)."""
        samples = self.samples
        if not samples or t <= samples[0][0]:
            return samples[0][1] if samples else 0.0
        for (t0, c0), (t1, c1) in itertools.pairwise(samples):
            if t0 <= t <= t1:
                return c0 + (c1 - c0) * (t - t0) / max(t1 - t0, 1e-9)
        return self.cpu

    def cpu_between(self, window: Window) -> float:
        return self.cpu_at(window.last) - self.cpu_at(window.first)


def _cpu_of(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def child(command: Sequence[str], cwd: Path = ROOT, every: float = 0.005, **popen: Any) -> Usage:
    """Run ``command`` to the end, sampling its CPU; fail loudly if it exits non-zero."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)  # bench.* from any cwd
    env = {**os.environ, "PYTHONPATH": path, **popen.pop("env", {})}
    with tempfile.TemporaryFile() as err:
        started = time.monotonic()
        proc = subprocess.Popen(
            list(command), cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, **popen
        )
        samples: list[tuple[float, float]] = []
        while True:
            pid_done, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid_done:
                break
            cpu = _cpu_of(proc.pid)
            if cpu is not None:
                samples.append((time.monotonic(), cpu))
            time.sleep(every)
        wall = time.monotonic() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            raise SystemExit(f"{' '.join(command[:6])} ... exited {proc.returncode}: {err.read().decode()[-3000:]}")
    cpu_total = usage.ru_utime + usage.ru_stime
    samples.append((time.monotonic(), cpu_total))
    return Usage(wall, cpu_total, usage.ru_maxrss / 1024, samples)


def runner_command(input_path: Path, url: str, concurrency: int, *extra: str, model: str = MODEL) -> list[str]:
    """``runner run classify`` against the bench server, quiet; every row sent (the same rows run again
    under each repeat's run id, and the sample tickets repeat, so the cache and dedup would answer most)."""
    return [PY, "-m", "runner", "run", "classify", "--jobs-dir", str(ROOT / "jobs"), "--input", str(input_path),
            "--model", model, "--api-base", url, "--concurrency", str(concurrency), "-q", *NO_REUSE,
            *extra]  # fmt: skip


def bare_command(input_path: Path, url: str, concurrency: int, *extra: str, model: str = MODEL) -> list[str]:
    """The bare asyncio.Semaphore + litellm.acompletion loop (bench/bare.py) over the same rows."""
    return [PY, "-m", "bench.bare", "--input", str(input_path), "--api-base", url,
            "--concurrency", str(concurrency), "--model", model, *extra]  # fmt: skip


def floor_command(input_path: Path, url: str, concurrency: int, *extra: str) -> list[str]:
    """Raw aiohttp (bench/floor.py): the least any client in Python spends on the same requests."""
    return [PY, "-m", "bench.floor", "--input", str(input_path), "--api-base", url, "--concurrency", str(concurrency),
            *extra]  # fmt: skip


def tickets(n: int, seed: int = 0, latencies_ms: Sequence[float] | None = None) -> list[dict[str, str]]:
    """``n`` classify tickets (the sample tickets, cycled, each id unique); with ``latencies_ms``,
    each carries a [[latency:MS]] directive so the server answers it after exactly that long."""
    sample = [orjson.loads(line) for line in (ROOT / "data" / "classify.jsonl").read_bytes().splitlines() if line]
    random.Random(seed).shuffle(sample)
    rows = []
    for i in range(n):
        text = sample[i % len(sample)]["text"]
        if latencies_ms is not None:
            text += f" [[latency:{latencies_ms[i]:.1f}]]"
        rows.append({"id": f"b-{i:07d}", "text": text})
    return rows


def write_rows(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    with path.open("wb") as f:
        for row in rows:
            f.write(orjson.dumps(row) + b"\n")
    return path


def spread(values: Sequence[float], fmt: str = "{:.2f}") -> str:
    """'median (min–max)'."""
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}–{fmt.format(max(values))})"


def machine() -> str:
    """The machine note every result carries."""
    load = os.getloadavg()
    return (
        f"{DATE}, {os.cpu_count()} cores (shared with other engineers' test runs), python {sys.version.split()[0]}, "
        f"load average {load[0]:.2f}"
    )
