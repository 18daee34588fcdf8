"""A headless Chromium (Debian's ``chromium``) driven by Playwright, or a skip that says why there is none."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]  # fmt: skip


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """A launched headless Chromium (Playwright's Browser), closed after; skips the test where there is none."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium package to run the browser test")
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError as exc:
        pytest.skip(f"playwright is not installed ({exc}): pip install playwright")
    with sync_playwright() as playwright:
        try:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        except Error as exc:
            pytest.skip(f"playwright cannot launch {CHROMIUM}: {exc}")
        yield browser
        browser.close()
