"""`runner serve`'s list of 500 runs: how long until a browser shows it (target: under a second).

    .venv/bin/python -m bench.liveview [--repeat 5] [--screenshots docs/img] [--quick]

A runs folder of 500 runs is written (tests.support.runs_folder.five_hundred_runs: 300 and 198 nights of
two jobs, a Ray run and a Batch API run held running). ``runner serve`` runs in its own process,
as a user starts it. Each repeat opens the list in a fresh headless Chromium page (Debian's
``chromium``) and takes the time from the start of the navigation to the first page of 50 rows in
the table (``performance.now()`` when the list script has drawn them: the HTML, its scripts, the
``/api/list`` request and the drawing). Beside it: ``GET /api/list`` alone (the server's part),
a page of the list filtered by status (which reads every run's status), and a job's page with its
301 runs and three charts. ``--screenshots DIR`` also writes the list, the Ray run's page, the
Batch API run's page and a job's history as PNG files there.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import PY, ROOT, machine, spread
from tests.support.runs_folder import five_hundred_runs

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run", "--disable-quic"]
TARGET_MS = 1000.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(runs_dir: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        server = subprocess.Popen([PY, "-m", "runner", "serve", "--port", str(port), "--runs-dir", str(runs_dir)],
                                  stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/jobs", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            time.sleep(0.1)
    server.kill()
    raise SystemExit(f"runner serve did not start:\n{log.read_text()}")


def _timed_get(url: str, repeat: int) -> list[float]:
    times = []
    with httpx.Client(timeout=30) as client:
        client.get(url).raise_for_status()  # warm: the first request imports what the route needs
        for _ in range(repeat):
            start = time.perf_counter()
            client.get(url).raise_for_status()
            times.append(1000 * (time.perf_counter() - start))
    return times


def _page_load(browser: Any, url: str, ready: str, mark: str) -> float:
    """Milliseconds from navigation start until ``ready`` holds, read in the page (``mark``: when it held)."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        page.goto(url)
        page.wait_for_function(ready, timeout=30000)
        return float(page.evaluate(mark))
    finally:
        page.close()


def _screenshots(browser: Any, base: str, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    shots = [("serve-list.png", "/", "#runs[data-rows='50']", False),
             ("serve-run-ray.png", "/runs/classify/ray-night", "#charts[data-points='12']", True),
             ("serve-run-batch.png", "/runs/summarize/batch-night", "#charts[data-points='12']", True),
             ("serve-job.png", "/jobs/classify", "#job-charts[data-points='301']", False)]  # fmt: skip
    made = []
    for name, path, ready, full in shots:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(base + path)
        page.wait_for_selector(ready, state="attached", timeout=30000)
        page.evaluate("new Promise((done) => setTimeout(done, 300))")  # the charts draw 100 ms after their data
        page.screenshot(path=str(folder / name), full_page=full)
        page.close()
        made.append(folder / name)
    return made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="2 repeats")
    parser.add_argument("--screenshots", type=Path, help="write the pages' screenshots to this folder")
    args = parser.parse_args()
    repeat = 2 if args.quick else args.repeat
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="bench-liveview-") as tmp:
        runs_dir = Path(tmp) / "runs"
        locks = five_hundred_runs(runs_dir)
        port = _free_port()
        server = _serve(runs_dir, port, Path(tmp) / "serve.log")
        base = f"http://127.0.0.1:{port}"
        try:
            api = _timed_get(f"{base}/api/list", repeat)
            by_state = _timed_get(f"{base}/api/list?state=completed+with+errors", repeat)
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
                _page_load(browser, base + "/", "window.listShownAt !== undefined", "window.listShownAt")  # warm
                shown = [_page_load(browser, base + "/", "window.listShownAt !== undefined", "window.listShownAt")
                         for _ in range(repeat)]  # fmt: skip
                job = [_page_load(browser, base + "/jobs/classify",
                                  "document.getElementById('job-charts').dataset.points === '301'", "performance.now()")
                       for _ in range(repeat)]  # fmt: skip
                shots = _screenshots(browser, base, args.screenshots) if args.screenshots else []
                browser.close()
        finally:
            server.terminate()
            server.wait(10)
            for lock in locks:
                lock.close()
    verdict = "met" if statistics.median(shown) < TARGET_MS else "NOT met"
    print(f"500 runs, runner serve in its own process, headless Chromium, median of {repeat} (min-max); {machine()}")
    print(f"  list shown (first 50 rows drawn, from navigation start)  {spread(shown, '{:.0f}')} ms"
          f"  (target < {TARGET_MS:.0f} ms: {verdict})")  # fmt: skip
    print(f"  GET /api/list (page 1 of 10)                             {spread(api, '{:.1f}')} ms")
    print(f"  GET /api/list?state=... (reads every run's status)       {spread(by_state, '{:.1f}')} ms")
    print(f"  a job's page (301 runs, 3 charts drawn)                  {spread(job, '{:.0f}')} ms")
    for shot in shots:
        print(f"  screenshot: {shot}")


if __name__ == "__main__":
    main()
