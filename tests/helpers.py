"""Running a job in-process against the fake provider, through litellm's real HTTP path."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
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
from tests.conftest import ROOT, read_jsonl, write_jsonl
from tests.fake_provider import FakeProvider

CLASSIFY = load_job("classify", ROOT / "jobs")
MODEL = "openai/gpt-4o-mini"


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


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Block until ``condition()`` holds (a file reached a line count, a log line appeared).

    For things only a file shows (another process's journal or log): checked every 20 ms, and
    ``timeout`` is only there to fail a broken test instead of hanging it; nothing here assumes how
    long the thing usually takes.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.02)


class Lines:
    """Counts the complete lines of a file another process appends to, reading only what is new."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._read = 0
        self._count = 0

    def __call__(self) -> int:
        """Complete lines so far (0 while the file does not exist; starts over if it shrank)."""
        try:
            with self.path.open("rb") as f:
                if f.seek(0, 2) < self._read:  # truncated (a torn line cut off on resume): count again
                    self._read = self._count = 0
                f.seek(self._read)
                data = f.read()
        except FileNotFoundError:
            return 0
        end = data.rfind(b"\n") + 1  # a partial last line is counted once it is whole
        self._read += end
        self._count += data.count(b"\n", 0, end)
        return self._count


def line_count(path: Path) -> int:
    """Complete lines in ``path`` so far (0 if it does not exist yet)."""
    return Lines(path)()


def text_of(path: Path) -> str:
    """``path``'s text so far ('' if it does not exist yet)."""
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


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
