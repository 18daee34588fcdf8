"""MkDocs hook: the site's home page is README.md, the project's front page, with its links into docs/ made
relative to the site; one text, so the two can't say different things."""

from __future__ import annotations

from pathlib import Path
from typing import Any

MARKER = "<!-- readme -->"
README = Path(__file__).resolve().parents[2] / "README.md"


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    """Put README.md, its ``](docs/`` links rewritten, where docs/index.md has the marker."""
    if MARKER not in markdown:
        return markdown
    text = README.read_text(encoding="utf-8").replace("](docs/", "](")
    return markdown.replace(MARKER, text)
