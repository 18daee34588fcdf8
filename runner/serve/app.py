"""``runner serve``: a live, read-only web view of the runs, and a one-record try-out of a job.

    GET  /                               the page (runner/serve/web/index.html: plain HTML and a little JavaScript)
    GET  /api/runs                       every run's status (runner.serve.status.read_run), newest first
    GET  /api/runs/{job}/{run_id}        one run's status
    GET  /api/jobs                       the jobs a try-out can use
    GET  /runs/{job}/{run_id}/events     Server-Sent Events: progress, result, row_error, end (runner.serve.tail)
    POST /jobs/{job}/try                 Server-Sent Events: the answer to one record, streamed (runner.serve.tryout)
    GET  /runs/{job}/{run_id}/timeline, /metrics, /static/{name}: watching runs over time (runner.serve.watch)
    GET  /runs/{job}/{run_id}, /jobs/{job}, /api/list, /api/jobs/{job}/runs: a run's page, a job's history,
         the list paged and filtered (runner.serve.pages)

Beyond loopback (or with ``--token``) every request needs the server's token (runner.serve.auth).

Run directories are only ever read. Path parameters are names, never paths: anything else is a 404.
Both streams are ``text/event-stream`` with ``Cache-Control: no-cache`` and ``X-Accel-Buffering: no``
(so nginx and the like pass each event on at once) and a ``: ping`` comment every 15 s when idle
(FastAPI's ``EventSourceResponse``). Every file access runs in a worker thread, every provider call
is ``acompletion``: nothing blocks the event loop.

The try-out stream is ``data: {"delta": "..."}`` per piece of the answer, then ``event: final`` (usage,
cost, finish reason, the job's result or why it rejected the answer) or ``event: error``
(``{"error": {"code", "message", "status"}}``), then always ``data: [DONE]``. A request that cannot
be built (unknown job 404, missing API key 400, a record the job cannot use 422) fails before the
stream starts. A body must be ``application/json``, so a web page elsewhere cannot make a visitor's
browser spend their key (a cross-site JSON POST needs a CORS pre-flight this app never allows).

Bound to a loopback address (the default), the app also refuses requests whose Host header names
another machine, so a DNS-rebinding page cannot read it either.
"""

# No `from __future__ import annotations`: FastAPI must see the closures named in Depends(...) below.
import contextlib
import ipaddress
import logging
import re
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import uvicorn
from fastapi import Body, Depends, FastAPI, Header, HTTPException, Query
from fastapi.responses import HTMLResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent
from starlette.middleware.trustedhost import TrustedHostMiddleware

from runner.errors import JobDefinitionError, RowError, UsageError
from runner.job.definition import BATCH, Job, list_jobs, load_job
from runner.job.template import SUFFIXES
from runner.redact import redact
from runner.serve import tail, tryout
from runner.serve.auth import Auth, TokenGate, new_token
from runner.serve.hangup import QuietHangup
from runner.serve.listen import listen
from runner.serve.pages import add_page_routes
from runner.serve.watch import add_watch_routes

__all__ = ["create_app", "is_loopback", "serve"]

logger = logging.getLogger(__name__)

