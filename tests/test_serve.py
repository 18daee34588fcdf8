"""`runner serve` over real HTTP: the run event stream (tailing, resuming, a run written meanwhile) and try-outs.

Each test talks to a live uvicorn server on 127.0.0.1 (in a thread, its own event loop) with httpx.
Try-outs call the project's fake provider through a small proxy that spaces its stream events out,
so a relay that buffered the answer would show up as every delta arriving at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import logging
import socket
import subprocess
import sys
import time
import types
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import uvicorn

import runner.serve.app
from runner.cli import main
from runner.serve import tail, tryout
from runner.serve.app import create_app, is_loopback, serve
from runner.serve.tail import Cursor, read_lines, tail_start
from tests.doubles.provider import FakeProvider
from tests.support.files import ROOT, SECRET, write_jsonl
from tests.support.live import PACE_S, LiveServer, pacing_proxy, read_events, sse
from tests.support.run import run_rows, tickets

pytestmark = [
    pytest.mark.timeout(30),
    pytest.mark.filterwarnings("ignore:Accessing the 'model_.*' attribute on the instance:DeprecationWarning"),
]

MODEL = "openai/gpt-4o-mini"


def running(function: Callable[..., AsyncIterator[Any]]) -> int:
    """How many of ``function``'s async generators are alive (started or not, and not yet finished)."""
    code = function.__code__
    return sum(1 for o in gc.get_objects() if isinstance(o, types.AsyncGeneratorType) and o.ag_code is code
               and o.ag_frame is not None)  # fmt: skip


async def eventually(check: Callable[[], bool], seconds: float = 5.0) -> bool:
    """Whether ``check()`` comes true within ``seconds`` (state in another thread: nothing to await)."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A runs directory and a jobs directory holding the project's jobs."""
    root = tmp_path_factory.mktemp("serve")
    return root / "runs", ROOT / "jobs"


@pytest.fixture(scope="module")
def proxy(_server: FakeProvider) -> Iterator[str]:
    with LiveServer(pacing_proxy(_server.url)) as live:
        yield f"{live.url}/v1"


@pytest.fixture(scope="module")
def live(dirs: tuple[Path, Path], proxy: str) -> Iterator[LiveServer]:
    runs_dir, jobs_dir = dirs
    runs_dir.mkdir(parents=True)
    with LiveServer(create_app(runs_dir, jobs_dir, api_base=proxy, interval=0.1)) as server:
        yield server


@pytest.fixture
async def client(live: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=live.url, timeout=20) as c:
        yield c


def rows_with_errors(n: int, prefix: str) -> list[dict[str, Any]]:
    rows = tickets(n, prefix)
    for i in (3, 7):
        rows[i]["text"] += " [[fail:400]]"  # a row error, recorded at once
    return rows


# -- the journal follower's pieces -------------------------------------------------------


def test_tail_start_and_read_lines_stop_before_a_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    lines = [b'{"n":%d}\n' % i for i in range(30)]
    path.write_bytes(b"".join(lines) + b'{"n":30, "torn')
    start = tail_start(path, 5)
    assert start == sum(map(len, lines[:25]))
    assert read_lines(path, start) == lines[25:]
    assert read_lines(path, 0, max_lines=7) == lines[:7]
    assert tail_start(path, 100) == 0 and tail_start(tmp_path / "missing", 5) == 0
    assert Cursor.parse(Cursor(12, 34).id) == Cursor(12, 34)
    assert Cursor.parse("../etc") is None and Cursor.parse("r1-e") is None


def test_loopback_hosts() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1") and is_loopback("[::1]")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("example.com")


def test_serve_warns_when_asked_to_bind_beyond_this_machine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    started: list[tuple[str, int]] = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets: started.append(sockets[0].getsockname()))
    with socket.create_server(("127.0.0.1", 0)) as loopback:  # stands in for 0.0.0.0, which reaches beyond here
        monkeypatch.setattr(runner.serve.app, "listen", lambda host, port: [loopback])
        assert serve("0.0.0.0", 8765, tmp_path, ROOT / "jobs") == 0
    assert "without it gets 401" in caplog.text
    caplog.clear()
    monkeypatch.undo()
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets: started.append(sockets[0].getsockname()))
    assert serve("127.0.0.1", 0, tmp_path, ROOT / "jobs") == 0
    assert "without it gets 401" not in caplog.text
    assert [host for host, _ in started] == ["127.0.0.1", "127.0.0.1"] and started[1][1] > 0


# -- GET /runs/{job}/{run_id}/events --------------------------------------------------------


