"""The command line: parsing, logging set-up, and the only place errors become messages and exit codes.

Exit codes: 0 every row succeeded · 1 finished, some rows are in errors.jsonl · 2 bad usage, job,
input, missing API key, or a resume under a changed job/model/input · 3 stopped by a fatal provider
error (key, permission, model) · 4 stopped before passing --max-cost (resumable with a higher cap)
· 75 another process holds the run's lock · 130 / 143 interrupted by SIGINT / SIGTERM after a
clean checkpoint (run again to resume).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from runner import __version__, local, logs
from runner.batch_flags import add_batch_flags, duration
from runner.errors import EXIT_OK, BudgetExhausted, JobDefinitionError, LockedError, RunnerError
from runner.job.definition import list_jobs, load_job
from runner.plan import TIERS
from runner.provider import setup
from runner.redact import redact

if TYPE_CHECKING:
    from runner.options import RunOptions

__all__ = ["main"]

logger = logging.getLogger("runner")


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
# Below one a minute no request or token could ever be sent in a minute; fractions above 1 are kept.
_rate = _number(1, 1e9, "a number per minute of at least 1", low_open=False)
_grace = _number(0, 3600, "seconds from 0 to 3600", low_open=False)
_dollars = _number(0, 1e7, "an amount of US dollars > 0, e.g. 25 or 0.50")


def _size(text: str) -> int:
    from runner.run.cache import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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
    parser.add_argument("--version", action="version", version=f"runner {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = commands.add_parser("run", help="run a job over a JSONL input (resumes an existing run)")
    run.add_argument("job", help="a job in --jobs-dir (e.g. classify), a path to a job .py, or 'batch'")
    run.add_argument(
        "--input",
        type=Path,
        help="JSONL or .jsonl.gz file, a directory of them, or - for stdin (default: data/<job>.jsonl)",
    )
    run.add_argument("--run-id", type=_run_id, help="run directory name (default: the input file's stem; see README)")
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
        "--deployments",
        type=Path,
        metavar="FILE",
        help="several deployments (keys, regions, providers) behind the model name, with fallbacks: a YAML or "
        "JSON file shaped like litellm's proxy config (model_list, fallbacks); see README",
    )
    run.add_argument(
        "--unreachable-after",
        type=_grace,
        default=60.0,
        metavar="SECONDS",
        help="stop (exit 3, resumable) when a model has answered nothing for SECONDS and 5 requests in a row "
        "ran out of attempts with no answer at all (connection errors, time-outs); their rows stay to do (default 60)",
    )
    run.add_argument(
        "--grace",
        type=_grace,
        default=30.0,
        help="after SIGINT/SIGTERM, seconds to let in-flight requests finish (default 30)",
    )
    run.add_argument(
        "--workers",
        type=_whole(1, 4096),
        help="worker processes (Ray actors) sending requests; more than 1 starts a local Ray cluster for the run "
        "(default 1: this process only; with --ray-address: the cluster's CPUs)",
    )
    run.add_argument(
        "--ray-address",
        default=os.environ.get("RAY_ADDRESS") or None,
        metavar="ADDR",
        help="join the Ray cluster at ADDR (e.g. 10.0.0.5:6379, or 'auto') and place the workers across it "
        "(default: $RAY_ADDRESS)",
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
    reuse = run.add_mutually_exclusive_group()
    reuse.add_argument(
        "--no-cache",
        action="store_true",
        help="neither use nor store answers in the response cache (e.g. for fresh samples at temperature > 0); "
        "identical rows within the input still share one answer unless --no-dedup",
    )
    reuse.add_argument(
        "--cache-dir",
        type=Path,
        help="the response cache, shared by every run (default: $XDG_CACHE_HOME/runner/responses, "
        "else ~/.cache/runner/responses)",
    )
    run.add_argument(
        "--cache-max-size",
        type=_size,
        metavar="SIZE",
        help="bound on the cache's size on disk, e.g. 500M or 4G; the oldest answers go first (default 1G)",
    )
    run.add_argument(
        "--no-dedup",
        action="store_true",
        help="send every row, even one whose request is identical to another row's in this input",
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
    # Watching a run over time (README: "Metrics"): the timeline, OpenTelemetry spans.
    run.add_argument(
        "--metrics-interval",
        type=_grace,
        default=5.0,
        metavar="SECONDS",
        help="seconds between lines of the run's metrics.jsonl timeline (default 5; 0: no timeline)",
    )
    run.add_argument(
        "--sender",
        choices=("auto", "litellm"),
        default="auto",
        help="how requests are sent: auto (plain chat and embeddings to OpenAI-compatible servers straight "
        "over HTTP, the rest through litellm; the records are the same) or litellm (every request through "
        "litellm.acompletion / aembedding, to compare)",
    )
    run.add_argument(
        "--otel",
        action="store_true",
        help="one OpenTelemetry span per request attempt, sent over OTLP/HTTP to OTEL_EXPORTER_OTLP_ENDPOINT "
        "(default http://localhost:4318; setting that variable turns it on too); needs the otel extra",
    )
    run.add_argument(
        "--service-tier",
        choices=TIERS,
        help="the provider's service tier for every chat request: flex (batch prices, slower, sometimes 'resource "
        "unavailable'), priority, auto or default; refused at start-up for a model with no such prices",
    )
    run.add_argument(
        "--flex-deadline",
        type=duration,
        metavar="DURATION",
        help="with --service-tier flex: rows still unanswered this long (e.g. 6h) after the start go at the "
        "default tier, so a night ends by morning",
    )
    add_batch_flags(run)
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
    serve.add_argument(
        "--token",
        default=os.environ.get("RUNNER_TOKEN") or None,
        help="require this token for every request (default: $RUNNER_TOKEN; beyond loopback, a new one is made "
        "and printed with the URL)",
    )
    serve.add_argument("--metrics-token", help="a token that opens /metrics only (for a Prometheus scraper)")
    _verbosity(serve)

    export = commands.add_parser("export", help="a run's rows as one table in input order: JSONL, CSV or Parquet")
    export.add_argument("job", help="the job whose run to export")
    export.add_argument("--run-id", type=_run_id, help="the run (default: the job's most recently updated run)")
    export.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where runs live (default: runs)")
    export.add_argument("--format", choices=("jsonl", "csv", "parquet"), help="default: --output's suffix, else jsonl")
    export.add_argument("--output", type=Path, help="file to write (default: standard output; Parquet needs one)")
    export.add_argument("--order", choices=("input", "finished"), default="input", help="row order (default: input)")
    export.add_argument("--with-input", action="store_true", help="add each input row's own fields; rows not done yet")
    _verbosity(export)

    jobs = commands.add_parser("jobs", help="list the jobs that `runner run` can find")
    jobs.add_argument("--jobs-dir", type=Path, default=Path("jobs"), help="where jobs live (default: jobs)")
    _verbosity(jobs)
    return parser


def _verbosity(parser: argparse.ArgumentParser) -> None:
    loudness = parser.add_mutually_exclusive_group()
    loudness.add_argument("-v", "--verbose", action="store_true", help="log every retry")
    loudness.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    parser.add_argument(
        "--log-format",
        choices=logs.FORMATS,
        default="text",
        help="text (default) or json: one JSON object per line, for log shippers",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = _parser().parse_args(argv)
    setup.configure()  # litellm stays offline, whichever command imports it
    setup.add_model_hook(local.PREFIX, local.install_for)  # the offline local/ models
    logs.configure(logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO, args.log_format)
    try:
        if args.command == "jobs":
            return _jobs(args.jobs_dir)
        if args.command == "status":
            from runner.serve.show import show_status

            return show_status(args.runs_dir, args.job, args.run_id, as_json=args.json)
        if args.command == "export":
            from runner.export.command import Export, export_run

            export_run(Export(args.runs_dir, args.job, args.run_id, args.format, args.output, args.order,
                              args.with_input))  # fmt: skip
            return EXIT_OK
        if args.command == "serve":
            from runner.serve.app import serve

            return serve(args.host, args.port, args.runs_dir, args.jobs_dir, api_base=args.api_base,
                         token=args.token, metrics_token=args.metrics_token)  # fmt: skip
        return _run(args)
    except RunnerError as exc:
        _say(str(exc), args.log_format)
        return exc.exit_code


def run_options(argv: Sequence[str]) -> RunOptions:
    """The options of a ``runner run`` command line (``argv`` starts with ``run``); SystemExit if it doesn't parse."""
    from runner.options import RunOptions

    args = _parser().parse_args(argv)
    if args.command != "run":
        raise ValueError(f"not a `runner run` command line: {' '.join(argv)}")
    return RunOptions.from_namespace(args)


