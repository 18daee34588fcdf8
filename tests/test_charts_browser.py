"""The run's charts in a real browser (headless Chromium via Playwright, as in test_browser).

``runner serve --token`` and ``runner run`` are real processes: the page, opened with the token in
its link, draws a run's timeline as another process writes it and the chart's data grows; a second
run's restart marker is drawn. A screenshot is left in the test's tmp dir (its path is printed).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.doubles.provider import FakeProvider
from tests.support.cli import CHECK, free_port, start_runner, wait_until_up
from tests.support.files import ROOT, write_jsonl
from tests.support.run import tickets

pytestmark = pytest.mark.timeout(180)  # three processes that import litellm: slow on a busy machine

MODEL = "openai/gpt-4o-mini"
TOKEN = "browser-t0ken"


def test_the_charts_grow_while_a_run_goes_on_and_mark_restarts(
    tmp_path: Path,
    provider: FakeProvider,
    browser: Any,
) -> None:
    runs_dir, port = tmp_path / "runs", free_port()
    rows = tickets(40, "c")
    for row in rows:
        row["text"] += " [[latency:150]]"  # 40 rows, 4 at a time: about 1.5 s of writing
    rows[7]["text"] += " [[fail:429:retry_after=0.3:times=1]]"
    write_jsonl(tmp_path / "in.jsonl", rows)
    _restarted_run(runs_dir / "classify" / "old")
    url = f"http://127.0.0.1:{port}/"
    serve_log = tmp_path / "serve.log"
    server = start_runner("serve", "--port", str(port), "--runs-dir", str(runs_dir), "--jobs-dir", str(ROOT / "jobs"),
                          "--token", TOKEN, log=serve_log)  # fmt: skip
    writer: subprocess.Popen[bytes] | None = None
    try:
        wait_until_up(url + f"?token={TOKEN}", server, serve_log)
        assert httpx.get(url).status_code == 401  # --token on loopback: asked all the same
        (runs_dir / "classify" / "live").mkdir(parents=True)
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.goto(url + f"?token={TOKEN}")  # the link runner serve prints: the token becomes a cookie
        page.goto(url + "runs/classify/live")
        page.wait_for_function("document.getElementById('charts').dataset.points === '0'")
        writer = _run_checked("run", "classify", "--model", MODEL, "--api-base", provider.url, "--input",
                              str(tmp_path / "in.jsonl"), "--runs-dir", str(runs_dir), "--run-id", "live",
                              "--concurrency", "4", "--metrics-interval", "0.1", "-q",
                              log=tmp_path / "run.log")  # fmt: skip
        seen = _watch_points(page, writer, seconds=60)
        assert writer.wait(10) == 0, (tmp_path / "run.log").read_text()
        imported = (tmp_path / "run.log").read_text().strip().splitlines()[-1]
        assert imported == "[]", f"a plain run imports neither OpenTelemetry nor prometheus_client: {imported}"
        assert len(seen) >= 3 and seen == sorted(seen), f"the chart's data should grow during the run: {seen}"
        page.wait_for_function("document.getElementById('run-status').textContent.includes('(finished)')")
        samples = [s for s in map(orjson.loads, (runs_dir / "classify" / "live" / "metrics.jsonl").read_bytes()
                                  .splitlines()) if s["kind"] == "sample"]  # fmt: skip
        page.wait_for_function(f"document.getElementById('charts').dataset.points === '{len(samples)}'")
        assert page.locator("#charts .uplot").count() == 5
        shot = tmp_path / "charts.png"
        page.screenshot(path=str(shot), full_page=True)
        print(f"screenshot: {shot}")

        page.goto(url + "runs/classify/old")
        page.wait_for_function("document.getElementById('charts').dataset.restarts === '1'")
        page.wait_for_function("document.getElementById('charts').dataset.points === '4'")
        page.close()
    finally:
        if writer is not None and writer.poll() is None:
            writer.kill()
            writer.wait()
        server.send_signal(signal.SIGINT)
        code = server.wait(30)
    log = serve_log.read_text()
    assert code == 0 and "Traceback" not in log and "ERROR" not in log, log


def _run_checked(*args: str, log: Path) -> subprocess.Popen[bytes]:
    """``runner ARGS`` that says last, on stderr, whether it imported OpenTelemetry or prometheus_client."""
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-c", CHECK, *args], stdout=out, stderr=subprocess.STDOUT,
                                cwd=ROOT, env=os.environ.copy())  # fmt: skip


def _watch_points(page: Any, writer: subprocess.Popen[bytes], seconds: float = 30.0) -> list[int]:
    """The chart's point counts while the writer runs, each new value once."""
    seen: list[int] = []
    deadline = time.monotonic() + seconds
    while writer.poll() is None and time.monotonic() < deadline:
        points = int(page.eval_on_selector("#charts", "box => box.dataset.points || '0'"))
        if points and (not seen or seen[-1] != points):
            seen.append(points)
        time.sleep(0.05)
    return seen


def _restarted_run(run_dir: Path) -> None:
    """A finished run whose timeline has a restart in it (written by hand: only the page is tested)."""
    run_dir.mkdir(parents=True)
    lines: list[dict[str, Any]] = []
    for start, ts in ((False, 1000.0), (True, 1100.0)):
        lines.append({"kind": "start", "ts": ts, "restart": start, "done": 0})
        for i in range(2):
            lines.append({"kind": "sample", "ts": ts + 5 * (i + 1), "rows_per_s": 2.0 + i, "in_flight": 2,
                          "concurrency": 4, "rate_limited": 0, "retries": 0, "cost_usd": 0.001 * (i + 1),
                          "latency_s": {"p50": 0.2, "p95": 0.4, "p99": 0.5}})  # fmt: skip
    lines.append({"kind": "end", "ts": 1200.0, "status": "completed"})
    write_jsonl(run_dir / "metrics.jsonl", lines)
    manifest = {"status": "completed", "request_counts": {"total": 4, "completed": 4, "failed": 0}}
    (run_dir / "manifest.json").write_bytes(orjson.dumps(manifest))