async def test_a_finished_run_streams_progress_the_tail_and_an_end(
    dirs: tuple[Path, Path], provider: FakeProvider, client: httpx.AsyncClient
) -> None:
    done = await run_rows(dirs[0] / "classify-done", provider, rows_with_errors(30, "d"))
    assert len(done.results) == 28 and len(done.errors) == 2
    response, events, _ = await read_events(client, "GET", "/runs/classify-done/run/events")
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    kinds = [e.event for e in events]
    assert kinds == ["progress"] + ["result"] * 20 + ["row_error"] * 2 + ["end"]  # the last 20 results only
    progress = events[0].json()
    assert progress["status"] == "completed" and progress["percent"] == 100.0 and progress["done"] == 30
    shown = [e.json()["custom_id"] for e in events if e.event == "result"]
    assert shown == [r["custom_id"] for r in done.results[-20:]]
    assert events[-1].json() == {"status": "completed"}
    cursors = [Cursor.parse(e.id or "") for e in events]
    assert all(cursors) and cursors == sorted(cursors, key=lambda c: (c.results, c.errors))  # type: ignore[union-attr]
    run_dir = dirs[0] / "classify-done" / "run"
    ends = [(run_dir / name).stat().st_size for name in ("results.jsonl", "errors.jsonl")]
    assert events[-1].id == f"r{ends[0]}-e{ends[1]}"


async def test_last_event_id_resumes_exactly_where_the_client_left_off(
    dirs: tuple[Path, Path], provider: FakeProvider, client: httpx.AsyncClient
) -> None:
    done = await run_rows(dirs[0] / "classify-resume", provider, rows_with_errors(40, "r"))
    url = "/runs/classify-resume/run/events"
    everything = {r["custom_id"] for r in done.results + done.errors}

    _, first, _ = await read_events(client, "GET", url, lambda es: len(es) == 13, headers={"Last-Event-ID": "r0-e0"})
    last_id = first[-1].id
    _, rest, _ = await read_events(client, "GET", url, headers={"Last-Event-ID": last_id})
    seen = [e.json()["custom_id"] for e in first + rest if e.event in ("result", "row_error")]
    assert len(seen) == len(set(seen)) == len(everything) and set(seen) == everything
    assert rest[0].event == "progress" and rest[0].id == last_id and rest[-1].event == "end"

    _, garbage, _ = await read_events(client, "GET", url, headers={"Last-Event-ID": "not-ours"})
    assert sum(e.event == "result" for e in garbage) == 20  # an id that is not ours: from the tail
    _, none, _ = await read_events(client, "GET", url + "?tail=0")
    assert [e.event for e in none] == ["progress", "end"]

    # Offsets this stream never sent: inside a line (from the tail, whole lines only), past the end.
    _, inside, _ = await read_events(client, "GET", url, headers={"Last-Event-ID": "r500-e0"})
    assert sum(e.event == "result" for e in inside) == 20 and inside[0].id != "r500-e0"
    assert all(isinstance(e.json(), dict) for e in inside)
    _, beyond, _ = await read_events(client, "GET", url, headers={"Last-Event-ID": "r999999999-e0"})
    assert beyond[0].id == "r0-e0" and sum(e.event in ("result", "row_error") for e in beyond) == len(everything)


async def test_a_run_written_meanwhile_is_followed_to_its_end(
    dirs: tuple[Path, Path], provider: FakeProvider, client: httpx.AsyncClient
) -> None:
    rows = rows_with_errors(40, "w")
    for row in rows:
        row["text"] += " [[latency:120]]"
    base = dirs[0] / "classify-live"
    (base / "run").mkdir(parents=True)  # followed from before the run starts
    writer = asyncio.create_task(run_rows(base, provider, rows, concurrency=4, manifest_interval=0.2))
    _, events, arrived = await read_events(
        client, "GET", "/runs/classify-live/run/events", headers={"Last-Event-ID": "r0-e0"}
    )
    finished_at = time.monotonic()
    done = await writer
    seen = [e.json()["custom_id"] for e in events if e.event in ("result", "row_error")]
    assert sorted(seen) == sorted(r["custom_id"] for r in done.results + done.errors)  # each exactly once
    records = [t for e, t in zip(events, arrived, strict=True) if e.event == "result"]
    assert records[0] < finished_at - 0.5, "results should arrive while the run is still being written"
    progress = [e.json() for e in events if e.event == "progress"]
    assert len(progress) >= 3 and progress[0]["status"] in ("stopped", "starting", "in_progress")
    assert [p["done"] for p in progress] == sorted(p["done"] for p in progress)
    assert progress[-1]["status"] == "completed" and progress[-1]["percent"] == 100.0
    assert events[-1].event == "end" and events[-1].json() == {"status": "completed"}


