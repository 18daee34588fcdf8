"""The runs as the live view lists them: a page of the list (filtered by job, state and run id), and
one job's runs across nights.

Both read what ``runner status --json`` reads, through the same functions (``find_runs``,
``read_run``): a run's figures are never computed a second time here. Filters on names (job, run
id) are applied to the folder names before any manifest is opened, so a page of 50 runs out of
thousands reads 50 manifests; a filter on the state has to read each candidate's status.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.serve.status import find_runs, read_run

__all__ = ["STATES", "RunQuery", "job_history", "list_runs"]

# The words read_run's ``state`` takes, in the order the page offers them as a filter.
STATES = ("running", "starting", "stopped", "completed", "completed with errors", "interrupted", "failed")
PER_PAGE = 50
MOST_PER_PAGE = 500


@dataclass(frozen=True)
class RunQuery:
    """Which runs to show: a job's, in one state, whose id contains ``search``; ``page`` counts from 1."""

    job: str | None = None
    state: str | None = None
    search: str | None = None
    page: int = 1
    per_page: int = PER_PAGE

    def __post_init__(self) -> None:
        if self.state is not None and self.state not in STATES:
            raise ValueError(f"state must be one of {', '.join(STATES)}, not {self.state!r}")
        if self.page < 1:
            raise ValueError(f"page counts from 1, not {self.page}")
        if not 1 <= self.per_page <= MOST_PER_PAGE:
            raise ValueError(f"per_page must be 1 to {MOST_PER_PAGE}, not {self.per_page}")


def list_runs(runs_dir: Path, query: RunQuery) -> dict[str, Any]:
    """One page of the runs ``query`` names, most recently updated first, as ``runner status`` orders them.

    ``matched`` counts the runs that pass the filters, ``total`` every run; ``jobs`` names every job
    with runs (for the page's job filter).
    """
    found = find_runs(runs_dir) if runs_dir.is_dir() else []
    jobs = sorted({path.parent.name for path in found})
    wanted = [
        path
        for path in found
        if (query.job is None or path.parent.name == query.job)
        and (not query.search or query.search.lower() in path.name.lower())
    ]
    start = (query.page - 1) * query.per_page
    if query.state is None:
        runs = [read_run(path) for path in wanted[start : start + query.per_page]]
        matched = len(wanted)
    else:  # the state is the status of a live process too: read, never guessed from the folder
        every = [run for run in map(read_run, wanted) if run["state"] == query.state]
        runs, matched = every[start : start + query.per_page], len(every)
    return {"runs": runs, "matched": matched, "total": len(found), "page": query.page,
            "per_page": query.per_page, "jobs": jobs, "states": list(STATES)}  # fmt: skip


def job_history(runs_dir: Path, job: str) -> list[dict[str, Any]]:
    """Every run of ``job`` (``runner status --json``'s objects, without their last errors), oldest first
    by when each started: one line per night."""
    runs = [read_run(path, last_errors=0) for path in find_runs(runs_dir, job)] if runs_dir.is_dir() else []
    return sorted(runs, key=lambda run: (run["created_at"] or run["updated_at"] or "", run["run_id"]))
