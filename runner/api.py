"""runner from Python: ``runner.run(...)`` and ``await runner.arun(...)``, the same run as ``runner run``.

    result = runner.run("classify", "data/classify.jsonl", model="gpt-4o-mini", concurrency=32)
    result = await runner.arun(my_job, [{"id": 1, "text": "..."}], run_id="try-1")   # in a notebook cell

The options are ``runner run``'s flags (``RunOptions``, the same type the command line parses into;
``max_cost=5``, ``batch_api=True``, ``workers=4`` ...). The run directory, journal, manifest and
exactly-once resume are the command line's: calling again with the same job and run id continues
where the last call stopped, and ``runner status`` / ``runner serve`` see the run. Rows given as a
list are written to ``<run dir>/input.jsonl`` (a run id defaults to a hash of their content), so
the same list resumes the same run. Errors are runner's own exceptions (``runner.errors``), never
``SystemExit``; a run whose rows all got a record returns a ``RunResult``, failed rows included.

``arun`` runs the run on a thread of its own with its own event loop, so a notebook's loop stays
free; cancelling the awaiting task stops the run as Ctrl-C would (requests in flight get the grace
period, then the journal and manifest are written) and the cancellation goes on. ``run`` refuses,
with a message saying to ``await runner.arun(...)``, when called where a loop is already running.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import sys
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from runner.errors import UsageError
from runner.job.definition import Job, load_job
from runner.options import RunOptions

if TYPE_CHECKING:
    import pandas
    import pyarrow

__all__ = ["RunResult", "arun", "run"]

Rows = str | Path | Iterable[Mapping[str, Any]]
_NOT_OPTIONS = ("job", "input")  # given positionally


@dataclass(frozen=True)
class RunResult:
    """A finished (or stopped) run, read from its directory: the manifest's figures and the records."""

    run_dir: Path
    manifest: dict[str, Any]

    @classmethod
    def of(cls, run_dir: Path) -> RunResult:
        from runner.run.manifest import MANIFEST, read_manifest

        return cls(run_dir, read_manifest(run_dir / MANIFEST))

    @property
    def status(self) -> str:
        """completed, interrupted or failed (the manifest's)."""
        return str(self.manifest.get("status"))

    @property
    def counts(self) -> dict[str, int]:
        """total, completed and failed rows (the manifest's ``request_counts``)."""
        return dict(self.manifest.get("request_counts") or {})

    @property
    def cost_usd(self) -> float:
        """What the run spent, every invocation included."""
        return float(self.manifest.get("cost_usd") or 0.0)

    @property
    def usage(self) -> dict[str, int]:
        """Tokens in, out and in all."""
        return dict(self.manifest.get("usage") or {})

    def records(self) -> Iterator[dict[str, Any]]:
        """Every journaled record (results and errors), in input order (``runner export``'s ordering)."""
        from runner.export.order import Journal, input_order

        for _, raw in input_order(Journal.of(self.run_dir)):
            with contextlib.suppress(orjson.JSONDecodeError):
                yield orjson.loads(raw)

    def results(self) -> list[Any]:
        """The job's result for every successful row, in input order (the body where the job has no parser)."""
        found = []
        for record in self.records():
            if record.get("error") is None:
                found.append(record["result"] if "result" in record else record["response"]["body"])
        return found

    def errors(self) -> list[dict[str, Any]]:
        """The records of the rows that failed for good (errors.jsonl), in input order."""
        return [r for r in self.records() if r.get("error") is not None]

    def rows(self) -> Iterator[dict[str, Any]]:
        """One flat row per record, in input order: ``runner export``'s columns."""
        from runner.export.rows import record_row

        return (record_row(record) for record in self.records())

    def to_pandas(self) -> pandas.DataFrame:
        """The rows as a pandas DataFrame (pandas must be installed)."""
        try:
            import pandas
        except ImportError:
            raise UsageError("to_pandas() needs pandas: pip install pandas") from None
        return pandas.DataFrame(list(self.rows()))

    def to_arrow(self) -> pyarrow.Table:
        """The rows as a pyarrow Table (pyarrow must be installed: the ``parquet`` extra)."""
        try:
            import pyarrow
        except ImportError:
            raise UsageError("to_arrow() needs pyarrow: pip install 'runner[parquet]'") from None
        return pyarrow.Table.from_pylist(list(self.rows()))


