"""The run's timeline: one JSON line every few seconds in ``metrics.jsonl``, for charts, Prometheus and
``runner status``.

The manifest says where a run stands; the timeline says how it got there. The coordinator hands
every batch of journaled records to ``Timeline.observe`` (cheap: a few counters and a fixed-size
latency sketch per series) and ``Timeline.every`` appends a sample each ``interval`` seconds and
once at the end. A sample line::

    {"kind": "sample", "t": "…Z", "ts": 1764490000.1, "interval_s": 5.0,
     "done": 120, "completed": 118, "failed": 2, "rows_per_s": 9.8,
     "in_flight": 8, "concurrency": 8, "concurrency_ceiling": 16,
     "rate_limited": 3, "retries": 4, "latency_s": {"p50": 0.41, "p95": 1.2, "p99": 2.3},
     "input_tokens": …, "output_tokens": …, "cost_usd": …,
     "latency_hist": [...], "latency_sum": …,
     "by": {"model:openai/gpt-4o-mini": {…the same fields, for that series…}}}

``done``/``completed``/``failed``, tokens and cost are the run's running totals (the journal's, so
they carry over restarts); ``rows_per_s``, ``rate_limited``, ``retries`` and the percentiles are for
the interval; ``in_flight`` and ``concurrency`` are sampled at that instant from the limits;
``latency_hist`` counts rows per ``LATENCY_LE`` bucket (the last one is +Inf) since the run began
(carried over restarts too), for Prometheus histograms. ``by`` is keyed by series name: ``model:M``
today, and ``worker:W`` / ``deployment:D`` for records whose meta names one.

Each invocation starts with a ``{"kind": "start", "restart": true|false, …}`` line (a restart marker
when the file already had lines) and ends with a last sample and ``{"kind": "end", "status": …}``.
A line is one ``os.write`` to a file opened with O_APPEND, so a killed run leaves whole lines; a torn
last line (power loss mid-write) is cut off when the run resumes, as the journal's is.

Bounded: at most one sample per ``interval`` seconds (3600 / interval lines an hour), at most
``MAX_SERIES`` series per line (later ones are counted under ``model:(other)``), and memory is
fixed: a ``Sketch`` per series, never a list of latencies.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from runner.run.manifest import Totals, iso_now
from runner.run.sketch import Sketch

if TYPE_CHECKING:
    from runner.permits.limits import Limits
    from runner.records import Record

__all__ = ["LATENCY_LE", "MAX_SERIES", "METRICS", "Sketch", "Timeline", "last_samples", "series_of"]

METRICS = "metrics.jsonl"
LATENCY_LE = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)  # seconds; a last bucket is +Inf
MAX_SERIES = 32
OTHER = "model:(other)"

logger = logging.getLogger(__name__)
_TAIL = 256 * 1024


@dataclass
class _Series:
    """What one series (a model, a worker, a deployment) did: this interval, and its running histogram."""

    rows: int = 0
    failed: int = 0
    retries: int = 0
    sketch: Sketch = field(default_factory=Sketch)
    hist: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_LE) + 1))
    hist_sum: float = 0.0
    rate_limited_seen: int = 0  # the limits' running 429 count when last sampled

    def add(self, ok: bool, latency: float | None, retries: int) -> None:
        self.rows += 1
        self.failed += not ok
        self.retries += retries
        if latency is not None:
            self.sketch.add(latency)
            self.hist[bisect.bisect_left(LATENCY_LE, latency)] += 1
            self.hist_sum += latency

    def restore(self, line: dict[str, Any]) -> None:
        hist = line.get("latency_hist")
        if isinstance(hist, list) and len(hist) == len(self.hist) and all(isinstance(n, int) for n in hist):
            self.hist = list(hist)
            self.hist_sum = float(line.get("latency_sum") or 0.0)

    def interval(self, seconds: float) -> dict[str, Any]:
        """This interval's figures, then a fresh interval."""
        said = {
            "rows": self.rows,
            "rows_per_s": round(self.rows / seconds, 3) if seconds > 0 else 0.0,
            "failed_in_interval": self.failed,
            "retries": self.retries,
            "latency_s": self.sketch.percentiles(),
            "latency_hist": list(self.hist),
            "latency_sum": round(self.hist_sum, 3),
        }
        self.rows = self.failed = self.retries = 0
        self.sketch.clear()
        return said


def series_of(record: Record) -> list[str]:
    """The series a record counts in: its model, and its worker and deployment where meta names them."""
    meta = record.line.get("meta") or {}
    names = [f"model:{meta.get('model') or '(none)'}"]
    for key in ("worker", "deployment"):
        if meta.get(key) is not None:
            names.append(f"{key}:{meta[key]}")
    return names