async def test_a_stopped_run_keeps_the_stream_open_and_a_disconnect_frees_it(
    dirs: tuple[Path, Path], client: httpx.AsyncClient
) -> None:
    run_dir = dirs[0] / "classify-stopped" / "run"
    run_dir.mkdir(parents=True)
    write_jsonl(run_dir / "results.jsonl", [{"custom_id": "a", "result": "bug"}])
    (run_dir / "manifest.json").write_bytes(orjson.dumps({"status": "in_progress", "request_counts": {"total": 5}}))
    async with (
        client.stream("GET", "/runs/classify-stopped/run/events") as response,
        contextlib.aclosing(sse(response)) as stream,
    ):
        events = [await anext(stream), await anext(stream)]
        assert [e.event for e in events] == ["progress", "result"]
        assert events[0].json()["status"] == "stopped"
        with (run_dir / "results.jsonl").open("ab") as f:  # a row journaled later is still followed: no end event
            f.write(orjson.dumps({"custom_id": "b", "result": "bug"}) + b"\n")
        later = await anext(stream)
        assert later.event == "result" and later.json()["custom_id"] == "b", f"a stopped run may be resumed: {later}"
        assert running(tail.follow) == 1
    assert await eventually(lambda: running(tail.follow) == 0), "the follower should stop when its client goes away"


@pytest.mark.parametrize(
    "path",
    [
        "/runs/%2E%2E/%2E%2E/events",
        "/runs/..%2F..%2Fetc/passwd/events",
        "/runs/classify-done/%2E%2E/events",
        "/runs/classify-done/nope/events",
        "/api/runs/%2E%2E/serve",
        "/runs/.hidden/run/events",
    ],
)
async def test_paths_that_are_not_a_run_are_404(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)
    assert response.status_code == 404, response.text


async def test_a_host_header_naming_another_machine_is_refused(client: httpx.AsyncClient) -> None:
    assert (await client.get("/", headers={"host": "evil.example"})).status_code == 400
    page = await client.get("/")
    assert page.status_code == 200 and "try a record" in page.text


# -- POST /jobs/{job}/try -----------------------------------------------------------------


