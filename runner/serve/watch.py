"""The routes for watching runs over time: the timeline stream, ``/metrics``, and the chart files.

    GET /runs/{job}/{run_id}/timeline   Server-Sent Events: the run's metrics.jsonl lines (runner.serve.charts)
    GET /metrics                        every run in the Prometheus text format (runner.serve.prom)
    GET /static/{name}                  the page's chart code and the vendored uPlot (runner/serve/web/)

Only a run's page and a job's page load the chart files, so the list of runs stays light; the pages' own
scripts and style (common.js, list.js, run.js, job.js, runner.css) are served here too.
"""

# No `from __future__ import annotations`: FastAPI must see the dependency named in Depends(...) below.
import asyncio
import logging
from collections.abc import AsyncIterable, Callable
from importlib import resources
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, Header, HTTPException, Query
from fastapi.responses import Response
from fastapi.sse import EventSourceResponse, ServerSentEvent

from runner.serve import charts

__all__ = ["STATIC", "add_watch_routes"]

logger = logging.getLogger(__name__)

# name -> content type; nothing else under web/ is served by this route
STATIC = {
    "charts.js": "text/javascript; charset=utf-8",
    "common.js": "text/javascript; charset=utf-8",
    "list.js": "text/javascript; charset=utf-8",
    "run.js": "text/javascript; charset=utf-8",
    "job.js": "text/javascript; charset=utf-8",
    "runner.css": "text/css; charset=utf-8",
    "uPlot.iife.min.js": "text/javascript; charset=utf-8",
    "uPlot.min.css": "text/css; charset=utf-8",
    "uPlot.LICENSE": "text/plain; charset=utf-8",
}


def add_watch_routes(app: FastAPI, runs_dir: Path, run_dir: Callable[[str, str], Path], interval: float) -> None:
    """Add the timeline stream, ``/metrics`` and the static chart files to ``app``."""

    @app.get("/runs/{job}/{run_id}/timeline", response_class=EventSourceResponse)
    async def timeline(
        path: Annotated[Path, Depends(run_dir)],
        last_event_id: Annotated[str | None, Header()] = None,
        tail_lines: Annotated[int, Query(alias="tail", ge=0, le=20000)] = 720,
    ) -> AsyncIterable[ServerSentEvent]:
        offset = charts.parse_id(last_event_id) if last_event_id else None
        follower = charts.follow_timeline(path, offset, tail=tail_lines, interval=interval)
        try:
            async for event in follower:
                yield ServerSentEvent(raw_data=event.data, event=event.kind, id=event.id)
        finally:
            await follower.aclose()

    @app.get("/metrics")
    async def metrics() -> Response:
        from runner.serve import prom

        body = await asyncio.to_thread(prom.render, runs_dir)
        return Response(body, media_type=prom.CONTENT_TYPE)

    @app.get("/static/{name}")
    async def static(name: str) -> Response:
        if name not in STATIC:
            raise HTTPException(404, "no such file")
        data = (resources.files("runner.serve") / "web" / name).read_bytes()
        return Response(data, media_type=STATIC[name], headers={"Cache-Control": "max-age=3600"})