class Timeline:
    """Appends the run's samples to ``metrics.jsonl``; see the module docstring for the line format."""

    def __init__(
        self,
        run_dir: Path,
        interval: float,
        totals: Callable[[], Totals],
        limits: Callable[[], Limits],
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.path = run_dir / METRICS
        self.interval = interval
        self._totals, self._limits, self._clock, self._wall = totals, limits, clock, wall
        self._fd: int | None = None
        self._all = _Series()
        self._by: dict[str, _Series] = {}
        self._last = 0.0

    @property
    def on(self) -> bool:
        return self.interval > 0

    def open(self, status: str = "in_progress") -> None:
        """Open for appending (a torn last line cut off), carry the histograms over, write the start line."""
        if not self.on:
            return
        restart, last = _prepare(self.path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        if last is not None:
            self._all.restore(last)
            for name, line in (last.get("by") or {}).items():
                if isinstance(line, dict) and len(self._by) < MAX_SERIES:
                    self._series(name).restore(line)
        self._last = self._clock()
        totals = self._totals()
        start = {"kind": "start", "t": iso_now(), "ts": round(self._wall(), 3), "restart": restart}
        self._write({**start, "pid": os.getpid(), "done": totals.done, "interval_s": self.interval, "status": status})

    def observe(self, records: Iterable[Record]) -> None:
        """Count journaled records (called by the coordinator's writer, on the event loop)."""
        if self._fd is None:
            return
        for record in records:
            meta = record.line.get("meta") or {}
            latency = meta.get("latency_s")
            latency = float(latency) if isinstance(latency, int | float) else None
            attempts = meta.get("attempts")
            retries = attempts - 1 if isinstance(attempts, int) and attempts > 1 else 0
            self._all.add(record.ok, latency, retries)
            for name in series_of(record):
                self._series(name).add(record.ok, latency, retries)

    async def every(self) -> None:
        """Sample every ``interval`` seconds until cancelled (a task of the coordinator's)."""
        if self._fd is None:
            return
        while True:
            await asyncio.sleep(max(0.0, self._last + self.interval - self._clock()))
            self.sample()

    def sample(self) -> None:
        """Append one sample line for the time since the last one."""
        if self._fd is None:
            return
        now = self._clock()
        seconds, self._last = now - self._last, now
        totals, limits = self._totals(), self._limits()
        usage = totals.usage()
        line: dict[str, Any] = {"kind": "sample", "t": iso_now(), "ts": round(self._wall(), 3),
                                "interval_s": round(seconds, 3), "done": totals.done,
                                "completed": totals.completed, "failed": totals.failed}  # fmt: skip
        whole = self._all.interval(seconds)
        del whole["rows"]
        line.update(whole)
        line.update(_flight(limits.models.values()))
        line["rate_limited"] = 0
        line.update(input_tokens=usage["input_tokens"], output_tokens=usage["output_tokens"],
                    cost_usd=round(totals.cost_usd, 8))  # fmt: skip
        for name in limits.models:
            self._series(f"model:{name}")
        by: dict[str, dict[str, Any]] = {}
        for name, series in self._by.items():
            said = series.interval(seconds)
            kind, _, key = name.partition(":")
            if kind == "model":
                model = limits.models.get(key)
                if model is not None:
                    said.update(_flight([model]))
                    said["rate_limited"] = model.stats.rate_limited - series.rate_limited_seen
                    series.rate_limited_seen = model.stats.rate_limited
                    line["rate_limited"] += said["rate_limited"]
                spent = totals.models.get(key)
                if spent is not None:
                    said.update(input_tokens=spent.input_tokens, output_tokens=spent.output_tokens,
                                cost_usd=round(spent.cost_usd, 8))  # fmt: skip
            by[name] = said
        line["by"] = by
        self._write(line)

    def close(self, status: str) -> None:
        """The last sample and the end line, synced to disk."""
        if self._fd is None:
            return
        self.sample()
        self._write({"kind": "end", "t": iso_now(), "ts": round(self._wall(), 3), "status": status})
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.fsync(fd)
            os.close(fd)

    def _series(self, name: str) -> _Series:
        series = self._by.get(name)
        if series is None:
            if len(self._by) >= MAX_SERIES - 1:  # the last place is for the rest
                name = OTHER
            series = self._by.setdefault(name, _Series())
        return series

    def _write(self, line: dict[str, Any]) -> None:
        """Append one line; a timeline that can't be written (disk full) stops, the run goes on."""
        if self._fd is None:
            return
        try:
            os.write(self._fd, orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE))
        except OSError as exc:
            logger.warning("can't write %s (%s): no more timeline samples for this run", self.path, exc)
            os.close(self._fd)
            self._fd = None


def _flight(models: Iterable[Any]) -> dict[str, int]:
    """Requests in flight, the adaptive concurrency limit and its ceiling, summed over ``models``."""
    found = {"in_flight": 0, "concurrency": 0, "concurrency_ceiling": 0}
    for model in models:
        found["in_flight"] += model.concurrency.in_flight
        found["concurrency"] += model.concurrency.limit
        found["concurrency_ceiling"] += model.concurrency.ceiling
    return found


def _prepare(path: Path) -> tuple[bool, dict[str, Any] | None]:
    """Cut a torn last line off ``path`` (we hold the run's lock): whether it has lines, and its last sample."""
    try:
        with path.open("r+b") as f:
            size = f.seek(0, os.SEEK_END)
            start = max(0, size - _TAIL)
            f.seek(start)
            data = f.read()
            end = data.rfind(b"\n") + 1
            if start + end < size:
                f.truncate(start + end)
    except FileNotFoundError:
        return False, None
    samples = _samples(data[:end].split(b"\n"))
    return start + end > 0, samples[-1] if samples else None


def _samples(lines: Iterable[bytes]) -> list[dict[str, Any]]:
    found = []
    for raw in lines:
        if b'"sample"' not in raw:
            continue
        try:
            line = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        if isinstance(line, dict) and line.get("kind") == "sample":
            found.append(line)
    return found


def last_samples(run_dir: Path, most: int = 60, tail_bytes: int = _TAIL) -> list[dict[str, Any]]:
    """The last ``most`` sample lines of a run's timeline, oldest first, from its last ``tail_bytes`` only."""
    try:
        with (run_dir / METRICS).open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            start = max(0, size - tail_bytes)
            f.seek(start)
            data = f.read()
    except OSError:
        return []
    lines = data.split(b"\n")
    if start > 0:
        lines = lines[1:]  # the window's first line is partial
    return _samples(lines)[-most:]
