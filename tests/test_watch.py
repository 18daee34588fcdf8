"""`runner serve` watching runs over time: /metrics, the timeline stream, and the token beyond loopback.

Servers are live uvicorn servers on 127.0.0.1 (tests.support.live.LiveServer). Binding 0.0.0.0 for
real would reach beyond this machine, so where the CLI is asked for it a loopback socket stands in
(as in test_serve); the app ``serve`` built for 0.0.0.0 is then served on loopback and must ask
for the token it printed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

import runner.serve.app
from runner.cli import main
from runner.run.timeline import METRICS
from runner.serve.app import create_app
from runner.serve.auth import Auth
from tests.doubles.provider import FakeProvider
from tests.support.files import ROOT
from tests.support.live import LiveServer, read_events
from tests.support.run import Finished, run_rows, tickets

pytestmark = pytest.mark.timeout(30)

MODEL = "openai/gpt-4o-mini"
TOKEN, METRICS_TOKEN = "t0k3n-for-the-page", "m3trics-only"
RECORD = {"id": "try-1", "text": "please add dark mode"}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory, _server: FakeProvider) -> tuple[Path, Finished]:
    """A finished run under runs/classify/run with 429s, retries, two failed rows and a timeline."""
    _server.reset()
    runs = tmp_path_factory.mktemp("watch") / "runs"
    rows = tickets(30)
    for i in (4, 9):
        rows[i]["text"] += " [[fail:400]]"
    for i in (2, 3):
        rows[i]["text"] += " [[fail:429:retry_after=0:times=1]]"
    done = asyncio.run(run_rows(runs / "classify", _server, rows, concurrency=4, metrics_interval=0.05))
    return runs, done


@pytest.fixture(scope="module")
def guarded(finished_run: tuple[Path, Finished], _server: FakeProvider) -> Iterator[LiveServer]:
    runs, _ = finished_run
    app = create_app(runs, ROOT / "jobs", api_base=_server.url, interval=0.05, auth=Auth(TOKEN, METRICS_TOKEN))
    with LiveServer(app) as server:
        yield server


@pytest.fixture
async def client(guarded: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=guarded.url, timeout=20) as c:
        yield c


def families(text: str) -> dict[str, Any]:
    from prometheus_client.parser import text_string_to_metric_families

    return {family.name: family for family in text_string_to_metric_families(text)}


def value(family: Any, name: str, **labels: str) -> float:
    found = [s.value for s in family.samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, (name, labels, family.samples)
    return float(found[0])


async def test_metrics_parse_and_agree_with_the_manifest(
    client: httpx.AsyncClient, finished_run: tuple[Path, Finished]
) -> None:
    manifest = finished_run[1].manifest
    reply = await client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/plain; version=0.0.4")
    found = families(reply.text)
    run = {"job": "classify", "run": "run"}
    rows = found["runner_rows"]
    assert value(rows, "runner_rows_total", **run, status="completed") == manifest["request_counts"]["completed"] == 28
    assert value(rows, "runner_rows_total", **run, status="failed") == manifest["request_counts"]["failed"] == 2
    limited = value(found["runner_rate_limited"], "runner_rate_limited_total", **run)
    assert limited == manifest["rate_limited"] == 2
    assert value(found["runner_retries"], "runner_retries_total", **run) == manifest["retries"] == 2
    assert value(found["runner_errors"], "runner_errors_total", **run, code="bad_request") == 2
    model = manifest["models"][MODEL]
    cost = value(found["runner_cost_usd"], "runner_cost_usd_total", **run, model=MODEL)
    assert cost == pytest.approx(model["cost_usd"]) and cost > 0
    tokens = found["runner_tokens"]
    assert value(tokens, "runner_tokens_total", **run, model=MODEL, kind="input") == model["input_tokens"]
    assert value(tokens, "runner_tokens_total", **run, model=MODEL, kind="output") == model["output_tokens"]
    latency = found["runner_request_latency_seconds"]
    assert value(latency, "runner_request_latency_seconds_count", **run, model=MODEL) == 30
    assert value(latency, "runner_request_latency_seconds_bucket", **run, model=MODEL, le="+Inf") == 30
    assert value(found["runner_run_running"], "runner_run_running", **run) == 0
    assert value(found["runner_rows_expected"], "runner_rows_expected", **run) == 30
    assert value(found["runner_concurrency_ceiling"], "runner_concurrency_ceiling", **run, model=MODEL) == 4
    info = found["runner_run_info"]
    assert value(info, "runner_run_info", **run, status="completed", state="completed with errors") == 1


async def test_the_example_dashboard_asks_only_for_metrics_that_exist(client: httpx.AsyncClient) -> None:
    reply = await client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    names = {sample.name for family in families(reply.text).values() for sample in family.samples}
    dashboard = json.loads((ROOT / "examples" / "grafana" / "runner-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    wanted = {name for expr in exprs for name in re.findall(r"runner_[a-z_]+", expr)}
    assert len(wanted) >= 10 and wanted <= names, wanted - names


async def test_the_timeline_stream_relays_every_line_and_resumes_at_last_event_id(
    client: httpx.AsyncClient, finished_run: tuple[Path, Finished]
) -> None:
    lines = (finished_run[0] / "classify" / "run" / METRICS).read_bytes().splitlines()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    reply, events, _ = await read_events(client, "GET", "/runs/classify/run/timeline", headers=auth)
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/event-stream")
    assert [e.event for e in events] == ["start"] + ["sample"] * (len(lines) - 2) + ["end", "done"]
    assert [e.data.encode() for e in events[:-1]] == lines
    second = events[1].id
    assert second is not None
    _, again, _ = await read_events(
        client, "GET", "/runs/classify/run/timeline", headers={**auth, "Last-Event-ID": second}
    )
    assert [e.data for e in again] == [e.data for e in events[2:]]
    _, tail, _ = await read_events(client, "GET", "/runs/classify/run/timeline?tail=3", headers=auth)
    assert [e.data.encode() for e in tail[:-1]] == lines[-3:]


GUARDED = [("GET", "/"), ("GET", "/api/runs"), ("GET", "/api/jobs"), ("GET", "/runs/classify/run/events"),
           ("GET", "/runs/classify/run/timeline"), ("GET", "/metrics"), ("GET", "/static/charts.js"),
           ("GET", "/runs/classify/run"), ("GET", "/jobs/classify"), ("GET", "/api/list"),
           ("GET", "/api/jobs/classify/runs"), ("GET", "/static/run.js"), ("GET", "/static/runner.css"),
           ("POST", f"/jobs/classify/try?model={MODEL}")]  # fmt: skip


async def _ask(client: httpx.AsyncClient, method: str, path: str, **kwargs: Any) -> tuple[int, bytes]:
    if method == "POST":
        kwargs["json"] = RECORD
    async with client.stream(method, path, **kwargs) as reply:
        data = b""
        async for chunk in reply.aiter_bytes():
            data += chunk
            if len(data) > 64 or b"\n\n" in data:
                break  # the first event is enough: a stream may go on
        return reply.status_code, data


@pytest.mark.parametrize(("method", "path"), GUARDED)
async def test_without_the_token_everything_is_401_and_nothing_else(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Cookie": "runner_token=wrong"}):
        status, data = await _ask(client, method, path, headers=headers)
        assert status == 401 and data.startswith(b"401 Unauthorized"), (headers, data)
    if path != "/metrics":  # the metrics token opens /metrics only
        status, _ = await _ask(client, method, path, headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
        assert status == 401


@pytest.mark.parametrize(("method", "path"), GUARDED)
async def test_with_the_token_everything_works(client: httpx.AsyncClient, method: str, path: str) -> None:
    status, data = await _ask(client, method, path, headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 200 and data, data


async def test_the_link_with_the_token_sets_a_cookie_the_page_then_uses(client: httpx.AsyncClient) -> None:
    page = await client.get(f"/?token={TOKEN}")
    assert page.status_code == 200 and "HttpOnly" in page.headers["set-cookie"]
    assert "SameSite=Strict" in page.headers["set-cookie"]
    status, data = await _ask(
        client, "POST", f"/jobs/classify/try?model={MODEL}"
    )  # the cookie alone, as the page's fetch
    assert status == 200 and b"data:" in data


async def test_a_server_bound_beyond_loopback_makes_prints_and_asks_for_a_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", root.handlers[:])
    apps: list[Any] = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: apps.append(self.config.app))
    with socket.create_server(("127.0.0.1", 0)) as loopback:
        monkeypatch.setattr(runner.serve.app, "listen", lambda host, port: [loopback])
        assert main(["serve", "--host", "0.0.0.0", "--port", "0", "--runs-dir", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    printed = re.search(r"at http://0\.0\.0\.0:\d+/\?token=([\w-]+) ", err)
    assert printed and len(printed[1]) >= 24, err
    with LiveServer(apps[0]) as server:  # the app serve built for 0.0.0.0, on loopback
        async with httpx.AsyncClient(base_url=server.url) as c:
            assert (await c.get("/")).status_code == 401
            assert (await c.get("/metrics")).status_code == 401
            assert (await c.get(f"/?token={printed[1]}")).status_code == 200
    monkeypatch.undo()
    monkeypatch.setattr(root, "handlers", root.handlers[:])
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: apps.append(self.config.app))
    assert main(["serve", "--host", "127.0.0.1", "--port", "0", "--runs-dir", str(tmp_path)]) == 0
    assert "?token=" not in capsys.readouterr().err  # loopback, no --token: no token asked
    with LiveServer(apps[1]) as server:
        async with httpx.AsyncClient(base_url=server.url) as c:
            assert (await c.get("/")).status_code == 200


async def test_metrics_of_a_live_run_show_it_running(tmp_path: Path, provider: FakeProvider) -> None:
    """A run in progress is counted as such: running, its rows so far, and its in-flight gauge."""
    rows = tickets(12)
    provider.hold(lambda text: text == rows[-1]["text"])
    run = {"job": "classify", "run": "run"}

    async def scrape_while_held() -> dict[str, Any]:
        await asyncio.to_thread(provider.wait_for, lambda s: s.held == 1)
        transport = httpx.ASGITransport(app=create_app(tmp_path / "runs", ROOT / "jobs"))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            while True:  # until the timeline has sampled the held request (every 50 ms)
                found = families((await c.get("/metrics")).text)
                flight = found.get("runner_requests_in_flight")
                if flight and value(flight, "runner_requests_in_flight", **run, model=MODEL) == 1:
                    break
                await asyncio.sleep(0.02)
        provider.release()
        return found

    scraper = asyncio.create_task(scrape_while_held())
    await run_rows(tmp_path / "runs" / "classify", provider, rows, concurrency=4, metrics_interval=0.05)
    found = await scraper
    assert value(found["runner_run_running"], "runner_run_running", **run) == 1
    assert value(found["runner_rows"], "runner_rows_total", **run, status="completed") <= 11
