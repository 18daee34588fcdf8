"""A job run in-process against the fake provider (litellm's real HTTP path), and the tickets it classifies."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import looptime
import orjson

from runner.call.caller import Caller
from runner.call.retry import RetryPolicy
from runner.job.definition import Job, load_job
from runner.permits.budget import Budget
from runner.permits.limits import Limits
from runner.provider.provider import Complete, aclose
from runner.run.coordinator import RunReport, RunSettings, run
from tests.doubles.provider import FakeProvider
from tests.support.files import ROOT, read_jsonl, write_jsonl

CLASSIFY = load_job("classify", ROOT / "jobs")
MODEL = "openai/gpt-4o-mini"


def _build(record: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": record["text"]}], "max_tokens": 5}


def _label(body: Any) -> str:
    return str(body["choices"][0]["message"]["content"]).strip()


INLINE = Job(name="inline", build_request=_build, parse_result=_label, model=MODEL)  # a job made in Python


@dataclass
class Cluster:
    """The module's Ray cluster (the ``ray_cluster`` fixture): what records its processes, and the file sends are
    stamped in."""

    record: Callable[[], object] | None
    stamps: Path


@dataclass
class Finished:
    """A run's report and the files it left."""

    report: RunReport
    results: list[dict[str, Any]]
    errors: list[dict[str, Any]]
    manifest: dict[str, Any]


def caller_for(
    provider: FakeProvider,
    job: Job = CLASSIFY,
    max_attempts: int = 4,
    timeout: float = 5.0,
    limits: Limits | None = None,
) -> Caller:
    """A Caller pointed at the fake provider, with back-off short enough for tests."""
    policy = RetryPolicy(max_attempts=max_attempts, base_wait=0.01, max_wait=0.05)
    limits = limits or Limits(16)
    return Caller(job=job, policy=policy, timeout=timeout, model=MODEL, api_base=provider.url, limits=limits)


async def run_rows(
    tmp_path: Path,
    provider: FakeProvider,
    rows: list[Any] | None,
    concurrency: int = 8,
    stop: asyncio.Event | None = None,
    job: Job = CLASSIFY,
    max_attempts: int = 4,
    timeout: float = 5.0,  # noqa: ASYNC109  (the provider call's time-out, not this function's)
    rpm: float | None = None,
    tpm: float | None = None,
    budget: Budget | None = None,
    complete: Complete | None = None,
    **settings: Any,
) -> Finished:
    """Write ``rows`` as the input (None: keep the existing input), run, and read the run back."""
    tmp_path.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240
    input_path = tmp_path / "in.jsonl"
    if rows is not None:
        write_jsonl(input_path, rows)
    run_dir = tmp_path / "run"
    options = RunSettings(input_path=input_path, run_dir=run_dir, run_id="run", concurrency=concurrency, **settings)
    limits = Limits(concurrency, rpm=rpm, tpm=tpm)
    caller = caller_for(provider, job=job, max_attempts=max_attempts, timeout=timeout, limits=limits)
    caller = dataclasses.replace(caller, budget=budget)
    if complete is not None:  # e.g. litellm's acompletion wrapped to record when each request went
        caller = dataclasses.replace(caller, complete=complete)
    try:
        report = await run(caller, options, stop=stop)
    finally:
        await aclose()
    return finished(report, run_dir)


def finished(report: RunReport, run_dir: Path) -> Finished:
    """Read the run directory back."""
    manifest = orjson.loads((run_dir / "manifest.json").read_bytes())
    return Finished(report, read_jsonl(run_dir / "results.jsonl"), read_jsonl(run_dir / "errors.jsonl"), manifest)


def tickets(n: int, prefix: str = "t") -> list[dict[str, Any]]:
    """``n`` distinct tickets that the fake provider classifies by keyword."""
    texts = [
        "the app shows an error when I upload a file",
        "please add dark mode",
        "I was charged twice this month",
        "what are your office hours",
    ]
    return [{"id": f"{prefix}-{i:04d}", "text": f"{texts[i % 4]} (ticket {prefix}{i})"} for i in range(n)]


def virtual_time(test: Callable[[], Awaitable[None]]) -> Callable[[], None]:
    """Run an async test on a loop whose clock jumps ahead whenever everything is asleep."""

    @functools.wraps(test)
    def run() -> None:
        loop = looptime.new_event_loop(start=0)
        try:
            loop.run_until_complete(test())
        finally:
            loop.close()

    return run
