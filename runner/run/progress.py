"""Showing how far a run is: a tqdm bar on a terminal, a plain log line now and then otherwise."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Protocol

from tqdm import tqdm

from runner.run.manifest import Totals

__all__ = ["BarProgress", "LogProgress", "Progress", "choose_progress", "describe"]

logger = logging.getLogger(__name__)


class Progress(Protocol):
    """Told about every batch of finished rows; shows it somehow."""

    def start(self, done: int, total: int | None, extra: Callable[[], str] = str) -> None: ...
    def set_total(self, total: int) -> None: ...
    def update(self, totals: Totals) -> None: ...
    def close(self, totals: Totals) -> None: ...


def describe(totals: Totals, extra: str = "") -> str:
    """Failures, tokens, cost, 429s and whatever ``extra`` says, in a few words."""
    usage = totals.usage()
    cost = f"${totals.cost_usd:.4f}" if totals.models else "$0"
    said = f"{totals.failed} failed, {usage['total_tokens']:,} tokens, {cost}, {totals.rate_limited} 429s"
    return f"{said}, {extra}" if extra else said


class BarProgress:
    """A tqdm bar: done/total, rate, failures, tokens and cost."""

    def __init__(
        self, file: object = None, clock: Callable[[], float] = time.monotonic, notebook: bool = False
    ) -> None:
        self._notebook = notebook  # a notebook's own bar (tqdm.auto), not text on stderr
        self._file = file if file is not None else sys.stderr
        self._bar: tqdm | None = None
        self._clock = clock
        self._last_postfix = 0.0
        self._extra: Callable[[], str] = str

    def start(self, done: int, total: int | None, extra: Callable[[], str] = str) -> None:
        self._extra = extra
        if self._notebook:
            from tqdm.auto import tqdm as auto

            self._bar = auto(total=total, initial=done, unit="row", smoothing=0.1)
            return
        self._bar = tqdm(total=total, initial=done, unit="row", file=self._file, dynamic_ncols=True, smoothing=0.1)

    def set_total(self, total: int) -> None:
        if self._bar is not None:
            self._bar.total = total
            self._bar.refresh()

    def update(self, totals: Totals) -> None:
        if self._bar is None:
            return
        now = self._clock()
        if now - self._last_postfix >= 0.5:  # formatting the postfix every row would cost more than the row
            self._bar.set_postfix_str(describe(totals, self._extra()), refresh=False)
            self._last_postfix = now
        self._bar.update(totals.done - self._bar.n)

    def close(self, totals: Totals) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(describe(totals, self._extra()), refresh=False)
            self._bar.update(totals.done - self._bar.n)
            self._bar.close()


class LogProgress:
    """One INFO line every ``interval`` seconds, for cron and redirected output."""

    def __init__(self, interval: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._total: int | None = None
        self._start = 0.0
        self._first = 0
        self._last = 0.0
        self._extra: Callable[[], str] = str
        self._logged = -1

    def start(self, done: int, total: int | None, extra: Callable[[], str] = str) -> None:
        self._extra = extra
        self._start = self._last = self._clock()
        self._first = done
        self._total = total

    def set_total(self, total: int) -> None:
        self._total = total

    def update(self, totals: Totals) -> None:
        now = self._clock()
        if now - self._last >= self.interval:
            self._last = now
            self._log(totals, now)

    def close(self, totals: Totals) -> None:
        if totals.done != self._logged:  # the last line may already say it all
            self._log(totals, self._clock())

    def _log(self, totals: Totals, now: float) -> None:
        self._logged = totals.done
        rate = (totals.done - self._first) / max(now - self._start, 1e-9)
        if self._total:
            left = max(self._total - totals.done, 0)
            eta = f", eta {left / rate:.0f}s" if rate > 0 and left else ""
            where = f"{totals.done}/{self._total} ({100 * totals.done / self._total:.0f}%)"
        else:
            where, eta = f"{totals.done}", ""
        logger.info("progress: %s done, %s, %.1f rows/s%s", where, describe(totals, self._extra()), rate, eta)


def choose_progress(interval: float) -> Progress:
    """A bar when a person is watching stderr, log lines otherwise."""
    return BarProgress() if sys.stderr.isatty() else LogProgress(interval)