def _jobs(jobs_dir: Path) -> int:
    """Every job with its model and where it came from (a Python module or a TOML/YAML template)."""
    rows, broken = [("JOB", "MODEL", "FROM", "DESCRIPTION")], []
    for item in list_jobs(jobs_dir):
        if isinstance(item, JobDefinitionError):
            broken.append(f"(broken)  {item}")
        else:
            origin = "built in" if item.source.startswith("runner.") else item.source
            rows.append((item.name, item.model or "(from input)", origin, item.description))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[3])
    for line in broken:
        print(line)
    return EXIT_OK


def _run(parsed: argparse.Namespace) -> int:
    """One input file, or every file of an input directory that is not finished yet (cron's use)."""
    from runner.launch import run_one
    from runner.options import RunOptions
    from runner.preflight import input_files

    args = RunOptions.from_namespace(parsed)
    job = load_job(args.job, args.jobs_dir)
    inputs = input_files(job, args.input, args.run_id)
    if not args.input or not args.input.is_dir():
        return run_one(args, job, inputs[0])
    if not inputs:
        logger.info("nothing to do: %s has no *.jsonl or *.jsonl.gz files", args.input)
        return EXIT_OK
    worst = EXIT_OK
    for path in inputs:
        try:
            code = run_one(args, job, path)
        except (LockedError, BudgetExhausted) as exc:  # this run can't go on now; the next one may
            _say(str(exc), args.log_format)
            code = exc.exit_code
        worst = max(worst, code)
    return worst


def _say(message: str, log_format: str) -> None:
    """What stopped a run: one plain line on stderr, or one more JSON log line with --log-format json."""
    if log_format == "json":
        logger.error("%s", message)
    else:
        print(f"runner: {redact(message)}", file=sys.stderr)
