"""The command line: parsing, logging set-up, and the only place errors become messages and exit codes.

Exit codes: 0 every row succeeded · 1 finished, some rows are in errors.jsonl · 2 bad usage, job,
input, missing API key, or a resume under a changed job/model/input · 3 stopped by a fatal provider
error (key, permission, model) · 4 stopped before passing --max-cost (resumable with a higher cap)
· 75 another process holds the run's lock · 130 / 143 interrupted by SIGINT / SIGTERM after a
clean checkpoint (run again to resume).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from runner import logs
from runner.errors import BudgetExhausted, Interrupted, JobDefinitionError, RunnerError, UsageError
from runner.jobs import BATCH, Job, list_jobs, load_job

if TYPE_CHECKING:
    from runner.pipeline import RunReport
    from runner.worker import Caller

__all__ = ["main"]

logger = logging.getLogger("runner")
EXIT_OK, EXIT_FAILED_ROWS = 0, 1


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line that says how to get help."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _whole(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected a whole number from {low} to {high}, got {text!r}")
        return value

    return parse


def _number(low: float, high: float, what: str, low_open: bool = True) -> Callable[[str], float]:
    """An argparse type: a number in (low, high] (or [low, high]), with a message that says so."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not ((low < value) if low_open else (low <= value)) or not value <= high:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


_seconds = _number(0, 86400, "a number of seconds > 0")
_rate = _number(0, 1e9, "a number per minute > 0")
_grace = _number(0, 3600, "seconds from 0 to 3600", low_open=False)
_dollars = _number(0, 1e7, "an amount of US dollars > 0, e.g. 25 or 0.50")


def _url(text: str) -> str:
    if not re.match(r"^https?://[^\s/]+", text):
        raise argparse.ArgumentTypeError(f"expected an http(s):// URL such as http://127.0.0.1:8000/v1, got {text!r}")
    return text.rstrip("/")


def _run_id(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", text):
        raise argparse.ArgumentTypeError(f"expected letters, digits, '.', '_' or '-', got {text!r}")
    return text


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="runner", description="Run a batch of LLM requests from a JSONL file, resumably.")
    parser.add_argument("--version", action="version", version="runner 0.1.0")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = commands.add_parser("run", help="run a job over a JSONL input (resumes an existing run)")
    run.add_argument("job", help="a job in --jobs-dir (e.g. classify), a path to a job .py, or 'batch'")
    run.add_argument("--input", type=Path, help="JSONL input (default: data/<job>.jsonl)")
    run.add_argument("--run-id", type=_run_id, help="run directory name (default: the input file's stem)")
    run.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where runs live (default: runs)")
    run.add_argument("--jobs-dir", type=Path, default=Path("jobs"), help="where jobs live (default: jobs)")
    run.add_argument("--model", help="litellm model string; beats the job's and the request's own")
    run.add_argument("--concurrency", type=_whole(1, 10000), help="requests in flight at once")
    run.add_argument("--max-attempts", type=_whole(1, 100), help="attempts per request, first one included")
    run.add_argument("--timeout", type=_seconds, help="seconds to wait for one answer")
    run.add_argument("--stream", action="store_true", help="stream every request (stream=True, include_usage)")
    run.add_argument("--rpm", type=_rate, help="requests per minute per model (default: the job's, else learned)")
    run.add_argument("--tpm", type=_rate, help="tokens per minute per model (default: the job's, else learned)")
    run.add_argument("--api-base", type=_url, help="an OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1")
    run.add_argument(
        "--grace",
        type=_grace,
        default=30.0,
        help="after SIGINT/SIGTERM, seconds to let in-flight requests finish (default 30)",
    )
    run.add_argument("--retry-failed", action="store_true", help="run the rows in errors.jsonl again, and only those")
    run.add_argument(
        "--max-cost",
        type=_dollars,
        metavar="USD",
        help="stop (exit 4, resumable) before the run's total spend, earlier invocations included, could pass USD",
    )
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="count the input's tokens offline and estimate the cost; send nothing, write nothing",
    )
    run.add_argument(
        "--allow-changes",
        action="store_true",
        help="resume even though the job, model or input changed since the run started",
    )
    run.add_argument(
        "--progress-interval",
        type=_seconds,
        default=10.0,
        help="seconds between progress log lines when stderr is not a terminal (default 10)",
    )
    _verbosity(run)

    status = commands.add_parser("status", help="show runs: progress, usage, cost, rate, ETA, last errors")
    status.add_argument("job", nargs="?", help="only this job's runs (default: every run)")
    status.add_argument("--run-id", type=_run_id, help="one run (default: the job's most recently updated run)")
    status.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where runs live (default: runs)")
    status.add_argument("--json", action="store_true", help="print JSON instead of text")
    _verbosity(status)

    serve = commands.add_parser("serve", help="a read-only live web view of the runs, and a one-record try-out")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, this machine only)")
    serve.add_argument("--port", type=_whole(0, 65535), default=8765, help="port (default 8765)")
    serve.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where runs live (default: runs)")
    serve.add_argument("--jobs-dir", type=Path, default=Path("jobs"), help="where jobs live (default: jobs)")
    serve.add_argument("--api-base", type=_url, help="an OpenAI-compatible server for try-outs")
    _verbosity(serve)

    jobs = commands.add_parser("jobs", help="list the jobs that `runner run` can find")
    jobs.add_argument("--jobs-dir", type=Path, default=Path("jobs"), help="where jobs live (default: jobs)")
    _verbosity(jobs)
    return parser


