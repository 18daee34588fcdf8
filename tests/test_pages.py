"""The live view's list, run and job pages over HTTP: paging, filters and search, a job's history, 404s,
and the manifest's workers / batches / lanes reaching the page through ``runner status --json``'s object.

The runs folder is written by hand (tests.support.runs_folder); the pages in a browser: tests/test_pages_browser.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from runner.cli import main
from runner.serve.app import create_app
from runner.serve.history import RunQuery, job_history, list_runs
from tests.support.files import ROOT
from tests.support.live import LiveServer
from tests.support.runs_folder import START, batch_run, nightly_runs, ray_run

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 nights of classify, 5 of summarize, a Ray run and a Batch API run (both stopped halfway)."""
    runs_dir = tmp_path_factory.mktemp("pages") / "runs"
    nightly_runs(runs_dir, "classify", 12)
    nightly_runs(runs_dir, "summarize", 5, first=START + 3600)
    ray_run(runs_dir / "classify" / "ray-night", started=START + 20 * 86400)
    batch_run(runs_dir / "summarize" / "batch-night", started=START + 21 * 86400)
    return runs_dir


@pytest.fixture(scope="module")
def server(runs: Path) -> Iterator[LiveServer]:
    with LiveServer(create_app(runs, ROOT / "jobs", interval=0.05)) as live:
        yield live


def test_a_page_of_the_list_newest_first_with_the_counts_for_the_pager(runs: Path) -> None:
    first = list_runs(runs, RunQuery(per_page=5))
    assert (first["matched"], first["total"], first["jobs"]) == (19, 19, ["classify", "summarize"])
    names = [f"{r['job']}/{r['run_id']}" for r in first["runs"]]
    assert names[:2] == ["summarize/batch-night", "classify/ray-night"]  # most recently updated first
    every = [r["run_id"] for r in list_runs(runs, RunQuery(per_page=500))["runs"]]
    pages = [r["run_id"] for n in (1, 2, 3, 4) for r in list_runs(runs, RunQuery(page=n, per_page=5))["runs"]]
    assert pages == every and len(every) == 19


def test_filters_by_job_state_and_run_id(runs: Path) -> None:
    assert {r["job"] for r in list_runs(runs, RunQuery(job="summarize"))["runs"]} == {"summarize"}
    with_errors = list_runs(runs, RunQuery(state="completed with errors"))
    assert with_errors["matched"] == 3 and {r["state"] for r in with_errors["runs"]} == {"completed with errors"}
    assert all(r["failed"] for r in with_errors["runs"])
    stopped = list_runs(runs, RunQuery(state="stopped", per_page=1))
    assert stopped["matched"] == 2 and len(stopped["runs"]) == 1
    found = list_runs(runs, RunQuery(search="NIGHT"))  # case does not matter
    assert sorted(r["run_id"] for r in found["runs"]) == ["batch-night", "ray-night"]
    assert list_runs(runs, RunQuery(job="classify", search="09-2"))["matched"] == 9  # 2026-09-21 .. 09-29
    with pytest.raises(ValueError, match="state must be one of"):
        RunQuery(state="done")


def test_a_jobs_history_is_every_run_oldest_first(runs: Path) -> None:
    history = job_history(runs, "summarize")
    assert [r["run_id"] for r in history] == [*(f"2026-09-{d}" for d in range(21, 26)), "batch-night"]
    assert history[0]["elapsed_s"] == 600.0 and history[0]["last_errors"] == []


def test_the_manifests_sections_are_in_runner_status_json(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """What the run page shows of workers, batches and lanes is what `runner status --json` prints."""
    assert main(["status", "summarize", "--run-id", "batch-night", "--runs-dir", str(runs), "--json"]) == 0
    batch = json.loads(capsys.readouterr().out)
    assert batch["batch_api"]["submitted"] == 3 and len(batch["batch_api"]["open"]) == 2
    assert batch["batch_api"]["by_provider"]["anthropic"] == {
        "batches": 1,
        "rows": 200,
        "by_status": {"in_progress": 1},
    }
    assert batch["by_lane"]["batch"]["requests"] == 496 and batch["lanes"] == {"batch": 0.0052, "online": 0.00009}
    assert main(["status", "classify", "--run-id", "ray-night", "--runs-dir", str(runs), "--json"]) == 0
    ray = json.loads(capsys.readouterr().out)
    assert ray["workers"]["in_flight"] == {"w1": 8, "w2": 7, "w4": 8} and ray["batch_api"] is None


def test_the_routes(server: LiveServer) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as client:
        page = client.get("/api/list", params={"job": "classify", "per_page": 4, "page": 2})
        assert page.status_code == 200
        body = page.json()
        assert (body["page"], body["per_page"], body["matched"], len(body["runs"])) == (2, 4, 13, 4)
        for bad in ({"state": "done"}, {"per_page": 0}, {"per_page": 501}, {"page": 0}, {"q": "x" * 129}):
            assert client.get("/api/list", params=bad).status_code == 422, bad
        history = client.get("/api/jobs/classify/runs").json()
        assert [r["run_id"] for r in history][-1] == "ray-night" and len(history) == 13
        for path in ("/runs/classify/ray-night", "/runs/summarize/batch-night", "/jobs/classify"):
            reply = client.get(path)
            assert reply.status_code == 200 and "text/html" in reply.headers["content-type"], path
        for path in ("/runs/classify/nope", "/runs/%2E%2E/classify", "/jobs/nope", "/jobs/%2E%2E",
                     "/api/jobs/nope/runs", "/static/nope.js"):  # fmt: skip
            assert client.get(path).status_code == 404, path
