"""The page in a real browser: headless Chromium (Debian's ``chromium``) driven by Playwright.

``runner serve`` and ``runner run`` are real processes here, as a user would start them: a run's page
follows a run that another process writes, from before its first row to 100%; the list links to it;
a try-out's answer grows as it streams. Skipped, with the reason, where Chromium is missing or cannot start.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.doubles.provider import FakeProvider
from tests.support.cli import free_port, start_runner, wait_until_up
from tests.support.files import ROOT, write_jsonl
from tests.support.live import LiveServer, pacing_proxy
from tests.support.run import tickets

pytestmark = pytest.mark.timeout(60)

MODEL = "openai/gpt-4o-mini"
ANSWER = "The upload button crashes the app for large files, and the customer asks for a fix or a refund."


def test_the_page_follows_a_run_to_100_percent_and_streams_a_tryout(
    tmp_path: Path, provider: FakeProvider, browser: Any
) -> None:
    from playwright.sync_api import expect  # importable: the browser fixture skips otherwise

    runs_dir, port = tmp_path / "runs", free_port()
    rows = tickets(40, "b")
    for row in rows:
        row["text"] += " [[latency:200]]"  # 40 rows, 4 at a time: about 2 s of writing
    rows[5]["text"] += " [[fail:400]]"
    write_jsonl(tmp_path / "in.jsonl", rows)
    url = f"http://127.0.0.1:{port}/"
    with LiveServer(pacing_proxy(provider.url)) as proxy:
        serve_log = tmp_path / "serve.log"
        server = start_runner("serve", "--port", str(port), "--runs-dir", str(runs_dir), "--jobs-dir",
                              str(ROOT / "jobs"), "--api-base", f"{proxy.url}/v1", log=serve_log)  # fmt: skip
        writer: subprocess.Popen[bytes] | None = None
        try:
            wait_until_up(url, server, serve_log)
            (runs_dir / "classify" / "live").mkdir(parents=True)  # the page follows it from before the run starts
            page = browser.new_page()
            page.goto(url + "runs/classify/live")  # the run's own page
            page.wait_for_function("document.getElementById('run-status').textContent.startsWith('stopped')")
            writer = start_runner("run", "classify", "--model", MODEL, "--api-base", provider.url, "--input",
                             str(tmp_path / "in.jsonl"), "--runs-dir", str(runs_dir), "--run-id", "live",
                             "--concurrency", "4", "-q", log=tmp_path / "run.log")  # fmt: skip
            seen = _watch_progress(page)
            assert writer.wait(10) == 1, (tmp_path / "run.log").read_text()  # one row failed on purpose
            assert any(0 < value < 100 for value in seen), f"the bar should move while the run goes on: {seen}"
            assert seen[-1] == 100 and page.text_content("#run-status") == "completed (finished)"
            assert "100% · 40 / 40 · 1 failed" in (page.text_content("#progress-text") or "")
            assert page.locator("#results li").count() == 40
            assert page.locator("#results li.bad").count() == 1
            page.goto(url + "#run=classify%2Flive")  # an old link to the run goes to its page
            page.wait_for_url(url + "runs/classify/live")
            page.goto(url)
            row = page.locator("tr[data-run='classify/live']")
            expect(row).to_contain_text("completed", timeout=5000)
            expect(row).to_contain_text("100%")
            row.locator("a", has_text="live").click()  # linked from the list
            page.wait_for_url(url + "runs/classify/live")
            page.goto(url)

            lengths = _try_out(page)
            assert page.text_content("#try-answer") == ANSWER
            assert len(set(lengths)) >= 5 and 0 < min(lengths) < len(ANSWER), f"no growing answer: {lengths}"
            final = page.text_content("#try-final") or ""
            assert f'result "{ANSWER}"' in final and "stop" in final, final
            assert page.text_content("#try-error") == ""
            page.close()
        finally:
            if writer is not None and writer.poll() is None:
                writer.kill()
                writer.wait()
            server.send_signal(signal.SIGINT)  # Ctrl-C: a clean stop
            code = server.wait(10)
        log = serve_log.read_text()
        assert code == 0 and "stopped serving" in log, log
        assert "Traceback" not in log and "ERROR" not in log, log


def _watch_progress(page: Any, seconds: float = 25.0) -> list[float]:
    """The progress bar's values until the page says the run has finished."""
    seen: list[float] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        # The status first, then the bar: the bar read is then at least as new as the status (read the
        # other way round, the page could finish in between and the last value seen be a stale one).
        finished = "(finished)" in (page.text_content("#run-status") or "")
        value = page.eval_on_selector("#progress-bar", "bar => bar.dataset.percent ? +bar.dataset.percent : null")
        if value is not None and (not seen or seen[-1] != value):
            seen.append(value)
        if finished:
            return seen
        time.sleep(0.05)
    raise AssertionError(f"the run did not finish in the page; progress seen: {seen}")


def _try_out(page: Any) -> list[int]:
    """Run a try-out from the page; every length the answer had on the way, as the page showed them."""
    page.select_option("#try-job", "summarize")
    page.fill("#try-model", MODEL)
    record = {"id": "try-1", "text": f"[[answer:{ANSWER}]] [[chunk:4]] a long story about uploads"}
    page.fill("#try-record", json.dumps(record))
    page.evaluate("""() => {
        window.lengths = [];
        const answer = document.getElementById("try-answer");
        // Every assignment the page made, from the mutation records (a loaded machine delivers several
        // events in one read, and one observer callback then sees only the last length).
        new MutationObserver(records => records.forEach(r => r.addedNodes.forEach(
            n => window.lengths.push(n.textContent.length))))
            .observe(answer, {childList: true, subtree: true});
    }""")
    page.click("#try-go")
    page.wait_for_function("document.getElementById('try-final').textContent !== ''", timeout=15000)
    return [n for n in page.evaluate("window.lengths") if n > 0]