def run(job: str | Path | Job, rows: Rows, **options: Any) -> RunResult:
    """Run (or resume) ``job`` over ``rows`` (a JSONL file, or records) with ``runner run``'s options."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _run(job, rows, options, None)
    raise UsageError(
        "runner.run() was called where an event loop is already running (a notebook cell, an async function): "
        "use `await runner.arun(...)` there instead, with the same arguments"
    )


async def arun(job: str | Path | Job, rows: Rows, **options: Any) -> RunResult:
    """``run`` for async code and notebooks: the run goes on a thread of its own; cancelling stops it cleanly."""
    lock = threading.Lock()
    handle: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
    cancelled = False

    def on_start(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
        with lock:
            handle.append((loop, stop))
            if cancelled:
                stop.set()

    worker = asyncio.ensure_future(asyncio.to_thread(_run, job, rows, options, on_start))
    try:
        return await asyncio.shield(worker)
    except asyncio.CancelledError:
        with lock:  # stop as Ctrl-C would: no new requests, the ones in flight get the grace period
            cancelled = True
            for loop, stop in handle:
                loop.call_soon_threadsafe(stop.set)
        with contextlib.suppress(Exception):
            await worker
        raise


def _run(job: str | Path | Job, rows: Rows, given: Mapping[str, Any], started: Any) -> RunResult:
    from runner.launch import Host, run_one
    from runner.local import PREFIX, install_for
    from runner.preflight import run_dir_for
    from runner.provider import setup
    from runner.run.progress import BarProgress

    options = _options(job, given)
    setup.configure()
    setup.add_model_hook(PREFIX, install_for)  # the offline local/ models, as the command line has them
    loaded = job if isinstance(job, Job) else load_job(str(job), options.jobs_dir)
    input_path, run_id = _input(loaded, rows, options)
    options = dataclasses.replace(options, input=input_path, run_id=run_id or options.run_id)
    in_notebook = "ipykernel" in sys.modules  # a notebook's bar; elsewhere a bar on a terminal, log lines under cron
    run_one(options, loaded, input_path, Host(BarProgress(notebook=True) if in_notebook else None, started))
    return RunResult.of(run_dir_for(options, loaded, input_path))


def _options(job: str | Path | Job, given: Mapping[str, Any]) -> RunOptions:
    """``runner run``'s options from keyword arguments; a UsageError names an unknown one."""
    known = {f.name for f in dataclasses.fields(RunOptions)} - set(_NOT_OPTIONS)
    unknown = sorted(set(given) - known)
    if unknown:
        raise UsageError(f"unknown option {unknown[0]!r} for runner.run(); known: {', '.join(sorted(known))}")
    paths = {k: Path(v) for k, v in given.items() if k in ("runs_dir", "jobs_dir", "deployments", "cache_dir") and v}
    name = job.name if isinstance(job, Job) else str(job)
    return RunOptions(job=name, **{**given, **paths})


def _input(job: Job, rows: Rows, options: RunOptions) -> tuple[Path, str | None]:
    """The input file and the run id it implies: ``rows`` itself (the run id is the command line's default), or
    the records written once to ``<run dir>/input.jsonl`` (the run id a hash of them unless given)."""
    if isinstance(rows, str | Path):
        path = Path(rows)
        if not path.is_file():
            raise UsageError(f"no input file {path}: give a JSONL file, or a list of records")
        return path, None
    data = b"".join(orjson.dumps(dict(record)) + b"\n" for record in rows)
    run_id = options.run_id or f"rows-{hashlib.sha256(data).hexdigest()[:12]}"
    path = options.runs_dir / job.name / run_id / "input.jsonl"
    if not path.exists() or path.read_bytes() != data:  # the same records resume the same run
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    return path, run_id
