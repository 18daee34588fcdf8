"""``--batch-api``'s options, and a chunk of rows not yet submitted."""

from __future__ import annotations

from dataclasses import dataclass, field

from runner.rows import Row

__all__ = ["BatchOptions", "Pending"]


@dataclass(frozen=True)
class BatchOptions:
    """``--batch-api`` and its flags."""

    wait: bool = True  # --no-wait: submit, collect what is finished, exit
    deadline_s: float | None = None  # --batch-deadline, from the run's first submission
    poll_s: float = 60.0  # the longest pause between polls (they start at 1 s and back off)
    batch_size: int | None = None  # rows per batch at most (default: the provider's limit)
    window: str = "24h"
    submit_attempts: int = 5  # failed submissions in a row (other than enqueued-token refusals) before giving up
    # False: a run started without --batch-api over a run directory whose rows wait in batches of an earlier
    # --batch-api start. Those rows wait for their batches; every other row goes online, and nothing is submitted.
    submit: bool = True
    drain_polls: int = 3  # looks a cancelled batch gets to say what it finished, before the next invocation's

    @property
    def rescue_margin(self) -> float:
        """How long before the deadline the online rescue starts: a tenth of it, at most 30 minutes."""
        return min(0.1 * (self.deadline_s or 0.0), 1800.0)

    def rescue_at(self, started_at: float) -> float | None:
        """When the online rescue starts, for a run whose first batch went out at ``started_at`` (None: never)."""
        return None if self.deadline_s is None else started_at + self.deadline_s - self.rescue_margin


@dataclass
class Pending:
    """Rows of one model and endpoint not submitted yet, as batch file lines."""

    rows: list[Row] = field(default_factory=list)
    lines: list[bytes] = field(default_factory=list)
    size: int = 0
    worst: float = 0.0
