"""MkDocs hook: the notebooks in examples/ are files of the site too (examples/NAME.ipynb), so the pages can link
to the very file the tests execute, not a copy that could drift."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def on_files(files: Files, config: Any, **_: Any) -> Files:
    """Add every ``examples/*.ipynb`` at ``examples/`` in the site."""
    for notebook in sorted(EXAMPLES.glob("*.ipynb")):
        files.append(File.generated(config, f"examples/{notebook.name}", abs_src_path=str(notebook)))
    return files
