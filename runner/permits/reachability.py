"""Whether a model's endpoint answers at all, so a dead one stops the run instead of burning the input.

A row whose attempts all ended in connection errors or time-outs is not written off while the
endpoint is silent: if nothing at all came back from that model since the row started, it tries
another round, and once ``rows`` rows in a row gave up so and nothing has been heard for ``after``
seconds, the run stops like a fatal error (exit 3) with those rows unrecorded, so the next run
sends them. A row that gave up while other rows were being answered is an ordinary error record.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum

__all__ = ["Reachability", "Verdict"]


class Verdict(StrEnum):
    """What to do with a row that gave up on connection errors or time-outs."""

    RECORD = "record"  # the endpoint answered others meanwhile: this row's own failure
    RETRY = "retry"  # the endpoint is silent, not for long enough yet: another round
    STOP = "stop"  # silent for ``after`` seconds and ``rows`` rows: stop the run


class Reachability:
    """The last time a model answered, and the rows that gave up since."""

    def __init__(self, clock: Callable[[], float], after: float = 60.0, rows: int = 5) -> None:
        self.after, self.rows = after, rows
        self._clock = clock
        self.last_heard = clock()
        self.silent_rows = 0

    def heard(self) -> None:
        """An answer came (any status the provider chose to send counts as hearing from it)."""
        self.last_heard = self._clock()
        self.silent_rows = 0

    def silence(self) -> float:
        """Seconds since the model last answered."""
        return self._clock() - self.last_heard

    def gave_up(self, heard_before: float) -> Verdict:
        """A row ran out of attempts without an answer; ``heard_before`` is ``last_heard`` as of its start."""
        if self.last_heard > heard_before:
            return Verdict.RECORD
        self.silent_rows += 1
        if self.silent_rows >= self.rows and self.silence() >= self.after:
            return Verdict.STOP
        return Verdict.RETRY
