"""Running one job over one input: the Caller built from the flags, the run's log, signals, the summary.

``runner.cli`` parses the command line and turns what this raises into messages and exit codes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from runner import logs
from runner.errors import BudgetExhausted, Interrupted, RunnerError, UsageError
from runner.job.definition import BATCH, Job
from runner.run.lock import RunLock, holder, in_use
from runner.run.manifest import MANIFEST, read_manifest
from runner.run.source import check_input, spool

if TYPE_CHECKING:
    from runner.call.caller import Caller
    from runner.run.coordinator import RunReport

__all__ = ["EXIT_FAILED_ROWS", "EXIT_OK", "STDIN", "input_files", "run_dir_for", "run_one"]

logger = logging.getLogger("runner")
EXIT_OK, EXIT_FAILED_ROWS = 0, 1
STDIN = Path("-")
STDIN_COPY = "input.jsonl"  # where a run over standard input keeps what it read, to resume from
SUFFIXES = (".jsonl", ".jsonl.gz")

# The key each well-known provider needs (any one of the names), checked before litellm is imported
# (seconds) so a missing one is refused at once; litellm's own check still runs for every model after.
_KEYS: tuple[tuple[re.Pattern[str], tuple[str, ...]], ...] = tuple(
    (re.compile(pattern), names)
    for pattern, names in (
        (r"openai/|gpt-|chatgpt-|o[134](-|$)", ("OPENAI_API_KEY",)),
        (r"anthropic/|claude-", ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN")),
        (r"gemini/", ("GEMINI_API_KEY", "GOOGLE_API_KEY")),
        (r"mistral/", ("MISTRAL_API_KEY",)),
        (r"groq/", ("GROQ_API_KEY",)),
        (r"deepseek/", ("DEEPSEEK_API_KEY",)),
        (r"xai/", ("XAI_API_KEY",)),
        (r"openrouter/", ("OPENROUTER_API_KEY",)),
        (r"together_ai/", ("TOGETHERAI_API_KEY",)),
    )
)


def input_files(job: Job, given: Path | None, run_id: str | None) -> list[Path]:
    """The input file (``-``: standard input), or each ``*.jsonl[.gz]`` of a directory in name order."""
    if given is None:
        if job is BATCH:
            raise UsageError("the batch job needs --input PATH (a file of OpenAI Batch request lines)")
        given = Path("data") / f"{job.name}.jsonl"
    if given == STDIN:
        if not run_id:
            raise UsageError(
                "--input - (standard input) needs --run-id NAME: a pipe can't be read again to resume, so the "
                f"run keeps a copy in its directory ({STDIN_COPY}) and the same --run-id resumes from it"
            )
        return [STDIN]
    if given.is_dir():
        if run_id:
            raise UsageError(f"--run-id names one run, but --input {given} is a directory (one run per file)")
        found = sorted(p for p in given.iterdir() if p.name.endswith(SUFFIXES) and p.is_file())
        runs: dict[str, Path] = {}
        for path in found:
            if (other := runs.setdefault(_run_id_from(path), path)) != path:
                raise UsageError(f"{other} and {path} would both be run {_run_id_from(path)}; keep one of them")
        return found
    if not given.is_file():
        raise UsageError(f"input file {given} does not exist; give an existing JSONL file with --input PATH")
    return [given]


def _run_id_from(path: Path) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", Path(path.name.removesuffix(".gz")).stem).lstrip("._-")
    return stem or "run"


def run_dir_for(args: argparse.Namespace, job: Job, input_path: Path) -> Path:
    """``runs/<job>/<run-id>``: ``--run-id``, else the input's stem, which is the run of the job's own model.

    A ``--model`` other than the job's, over an input whose run holds the job's own model's run
    (the offline quick start, say), gets a run of its own: ``<stem>.<model with unsafe characters as _>``.
    """
    runs = args.runs_dir / job.name
    if args.run_id:
        return runs / args.run_id
    stem = _run_id_from(input_path)
    if args.model and job.model and args.model != job.model and _model_of(runs / stem) == job.model:
        slug = re.sub(r"[^A-Za-z0-9._-]", "_", args.model)
        return runs / f"{stem}.{slug}"[:128]
    return runs / stem


def _model_of(run_dir: Path) -> str | None:
    fingerprint = read_manifest(run_dir / MANIFEST).get("fingerprint")
    return fingerprint.get("model") if isinstance(fingerprint, dict) else None


def run_one(args: argparse.Namespace, job: Job, input_path: Path) -> int:
    """Run (or resume, or dry-run) ``job`` over ``input_path`` as the flags say; the exit code."""
    run_dir = run_dir_for(args, job, input_path)
    model = args.model or job.model
    # Refusals that need neither litellm nor a model come first, so they take a fraction of a second.
    _check_runs_dir(run_dir, args.runs_dir)
    if not args.dry_run:
        if (pid := holder(run_dir)) is not None:
            raise in_use(run_dir, pid)  # a cheap look; the coordinator takes the flock itself
        if model and not args.api_base:
            _check_key(model)
    with contextlib.ExitStack() as stack:
        if input_path == STDIN:
            path = _stdin_copy(run_dir, args.dry_run, stack)
            if path is None:
                logger.warning("standard input is empty: nothing to do")
                return EXIT_OK
            input_path = path
        elif not check_input(input_path):
            logger.warning("input file %s is empty: nothing to do", input_path)
            return EXIT_OK
        return _start(args, job, input_path, run_dir, model)


def _start(args: argparse.Namespace, job: Job, input_path: Path, run_dir: Path, model: str | None) -> int:
    # Importing litellm takes seconds: only now that the command line is known to be good.
    from runner.call.budget import Budget
    from runner.call.caller import Caller
    from runner.call.limits import Limits
    from runner.call.provider import prices
    from runner.call.retry import RetryPolicy

    concurrency = args.concurrency or job.concurrency
    caller = Caller(
        job=job,
        policy=RetryPolicy(max_attempts=args.max_attempts or job.max_attempts),
        timeout=args.timeout or job.timeout,
        model=args.model,
        api_base=args.api_base,
        stream=args.stream,
        limits=Limits(concurrency, rpm=args.rpm or job.rpm, tpm=args.tpm or job.tpm),
        budget=Budget(args.max_cost) if args.max_cost else None,
        keyless=args.dry_run,
    )
    if args.max_cost and model and prices(model) is None:
        raise UsageError(f"--max-cost needs prices, and litellm's price map has none for model {model!r}")
    if args.dry_run:
        return _dry_run(caller, input_path, run_dir, args.max_cost)
    if model:
        caller.credentials_for(model)  # litellm's own check, for every model the table above does not know
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"can't create the run directory {run_dir} ({exc.strerror}); {_RUNS_DIR_FIX}") from None
    # Start-up checks are done (a usage error creates no run directory). Unattended, with no terminal
    # to read, the run keeps its own log from here on.
    run_log = None if sys.stderr.isatty() else logs.add_run_log(run_dir, args.log_format)
    try:
        code = _launch(args, caller, job, input_path, run_dir, concurrency)
        logger.info("exit %d", code)
        return code
    except RunnerError as exc:
        if run_log is not None:  # stderr gets the message from main(); the run's log gets it too
            line = {"name": "runner", "levelno": logging.ERROR, "levelname": "ERROR"}
            run_log.handle(logging.makeLogRecord({**line, "msg": f"exit {exc.exit_code}: {exc}"}))
        raise
    finally:
        if run_log is not None:
            logs.remove(run_log)


_RUNS_DIR_FIX = "give a directory you can write to with --runs-dir DIR"


def _check_runs_dir(run_dir: Path, runs_dir: Path) -> None:
    """A UsageError unless the run directory exists or can be created (nothing is created here)."""
    existing = run_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"--runs-dir {runs_dir}: {existing} is a file, not a directory; {_RUNS_DIR_FIX}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"--runs-dir {runs_dir}: {existing} is not writable; make it writable or {_RUNS_DIR_FIX}")


def _check_key(model: str) -> None:
    """The key a well-known provider needs, named if missing (litellm checks the others later)."""
    for pattern, names in _KEYS:
        if pattern.match(model):
            if not any(name in os.environ for name in names):
                raise UsageError(
                    f"{names[0]} is not set: model {model!r} needs it. "
                    f"Set it (export {names[0]}=...) or choose another model with --model / MODEL=..."
                )
            return


def _stdin_copy(run_dir: Path, dry_run: bool, stack: contextlib.ExitStack) -> Path | None:
    """The run's copy of standard input, made now unless an earlier run made it; None if stdin was empty.

    The copy is written aside and renamed into place only when whole and usable, so a rerun with the
    same --run-id resumes from it (standard input is then not read). A dry run copies to a temporary
    directory instead: it writes nothing.
    """
    copy = run_dir / STDIN_COPY
    if copy.is_file():
        logger.info("resuming from %s, the copy of standard input kept by the first run; stdin is not read", copy)
        return copy
    if sys.stdin is None or sys.stdin.isatty():
        raise UsageError("--input - reads standard input, but it is a terminal: pipe the JSONL in (... | runner run)")
    if dry_run:
        copy = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="runner-stdin-"))) / STDIN_COPY
        return _spooled(copy)
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    found: Path | None = None
    try:
        with RunLock(run_dir):  # two starts with the same --run-id: one copies, the other exits 75
            found = copy if copy.is_file() else _spooled(copy)
    finally:
        if found is None and created:  # nothing usable came in: leave no run behind
            shutil.rmtree(run_dir, ignore_errors=True)
    return found


def _spooled(copy: Path) -> Path | None:
    part = copy.with_name(copy.name + ".part")
    try:
        spool(sys.stdin.buffer, part)
        usable = check_input(part, "standard input")
    except KeyboardInterrupt:
        part.unlink(missing_ok=True)
        raise Interrupted(signal.SIGINT) from None
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    if not usable:
        part.unlink()
        return None
    part.replace(copy)
    return copy


def _launch(
    args: argparse.Namespace, caller: Caller, job: Job, input_path: Path, run_dir: Path, concurrency: int
) -> int:
    from runner.run.coordinator import RunSettings, run
    from runner.run.progress import choose_progress

    model = args.model or job.model
    logger.info("job %s, model %s, input %s, run %s", job.name, model or "(from each request)", input_path, run_dir)
    settings = RunSettings(
        input_path=input_path,
        run_dir=run_dir,
        run_id=run_dir.name,
        concurrency=concurrency,
        grace=args.grace,
        retry_failed=args.retry_failed,
        allow_changes=args.allow_changes,
    )
    progress = choose_progress(args.progress_interval)
    report = asyncio.run(_run_until_signal(lambda stop: run(caller, settings, progress, stop)))
    usage = report.totals.usage()
    logger.info(
        "%s: %d succeeded, %d failed in %.1fs; %s tokens in, %s out, $%.4f; results in %s",
        report.status,
        report.totals.completed,
        report.totals.failed,
        report.elapsed,
        f"{usage['input_tokens']:,}",
        f"{usage['output_tokens']:,}",
        report.totals.cost_usd,
        run_dir,
    )
    if cut := report.totals.finish_reasons.get("length"):
        logger.warning("%d answers were cut off at max_tokens (finish_reason=length); raise the job's max_tokens", cut)
    if report.stop_reason == "max_cost":
        spent = report.totals.cost_usd
        said = "already past" if spent > args.max_cost else "stopped before passing"
        raise BudgetExhausted(
            f"{said} --max-cost ${args.max_cost:g}: ${spent:.4f} spent on this run so far; "
            "run the same command with a higher --max-cost to finish the rest"
        )
    return EXIT_FAILED_ROWS if report.totals.failed else EXIT_OK


def _dry_run(caller: Caller, input_path: Path, run_dir: Path, cap: float | None) -> int:
    from runner.run.estimate import estimate

    print(asyncio.run(estimate(caller, input_path, run_dir, cap)).report())
    return EXIT_OK


async def _run_until_signal(work: Callable[[asyncio.Event], Awaitable[RunReport]]) -> RunReport:
    """Run ``work(stop)``; the first SIGINT/SIGTERM sets ``stop``, a second cancels at once."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    stop = asyncio.Event()
    received: list[int] = []

    def on_signal(signum: int) -> None:
        received.append(signum)
        name = signal.Signals(signum).name
        if len(received) == 1:
            logger.warning("%s: finishing the requests in flight, then stopping (again to stop at once)", name)
            stop.set()
        else:
            logger.warning("%s again: cancelling the requests in flight", name)
            task.cancel()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        report = await work(stop)
    except asyncio.CancelledError:
        if not received:
            raise
        task.uncancel()
        raise Interrupted(received[0]) from None
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        from runner.call.provider import aclose

        await aclose()
    if report.status == "interrupted" and received:
        raise Interrupted(received[0])
    return report