async def test_a_tryout_streams_deltas_as_they_come_then_the_final_event_and_done(
    client: httpx.AsyncClient, provider: FakeProvider
) -> None:
    answer = "The upload button crashes the app on large files; the user wants a fix soon, or a refund."
    text = f"[[answer:{answer}]] [[chunk:4]] a long complaint about uploads"
    response, events, arrived = await read_events(
        client, "POST", f"/jobs/summarize/try?model={MODEL}", json={"id": "t-1", "text": text}
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache" and response.headers["x-accel-buffering"] == "no"
    deltas = [e for e in events if e.event == "message" and e.data != "[DONE]"]
    assert len(deltas) >= 10 and "".join(e.json()["delta"] for e in deltas) == answer
    assert [e.event for e in events[len(deltas) :]] == ["final", "message"] and events[-1].data == "[DONE]"
    # litellm's first call in a process may read a few events late; after that each delta comes as it is sent.
    # Buffered, the last deltas would come at once; relayed, over ~PACE_S each (one pair may bunch on a busy machine).
    gaps = [b - a for a, b in itertools.pairwise(arrived[: len(deltas)])]
    assert sum(gaps[-6:]) >= 6 * PACE_S / 2, f"deltas must be relayed as they arrive, not buffered: {gaps}"
    final = events[-2].json()
    assert final["result"] == answer and final["result_error"] is None and final["finish_reason"] == "stop"
    assert final["usage"]["prompt_tokens"] > 0 and final["usage"]["completion_tokens"] > 0
    assert final["cost_usd"] > 0 and final["custom_id"] == "t-1" and final["model"] == MODEL
    sent = provider.stats().last_request_for(text)
    assert sent.stream and sent.include_usage and sent.max_tokens == 300 and sent.temperature == 0.2  # the batch's


async def test_a_rejected_answer_is_reported_in_the_final_event(client: httpx.AsyncClient) -> None:
    text = "[[answer:no idea]] something"
    _, events, _ = await read_events(client, "POST", f"/jobs/classify/try?model={MODEL}", json={"text": text})
    final = events[-2].json()
    assert final["result"] is None and final["result_error"]["code"] == "invalid_result"
    assert final["content"] == "no idea" and events[-1].data == "[DONE]"


async def test_a_client_that_leaves_mid_tryout_frees_the_server(
    client: httpx.AsyncClient, provider: FakeProvider
) -> None:
    answer = " ".join(["word"] * 60)
    async with client.stream(
        "POST", f"/jobs/summarize/try?model={MODEL}", json={"text": f"[[answer:{answer}]] x"}
    ) as r:
        deltas = 0
        async for event in sse(r):
            deltas += event.event == "message"
            if deltas == 3:
                break
    # Stopped and closed, not just abandoned at a yield for the garbage collector (with its provider connection).
    assert await eventually(lambda: running(tryout.stream) == 0), "the try-out should stop when its client goes away"
    assert provider.stats().total == 1


@pytest.mark.parametrize(
    ("fault", "code"),
    [("break:after=4", "connection_error|stream_broken|server_error"), ("truncate:after=4", "stream_broken"),
     ("500", "server_error"), ("401", "authentication_failed")],
)  # fmt: skip
async def test_a_provider_error_becomes_an_error_event_and_the_stream_ends(
    client: httpx.AsyncClient, provider: FakeProvider, fault: str, code: str
) -> None:
    text = f"[[answer:Bug: the upload crashes badly.]] [[chunk:2]] [[fail:{fault}]] crash"
    response, events, _ = await read_events(
        client, "POST", f"/jobs/classify/try?model={MODEL}", json={"id": "e", "text": text}
    )
    assert response.status_code == 200
    assert [e.event for e in events][-2:] == ["error", "message"] and events[-1].data == "[DONE]"
    error = events[-2].json()["error"]
    assert error["code"] in code.split("|"), error
    assert SECRET not in events[-2].data
    if fault.startswith(("break", "truncate")):
        assert any(e.event == "message" and "delta" in e.data for e in events), "some deltas came first"
    assert provider.stats().by_key[text] == 1  # a try-out is never retried


async def test_a_tryout_that_cannot_be_built_fails_before_streaming(
    client: httpx.AsyncClient, provider: FakeProvider
) -> None:
    assert (await client.post("/jobs/nope/try", json={"text": "x"})).status_code == 404
    assert (await client.post("/jobs/..%2Fjobs%2Fclassify/try", json={"text": "x"})).status_code == 404
    unusable = await client.post(f"/jobs/classify/try?model={MODEL}", json={"id": "x"})
    assert unusable.status_code == 422 and "invalid_record" in unusable.text
    # Not JSON (what a cross-site form could send without a CORS pre-flight): refused, nothing sent.
    plain = await client.post(f"/jobs/classify/try?model={MODEL}", content=b'{"text": "hi"}',
                              headers={"content-type": "text/plain"})  # fmt: skip
    assert plain.status_code == 422 and provider.stats().total == 0


async def test_a_missing_api_key_is_a_400_that_names_the_variable(
    dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    with LiveServer(create_app(dirs[0], dirs[1])) as server:  # no --api-base: a real provider's key is needed
        async with httpx.AsyncClient(base_url=server.url) as c:
            response = await c.post(f"/jobs/classify/try?model={MODEL}", json={"text": "it crashes"})
    assert response.status_code == 400 and "OPENAI_API_KEY is not set" in response.json()["detail"]


async def test_the_offline_default_model_answers_a_tryout(client: httpx.AsyncClient) -> None:
    _, events, _ = await read_events(client, "POST", "/jobs/classify/try", json={"text": "I was charged twice"})
    final = events[-2].json()
    assert events[-2].event == "final" and final["model"] == "local/zero-shot"
    assert final["result"] == "billing" and final["usage"]["total_tokens"] > 0


# -- runner serve: binding and warnings -----------------------------------------------------


def test_a_busy_port_is_one_usage_error_naming_it_and_nothing_claims_to_serve(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "runner", "serve", "--port", str(port), "--runs-dir", str(tmp_path)],
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "serving" not in proc.stderr
    assert proc.stderr.startswith(f"runner: port {port} on 127.0.0.1 is already in use")
    assert "--port" in proc.stderr


def test_serve_warns_once_when_bound_beyond_this_machine_and_names_the_bound_port(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", root.handlers[:])
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: None)
    # Binding 0.0.0.0 for real would reach beyond this machine: a loopback socket stands in for it.
    with socket.create_server(("127.0.0.1", 0)) as loopback:
        port = loopback.getsockname()[1]
        monkeypatch.setattr(runner.serve.app, "listen", lambda host, port: [loopback], raising=False)
        assert main(["serve", "--host", "0.0.0.0", "--port", "0", "--runs-dir", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert err.count("without it gets 401") == 1, err
    assert f"at http://0.0.0.0:{port}/" in err and err.index("without it gets 401") < err.index("(Ctrl-C to stop)")


async def test_a_template_job_answers_a_tryout(client: httpx.AsyncClient) -> None:
    """Issue 24, item 9 (before: 404 "no job 'sentiment' in jobs", though /api/jobs lists it)."""
    listed = (await client.get("/api/jobs")).json()
    assert "sentiment" in {j["name"] for j in listed}
    record = {"product": "kettle", "text": "Great product, works perfectly, I love it"}
    _, events, _ = await read_events(client, "POST", "/jobs/sentiment/try", json=record)
    final = events[-2].json()
    assert events[-2].event == "final" and final["result"] in ("positive", "negative", "neutral")