_RUN_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # as `runner run --run-id` allows
_JOB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")  # a module in --jobs-dir, never a path
_RETRY_MS = 2000  # how soon a browser's EventSource reconnects after losing the stream


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine only (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def create_app(
    runs_dir: Path,
    jobs_dir: Path,
    api_base: str | None = None,
    *,
    host: str = "127.0.0.1",
    interval: float = 0.25,
    auth: Auth | None = None,
) -> FastAPI:
    """The web app over ``runs_dir``; try-outs load jobs from ``jobs_dir`` and call ``api_base`` if given;
    with ``auth``, every request needs its token (401 otherwise)."""
    page = (resources.files("runner.serve") / "web" / "index.html").read_text(encoding="utf-8")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        from runner.provider.provider import aclose

        await aclose()  # litellm's cached HTTP clients belong to this loop

    app = FastAPI(title="runner", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(QuietHangup)  # a page closed mid-stream is no error (runner/serve/hangup.py)
    if is_loopback(host):
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=["127.0.0.1", "localhost", "[::1]", host])
    if auth is not None and auth.on:
        app.add_middleware(TokenGate, auth=auth)  # added last: the outermost, before anything else answers

    def run_dir(job: str, run_id: str) -> Path:
        """The run directory the path names (a sync dependency: FastAPI runs it in a worker thread)."""
        root = runs_dir.resolve()
        if _RUN_PART.fullmatch(job) and _RUN_PART.fullmatch(run_id):
            path = (root / job / run_id).resolve()
            if path.is_relative_to(root) and path.is_dir():
                return path
        raise HTTPException(404, "no such run")

    def prepared(
        job: str, record: Annotated[dict[str, Any], Body()], model: Annotated[str | None, Query()] = None
    ) -> tryout.Prepared:
        """The record's request as a batch would send it, or the HTTP error that says why there is none."""
        files = [jobs_dir / f"{job}{suffix}" for suffix in (".py", *SUFFIXES)]  # a module or a template, as `run`
        if not _JOB_NAME.fullmatch(job) or (job != BATCH.name and not any(f.is_file() for f in files)):
            raise HTTPException(404, f"no job {job!r} in {jobs_dir}")
        try:
            return tryout.prepare(load_job(job, jobs_dir), record, model=model or None, api_base=api_base)
        except JobDefinitionError as exc:
            raise HTTPException(500, redact(str(exc))) from exc
        except UsageError as exc:  # a missing key names the variable, never its value
            raise HTTPException(400, redact(str(exc))) from exc
        except RowError as exc:
            raise HTTPException(422, redact(f"{exc.code}: {exc.message}")) from exc

    async def closing() -> AsyncIterator[list[AsyncGenerator[Any, None]]]:
        """Streams to close when the request ends, however it ends.

        A client that leaves while the stream waits at a ``yield`` leaves FastAPI's generator
        abandoned, not closed: only garbage collection would close it, and with it the provider's
        connection. Closing it here runs its ``finally`` blocks as soon as the response is over.
        """
        streams: list[AsyncGenerator[Any, None]] = []
        try:
            yield streams
        finally:
            for stream in streams:
                await stream.aclose()

    @app.get("/", response_class=HTMLResponse)
    async def index() -> str:
        return page

    @app.get("/api/runs")
    def runs() -> list[dict[str, Any]]:
        from runner.serve.status import find_runs, read_run

        return [read_run(path) for path in find_runs(runs_dir)] if runs_dir.is_dir() else []

    @app.get("/api/runs/{job}/{run_id}")
    def one_run(path: Annotated[Path, Depends(run_dir)]) -> dict[str, Any]:
        from runner.serve.status import read_run

        return read_run(path)

    @app.get("/api/jobs")
    def jobs() -> list[dict[str, Any]]:
        return [_job_summary(item) for item in list_jobs(jobs_dir)] if jobs_dir.is_dir() else []

    @app.get("/runs/{job}/{run_id}/events", response_class=EventSourceResponse)
    async def events(
        path: Annotated[Path, Depends(run_dir)],
        opened: Annotated[list[AsyncGenerator[Any, None]], Depends(closing)],
        last_event_id: Annotated[str | None, Header()] = None,
        tail_lines: Annotated[int, Query(alias="tail", ge=0, le=1000)] = 20,
    ) -> AsyncIterable[ServerSentEvent]:
        cursor = tail.Cursor.parse(last_event_id) if last_event_id else None
        if last_event_id and cursor is None:
            logger.info("ignoring Last-Event-ID %r (not r<offset>-e<offset>): starting from the tail", last_event_id)
        retry: int | None = _RETRY_MS
        follower = tail.follow(path, cursor, tail=tail_lines, interval=interval)
        opened.append(follower)
        async for event in follower:
            yield ServerSentEvent(raw_data=event.data, event=event.kind, id=event.id, retry=retry)
            retry = None

    @app.post("/jobs/{job}/try", response_class=EventSourceResponse)
    async def try_record(
        ready: Annotated[tryout.Prepared, Depends(prepared)],
        opened: Annotated[list[AsyncGenerator[Any, None]], Depends(closing)],
    ) -> AsyncIterable[ServerSentEvent]:
        job, model, custom_id = ready.caller.job.name, ready.request["model"], ready.row.custom_id
        logger.info("try-out: job %s, model %s, id %s", job, model, custom_id)
        answer = tryout.stream(ready)
        opened.append(answer)
        async for event in answer:
            yield ServerSentEvent(data=event.data, event=None if event.kind == "delta" else event.kind)
        yield ServerSentEvent(raw_data="[DONE]")

    add_watch_routes(app, runs_dir, run_dir, interval)
    add_page_routes(app, runs_dir, run_dir)
    return app


def _job_summary(item: Job | JobDefinitionError) -> dict[str, Any]:
    if isinstance(item, JobDefinitionError):
        return {"name": None, "error": redact(str(item))}
    return {"name": item.name, "model": item.model, "description": item.description, "stream": item.stream}


def serve(
    host: str,
    port: int,
    runs_dir: Path,
    jobs_dir: Path,
    api_base: str | None = None,
    token: str | None = None,
    metrics_token: str | None = None,
) -> int:
    """Serve the web view until Ctrl-C (then 0) or SIGTERM (which ends the process as SIGTERM does).

    The port is bound first, so a busy one is a UsageError and nothing has claimed to serve on it.
    Beyond loopback a token is required: ``token``, else a new one, printed with the URL.
    """
    sockets = listen(host, port)
    try:
        if token is None and not is_loopback(host):
            token = new_token()
        auth = Auth(token, metrics_token)
        if not is_loopback(host):
            logger.warning(
                "serving on %s, not this machine only: whoever has the token can read every run (inputs and "
                "answers) and spend your API key through the try-out; every request without it gets 401. "
                "Prefer the default --host 127.0.0.1 (and an SSH tunnel).",
                host,
            )
        if not runs_dir.is_dir():
            logger.info("%s does not exist yet: runs will appear as they start", runs_dir)
        app = create_app(runs_dir, jobs_dir, api_base, host=host, auth=auth)
        shown = f"[{host.strip('[]')}]" if ":" in host else host
        bound = sockets[0].getsockname()[1]
        with_token = f"?token={token}" if token is not None else ""
        logger.info("serving %s at http://%s:%d/%s (Ctrl-C to stop)", runs_dir, shown, bound, with_token)
        config = uvicorn.Config(app, host=host, port=bound, log_config=None, timeout_graceful_shutdown=3)
        with contextlib.suppress(KeyboardInterrupt):  # uvicorn stops on Ctrl-C, then raises it again for its caller
            uvicorn.Server(config).run(sockets=sockets)
    finally:
        for sock in sockets:
            sock.close()
    logger.info("stopped serving")
    return 0
