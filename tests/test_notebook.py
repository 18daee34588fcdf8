"""examples/notebook.ipynb, executed headlessly in a real Jupyter kernel against the fake provider (real HTTP)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

from tests.doubles.provider import FakeProvider
from tests.support.files import ROOT, read_jsonl

NOTEBOOK = ROOT / "examples" / "notebook.ipynb"
WIDGET = "application/vnd.jupyter.widget-view+json"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]  # a kernel of its own, which imports litellm


def outputs(cell: Any) -> tuple[str, str, list[dict[str, Any]]]:
    """A code cell's printed text, its result's text/plain, and its display_data outputs."""
    printed = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream" and o.name == "stdout")
    results = [o.data.get("text/plain", "") for o in cell.outputs if o.output_type == "execute_result"]
    shown = [o.data for o in cell.outputs if o.output_type == "display_data"]
    return printed, "".join(results), shown


def test_the_example_notebook_runs_a_job_with_a_notebook_bar_and_shows_its_records(
    tmp_path: Path, provider: FakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNNER_EXAMPLE_API_BASE", provider.url)  # the kernel inherits this process's environment
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")  # jupyter_core's paths without its migration warning
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(notebook, timeout=60, kernel_name="python3", resources={"metadata": {"path": tmp_path}})
    client.execute()

    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    errors = [o for cell in code for o in cell.outputs if o.output_type == "error"]
    assert not errors, errors
    assert outputs(code[0])[1] == repr(provider.url)  # the server the test gave, not one of its own

    printed, _, shown = outputs(code[2])  # the `await runner.arun(...)` cell
    assert printed.startswith("completed {'total': 8, 'completed': 8, 'failed': 0}")
    assert any(WIDGET in data for data in shown), shown  # tqdm.auto chose the notebook bar (a widget), not text
    stderr = "".join(o.get("text", "") for o in code[2].outputs if o.output_type == "stream" and o.name == "stderr")
    assert "row/s" not in stderr  # and no text bar besides

    assert outputs(code[3])[1] == repr(["bug", "feature", "billing", "other"] * 2)  # input order
    header, *lines = outputs(code[4])[1].splitlines()  # the DataFrame, as text
    assert header.split() == ["custom_id", "status", "result", "total_tokens"]
    table = [line.split()[1:4] for line in lines]
    assert table == [[f"t-{i}", "ok", ["bug", "feature", "billing", "other"][i % 4]] for i in range(8)]

    run_dir = tmp_path / "runs" / "notebook" / "notebook"  # relative to the kernel's working directory
    results = read_jsonl(run_dir / "results.jsonl")
    assert sorted(r["custom_id"] for r in results) == [f"t-{i}" for i in range(8)]
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "completed"
    assert provider.stats().total == 8