def _verbosity(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", help="log every retry")
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    parser.add_argument(
        "--log-format",
        choices=logs.FORMATS,
        default="text",
        help="text (default) or json: one JSON object per line, for log shippers",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = _parser().parse_args(argv)
    logs.configure(logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO, args.log_format)
    try:
        if args.command == "jobs":
            return _jobs(args.jobs_dir)
        if args.command == "status":
            from runner.status import show_status

            return show_status(args.runs_dir, args.job, args.run_id, as_json=args.json)
        if args.command == "serve":
            from runner.serve import serve

            return serve(args.host, args.port, args.runs_dir, args.jobs_dir, api_base=args.api_base)
        return _run(args)
    except RunnerError as exc:
        print(f"runner: {exc}", file=sys.stderr)
        return exc.exit_code


def _jobs(jobs_dir: Path) -> int:
    for item in list_jobs(jobs_dir):
        if isinstance(item, JobDefinitionError):
            print(f"(broken)  {item}")
        else:
            print(f"{item.name:<12} {item.model or '(from input)':<24} {item.description}")
    return EXIT_OK


def _resolve(args: argparse.Namespace) -> tuple[Job, Path, Path]:
    job = load_job(args.job, args.jobs_dir)
    if args.input is None:
        if job is BATCH:
            raise UsageError("the batch job needs --input PATH (a file of OpenAI Batch request lines)")
        args.input = Path("data") / f"{job.name}.jsonl"
    if not args.input.is_file():
        raise UsageError(f"input file {args.input} does not exist; give an existing JSONL file with --input PATH")
    run_id = args.run_id or _run_id_from(args.input)
    return job, args.input, args.runs_dir / job.name / run_id


def _install_local(job: Job, model: str) -> None:
    """Register the offline provider and the job's labels with litellm."""
    from runner.local_model import install, register_labels

    if not job.labels:
        raise UsageError(f"model {model} needs the job to declare labels (Job(labels={{label: [phrases]}}))")
    install()
    try:
        register_labels(model, job.labels)
    except ValueError as exc:
        raise JobDefinitionError(f"job {job.name}: {exc}") from exc


def _run_id_from(path: Path) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", path.stem).lstrip("._-")
    return stem or "run"


def _run(args: argparse.Namespace) -> int:
    job, input_path, run_dir = _resolve(args)
    # Importing litellm takes seconds: only now that the command line is known to be good.
    from runner.budget import Budget
    from runner.limits import Limits
    from runner.provider import prices
    from runner.retry import RetryPolicy
    from runner.worker import Caller

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
    model = args.model or job.model
    if model and model.startswith("local/"):
        _install_local(job, model)
    if args.max_cost and model and prices(model) is None:
        raise UsageError(f"--max-cost needs prices, and litellm's price map has none for model {model!r}")
    if args.dry_run:
        return _dry_run(caller, input_path, run_dir)
    if model:
        caller.credentials_for(model)  # a missing key fails here, before any input is read
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


def _launch(
    args: argparse.Namespace, caller: Caller, job: Job, input_path: Path, run_dir: Path, concurrency: int
) -> int:
    from runner.pipeline import RunSettings, run
    from runner.progress import choose_progress

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
        raise BudgetExhausted(
            f"stopped before passing --max-cost ${args.max_cost:g}: ${report.totals.cost_usd:.4f} spent so far; "
            "run the same command with a higher --max-cost to finish the rest"
        )
    return EXIT_FAILED_ROWS if report.totals.failed else EXIT_OK


def _dry_run(caller: Caller, input_path: Path, run_dir: Path) -> int:
    from runner.estimate import estimate

    print(asyncio.run(estimate(caller, input_path, run_dir)).report())
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
        from runner.provider import aclose

        await aclose()
    if report.status == "interrupted" and received:
        raise Interrupted(received[0])
    return report
