"""The live view's pages beyond the list: a run's own page, a job's nightly history, and the list's data.

    GET /runs/{job}/{run_id}     a run's page (web/run.html): bar, charts, records, workers, batches, lanes
    GET /jobs/{job}              a job's page (web/job.html): one line per run, charts of cost, duration, failures
    GET /api/list                a page of the runs, newest first: ?job=&state=&q=&page=&per_page=
                                 (runner.serve.history.list_runs)
    GET /api/jobs/{job}/runs     every run of a job, oldest first (runner.serve.history.job_history)

The pages are static files; their scripts read ``/api/...`` and the run's event streams, which carry
``runner status --json``'s objects (``runner.serve.status.read_run``): one source for every view.
A job is named by its folder under the runs directory, matched against the names found there and
never joined into a path; an unknown one is a 404.
"""

# No `from __future__ import annotations`: FastAPI must see the dependency named in Depends(...) below.
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query
from fastapi.responses import HTMLResponse

from runner.serve.history import MOST_PER_PAGE, PER_PAGE, RunQuery, job_history, list_runs
from runner.serve.status import find_runs

__all__ = ["add_page_routes"]


def _page(name: str) -> str:
    return (resources.files("runner.serve") / "web" / name).read_text(encoding="utf-8")


def add_page_routes(app: FastAPI, runs_dir: Path, run_dir: Callable[[str, str], Path]) -> None:
    """Add the run page, the job page and their JSON to ``app``; ``run_dir`` is the app's run lookup (404s)."""
    run_page, job_page = _page("run.html"), _page("job.html")

    def known_job(job: str) -> str:
        """The job, if it has runs here (a sync dependency: FastAPI runs it in a worker thread)."""
        if not runs_dir.is_dir() or not find_runs(runs_dir, job):
            raise HTTPException(404, "no runs of that job")
        return job

    @app.get("/runs/{job}/{run_id}", response_class=HTMLResponse)
    def run(path: Annotated[Path, Depends(run_dir)]) -> str:
        return run_page

    @app.get("/jobs/{job}", response_class=HTMLResponse)
    def job(name: Annotated[str, Depends(known_job)]) -> str:
        return job_page

    @app.get("/api/list")
    def runs_page(
        job: str | None = None,
        state: str | None = None,
        q: Annotated[str | None, Query(max_length=128)] = None,
        page: Annotated[int, Query(ge=1)] = 1,
        per_page: Annotated[int, Query(ge=1, le=MOST_PER_PAGE)] = PER_PAGE,
    ) -> dict[str, Any]:
        try:
            query = RunQuery(job=job or None, state=state or None, search=q or None, page=page, per_page=per_page)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from exc
        return list_runs(runs_dir, query)

    @app.get("/api/jobs/{job}/runs")
    def history(name: Annotated[str, Depends(known_job)]) -> list[dict[str, Any]]:
        return job_history(runs_dir, name)
