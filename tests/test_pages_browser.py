"""The live view's pages in headless Chromium (as tests/test_browser.py), on a runs folder of 500 runs.

The folder (tests.support.runs_folder) holds nights of two jobs, a Ray run whose manifest has a ``workers``
section and a Batch API run whose manifest has a ``batches`` section, both held by a live lock as a
running ``runner run`` holds it. Pages are checked on their structure (the elements present), never
on pixels; every wait is on an element or a value, never on time. The list's load time is
bench/liveview.py's to record.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from runner.serve.app import create_app
from tests.support.browser import chromium as launch
from tests.support.files import ROOT
from tests.support.live import LiveServer
from tests.support.runs_folder import NIGHTS, five_hundred_runs

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    runs_dir = tmp_path_factory.mktemp("pages-browser") / "runs"
    locks = five_hundred_runs(runs_dir)
    try:
        with LiveServer(create_app(runs_dir, ROOT / "jobs", interval=0.05)) as live:
            yield live.url
    finally:
        for lock in locks:
            lock.close()


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """One headless Chromium for the module, or a skip that says why there is none."""
    with launch() as browser:
        yield browser


@pytest.fixture
def page(chromium: Any) -> Iterator[Any]:
    page = chromium.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    page.close()
    assert not errors, f"the page's scripts failed: {errors}"


def test_the_run_page_of_a_ray_run_shows_its_workers(site: str, page: Any) -> None:
    from playwright.sync_api import expect

    page.goto(f"{site}/runs/classify/ray-night")
    expect(page.locator("#run-status")).to_contain_text("running (PID ")
    expect(page.locator("#workers tbody tr")).to_have_count(3)
    expect(page.locator("#workers-summary")).to_have_text("3 alive, 1 replaced, 23 rows in flight")
    expect(page.locator("#workers tbody tr").last).to_contain_text("w4node-b:51208")
    bar = page.locator("#progress-bar")
    for segment in ("ok", "failed", "flight"):  # journaled rows, and the rows at workers
        expect(bar.locator(f".seg.{segment}")).to_have_count(1)
    expect(bar).to_have_attribute("aria-valuenow", "45.5")
    expect(page.locator("#progress-legend")).to_contain_text("at workers 23")
    expect(page.locator("#lanes tbody tr[data-lane='online']")).to_have_count(1)
    expect(page.locator("#batches-box")).to_be_hidden()
    expect(page.locator("#charts .uplot")).to_have_count(5)
    expect(page.locator("#charts")).to_have_attribute("data-points", "12")
    expect(page.locator("#results li")).to_have_count(6)  # the live records: the journal's last lines
    expect(page.locator("nav a").nth(1)).to_have_attribute("href", "/jobs/classify")


def test_the_run_page_of_a_batch_api_run_shows_its_batches_in_the_bar(site: str, page: Any) -> None:
    from playwright.sync_api import expect

    page.goto(f"{site}/runs/summarize/batch-night")
    expect(page.locator("#batches tbody tr")).to_have_count(2)
    expect(page.locator("#batches tbody tr").first).to_contain_text("batch_abc123")
    expect(page.locator("#batches-summary")).to_contain_text("3 submitted")
    expect(page.locator("#batches-summary")).to_contain_text("500 rows waiting")
    expect(page.locator("#batches-summary")).to_contain_text("by provider: anthropic 1 (200 rows), openai 2 (796 rows)")
    claude = page.locator("#batches tbody tr").last.locator("td")  # each open batch's provider and model
    expect(claude.nth(1)).to_have_text("anthropic")
    expect(claude.nth(2)).to_have_text("anthropic/claude-haiku-4-5")
    bar = page.locator("#progress-bar")
    for segment in ("ok", "failed", "answered", "waiting"):  # journaled, answered in a batch, waiting in one
        expect(bar.locator(f".seg.{segment}")).to_have_count(1)
    expect(bar.locator(".seg.flight")).to_have_count(0)
    legend = page.locator("#progress-legend")
    expect(legend).to_contain_text("answered in a batch 153")
    expect(legend).to_contain_text("waiting in a batch 347")
    expect(page.locator("#progress-text")).to_contain_text("500 in batches (153 answered, 347 waiting)")
    expect(page.locator("#lanes tbody tr")).to_have_count(2)
    expect(page.locator("#lanes tbody tr[data-lane='batch']")).to_contain_text("$0.0052")
    online = page.locator("#lanes tbody tr[data-lane='online']")  # which models' rows went by each lane
    expect(online).to_contain_text("anthropic/claude-haiku-4-5 1, openai/gpt-4o-mini 3")
    expect(page.locator("#workers-box")).to_be_hidden()


def test_a_jobs_page_has_a_line_and_a_bar_per_night(site: str, page: Any) -> None:
    from playwright.sync_api import expect

    page.goto(f"{site}/jobs/summarize")
    runs = NIGHTS["summarize"] + 1
    expect(page.locator("#history tbody tr")).to_have_count(runs)
    expect(page.locator("#history tbody tr").first).to_have_attribute("data-run", "batch-night")  # newest first
    expect(page.locator("#job-charts .uplot")).to_have_count(3)  # cost, duration, failed rows
    expect(page.locator("#job-charts")).to_have_attribute("data-points", str(runs))
    night = page.locator("#history tbody tr").nth(1)
    run_id = night.get_attribute("data-run")
    night.locator("a").click()
    page.wait_for_url(f"{site}/runs/summarize/{run_id}")
    expect(page.locator("#run-status")).to_have_text("completed (finished)")


def test_the_list_of_500_runs_is_paged_filtered_and_searched(site: str, page: Any) -> None:
    from playwright.sync_api import expect

    page.goto(f"{site}/")
    rows = page.locator("#runs tbody tr")
    expect(rows).to_have_count(50)
    expect(page.locator("#page-info")).to_have_text("1–50 of 500 · page 1 of 10")
    expect(rows.first).to_have_attribute("data-run", "summarize/batch-night")  # newest first
    expect(rows.nth(1).locator(".bar .seg.flight")).to_have_count(1)  # the Ray run's rows at workers
    expect(page.locator("#newer")).to_be_disabled()
    page.click("#older")
    expect(page.locator("#page-info")).to_have_text("51–100 of 500 · page 2 of 10")
    page.select_option("#filter-job", "summarize")
    expect(page.locator("#page-info")).to_have_text("1–50 of 199 (500 runs in all) · page 1 of 4")
    expect(page.locator("#runs tbody tr[data-run^='classify/']")).to_have_count(0)
    page.select_option("#filter-state", "completed with errors")
    expect(page.locator("#page-info")).to_have_text(re.compile(r"^1–(\d+) of \1 \(500 runs in all\) · page 1 of 1$"))
    states = page.locator("#runs tbody td:nth-child(3)").all_text_contents()
    assert states and set(states) == {"completed with errors"}, states
    page.select_option("#filter-state", "")
    page.select_option("#filter-job", "")
    page.fill("#search", "ray")
    expect(rows).to_have_count(1)
    assert page.url.endswith("/?q=ray")  # the filters are in the URL: a filtered list can be linked
    rows.first.locator("a", has_text="ray-night").click()
    page.wait_for_url(f"{site}/runs/classify/ray-night")
