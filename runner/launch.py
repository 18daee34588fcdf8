"""Running one job over one input: the Caller built from the flags, the run's log, signals, the summary.

``runner.cli`` parses the command line and turns what this raises into messages and exit codes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from runner import logs
from runner.batch_flags import batch_executor, check_batch_flags
from runner.call.deployfile import DeploymentFile, deployments_for
from runner.errors import EXIT_FAILED_ROWS, EXIT_OK, BudgetExhausted, Interrupted, RunnerError, UsageError
from runner.job.definition import Job
from runner.options import RunOptions
from runner.preflight import RUNS_DIR_FIX, STDIN, check_key, check_runs_dir, run_dir_for, stdin_copy
from runner.provider.loop import settle_heap
from runner.run.lock import holder, in_use
from runner.run.source import check_input

if TYPE_CHECKING:
    from runner.call.caller import Caller
    from runner.executors.base import Executor
    from runner.plan import CallPlan
    from runner.run.cache import CacheSettings
    from runner.run.coordinator import RunReport
    from runner.run.progress import Progress

__all__ = ["Host", "cache_settings", "caller_for_run", "refusals", "run_one"]

logger = logging.getLogger("runner")


@dataclass(frozen=True)
class Host:
    """Where a run is started from when it is not the command line (the Python API): how its progress shows,
    and a hook that receives the run's event loop and stop event (setting it stops the run as SIGINT would).
    With a host, no signal handler is installed and no run log is added: the caller's process owns both."""

    progress: Progress | None = None
    started: Callable[[asyncio.AbstractEventLoop, asyncio.Event], None] | None = None


def run_one(args: RunOptions, job: Job, input_path: Path, host: Host | None = None) -> int:
    """Run (or resume, or dry-run) ``job`` over ``input_path`` as the flags say; the exit code."""
    run_dir = run_dir_for(args, job, input_path)
    with logs.run_context(job=job.name, run_id=run_dir.name):  # JSON log lines name the run
        return _run_one(args, job, input_path, run_dir, host)


def _run_one(args: RunOptions, job: Job, input_path: Path, run_dir: Path, host: Host | None = None) -> int:
    model = args.model or job.model
    # Refusals that need neither litellm nor a model come first, so they take a fraction of a second.
    check_batch_flags(args, model, job.endpoint)
    check_runs_dir(run_dir, args.runs_dir)
    plan = deployments_for(args.deployments, job.name, job.deployments)
    _check_lanes(args, plan)
    if plan is not None:
        plan.check_model(model)  # each deployment brings its own key (checked as the file was read)
    if not args.dry_run:
        if (pid := holder(run_dir)) is not None:
            raise in_use(run_dir, pid)  # a cheap look; the coordinator takes the flock itself
        if model and not args.api_base and plan is None:
            check_key(model)
    with contextlib.ExitStack() as stack:
        if input_path == STDIN:
            path = stdin_copy(run_dir, args.dry_run, stack)
            if path is None:
                logger.warning("standard input is empty: nothing to do")
                return EXIT_OK
            input_path = path
        elif not check_input(input_path):
            logger.warning("input file %s is empty: nothing to do", input_path)
            return EXIT_OK
        return _start(args, job, input_path, run_dir, model, plan, cache_settings(args), host)


def caller_for_run(args: RunOptions, job: Job, run_dir: Path, deployments: DeploymentFile | None) -> Caller:
    """The coordinator's Caller for a run: the call plan the flags make, with the run's limits and budget."""
    # Importing litellm takes seconds: only now that the command line is known to be good.
    from runner.call.assemble import build_caller
    from runner.permits.budget import Budget
    from runner.permits.limits import Limits
    from runner.provider.prices import prices

    call_plan = _call_plan(args, job, run_dir, deployments)
    for name in call_plan.models:
        if args.max_cost and prices(name) is None:
            raise UsageError(f"--max-cost needs prices, and litellm's price map has none for model {name!r}")
        tier = args.service_tier
        if tier in ("flex", "priority") and tier not in getattr(prices(name), "tiers", ()):
            raise UsageError(f"--service-tier {tier}: litellm's price map has no {tier} prices for model {name!r} "
                             f"(the provider may not offer that tier for it); drop --service-tier, or choose a model "
                             f"that has it")  # fmt: skip
    limits = Limits(args.concurrency or job.concurrency, rpm=args.rpm or job.rpm, tpm=args.tpm or job.tpm,
                    unreachable_after=args.unreachable_after)  # fmt: skip
    return build_caller(call_plan, limits, Budget(args.max_cost, call_plan.reserved_tier) if args.max_cost else None)


def _call_plan(args: RunOptions, job: Job, run_dir: Path, deployments: DeploymentFile | None) -> CallPlan:
    """The run's one call plan: how every row becomes a request and a record, whichever executor sends it."""
    from runner.call.retry import RetryPolicy
    from runner.plan import CallPlan, TraceSettings
    from runner.provider.setup import hooks
    from runner.provider.tracing import wanted

    traced = wanted(args.otel) and not args.dry_run  # --otel or OTEL_EXPORTER_OTLP_ENDPOINT: one span per attempt
    return CallPlan(
        job=job,
        policy=RetryPolicy(max_attempts=args.max_attempts or job.max_attempts),
        timeout=args.timeout or job.timeout,
        model=args.model,
        api_base=args.api_base,
        stream=args.stream,
        keyless=args.dry_run,
        deployments=deployments,
        tracing=TraceSettings.here(job.name, run_dir.name) if traced else None,
        priced=bool(args.max_cost),
        service_tier=args.service_tier,
        tier_until=time.time() + args.flex_deadline if args.flex_deadline else None,
        hooks=tuple(hooks().items()),
        sender=args.sender,
    )


def cache_settings(args: RunOptions) -> CacheSettings:
    """The response cache and dedup the flags ask for; an unusable cache directory is refused here
    (a dry run only reads it, and does not create it)."""
    from runner.run.cache import DEFAULT_MAX_SIZE, CacheSettings, default_dir, usable_dir

    directory = None if args.no_cache else (args.cache_dir or default_dir())
    if directory is not None and not args.dry_run:
        directory = usable_dir(directory)
    return CacheSettings(directory, args.cache_max_size or DEFAULT_MAX_SIZE, dedup=not args.no_dedup)


def _start(
    args: RunOptions,
    job: Job,
    input_path: Path,
    run_dir: Path,
    model: str | None,
    plan: DeploymentFile | None,
    cache: CacheSettings,
    host: Host | None = None,
) -> int:
    concurrency = args.concurrency or job.concurrency
    caller = caller_for_run(args, job, run_dir, plan)
    if args.dry_run:
        tier = args.service_tier if args.service_tier in ("flex", "priority") else None
        lane = "batch" if args.batch_api else tier or "online"
        return _dry_run(caller, input_path, run_dir, args.max_cost, cache, lane)
    if model:
        caller.credentials_for(model)  # litellm's own check, for every model the table above does not know
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"can't create the run directory {run_dir} ({exc.strerror}); {RUNS_DIR_FIX}") from None
    # Start-up checks are done (a usage error creates no run directory). Unattended, with no terminal
    # to read, the run keeps its own log from here on.
    run_log = None if sys.stderr.isatty() or host is not None else logs.add_run_log(run_dir, args.log_format)
    try:
        code = _launch(args, caller, job, input_path, run_dir, concurrency, cache, host)
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
    args: RunOptions,
    caller: Caller,
    job: Job,
    input_path: Path,
    run_dir: Path,
    concurrency: int,
    cache: CacheSettings | None = None,
    host: Host | None = None,
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
        metrics_interval=args.metrics_interval,
        cache=cache,
    )
    progress = host.progress if host is not None and host.progress is not None else None
    progress = progress or choose_progress(args.progress_interval)
    with _executor(args, caller, run_dir, concurrency) as executor:  # None: in-process (online)
        settle_heap()
        try:
            report = asyncio.run(
                _run_until_signal(lambda stop: run(caller, settings, progress, stop, executor=executor))
                if host is None
                else _run_hosted(lambda stop: run(caller, settings, progress, stop, executor=executor), host)
            )
        finally:
            if caller.tracing is not None:
                caller.tracing.close()  # send the spans still batched
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
    if reused := report.totals.cache_hits + report.totals.cache_dedup:
        logger.info("%d rows answered without a request: %d from the response cache, %d by an identical row; "
                    "$%.4f saved", reused, report.totals.cache_hits, report.totals.cache_dedup,
                    report.totals.saved_usd)  # fmt: skip
    if estimated := report.totals.usage_estimated:
        logger.warning("%d answers came without the provider's usage (their streams ended before the usage chunk): "
                       "their tokens and cost are litellm's estimates, marked meta.usage_estimated and counted "
                       "apart in the manifest", estimated)  # fmt: skip
    if cut := report.totals.finish_reasons.get("length"):
        logger.warning("%d answers were cut off at max_tokens (finish_reason=length); raise the job's max_tokens", cut)
    if report.stop_reason == "max_cost":
        spent, cap = report.totals.cost_usd, args.max_cost or 0.0
        said = "already past" if spent > cap else "stopped before passing"
        raise BudgetExhausted(
            f"{said} --max-cost ${cap:g}: ${spent:.4f} spent on this run so far; "
            "run the same command with a higher --max-cost to finish the rest"
        )
    return EXIT_FAILED_ROWS if report.totals.failed else EXIT_OK


def _check_lanes(args: RunOptions, deployments: DeploymentFile | None) -> None:
    """Executors and options that have no meaning together are refused before anything starts (the
    README's matrix lists them, and tests/test_matrix.py keeps it true)."""
    for refusal in refusals(args, deployments is not None):
        raise UsageError(refusal)


def refusals(args: RunOptions, deployments: bool) -> list[str]:
    """Why the flags can't run together, one message per pair (empty: they can)."""
    workers, batch = args.ray, args.batch_api
    found = []
    if batch and workers:
        found.append("--batch-api and --workers/--ray-address: a Batch API run sends its files from this process "
                     "and waits on the provider; drop --workers/--ray-address (or --batch-api)")  # fmt: skip
    if batch and deployments:
        found.append("--batch-api and --deployments: a batch goes to one provider account, not to a group of "
                     "deployments; drop --deployments (or --batch-api) and name the model with --model")  # fmt: skip
    if batch and args.service_tier in ("flex", "priority"):
        found.append(f"--batch-api and --service-tier {args.service_tier}: a Batch API file is already billed at "
                     "batch prices and takes no tier; drop --service-tier (or --batch-api)")  # fmt: skip
    if args.flex_deadline and args.service_tier != "flex":
        found.append("--flex-deadline and no --service-tier flex: the deadline moves flex rows to the default "
                     "tier; add --service-tier flex or drop --flex-deadline")  # fmt: skip
    if batch and args.stream:
        found.append("--batch-api and --stream: a Batch API file has no streams (its records are the same without "
                     "it); drop --stream (or --batch-api)")  # fmt: skip
    return found


def _executor(
    args: RunOptions, caller: Caller, run_dir: Path, concurrency: int
) -> contextlib.AbstractContextManager[Executor | None]:
    """The Batch API for ``--batch-api``; Ray workers for ``--workers N`` (N > 1) or ``--ray-address``; otherwise
    None (online, in-process), and neither litellm's batch code nor Ray is imported."""
    if args.batch_api:
        return contextlib.nullcontext(batch_executor(args, caller, run_dir, concurrency))
    from runner.executors.batch_ledger import read_chunks

    if waiting := [chunk for chunk in read_chunks(run_dir) if chunk.open]:
        # Rows of this run wait in batches an earlier --batch-api start submitted (and paid for): they wait for
        # those batches whatever this start's flags; every other row goes online.
        rows, n = sum(chunk.rows for chunk in waiting), len(waiting)
        if args.ray:
            raise UsageError(f"{rows} rows of this run wait in {n} Batch API batch{'' if n == 1 else 'es'} an earlier "
                             "start submitted: run with --batch-api to collect them (or without --workers/"
                             "--ray-address: they are collected and the other rows go online)")  # fmt: skip
        from runner.executors.batch import BatchExecutor, BatchOptions

        logger.warning("%d rows of this run wait in %d Batch API batch%s an earlier --batch-api start submitted: "
                       "they wait for them (never sent again); the other rows go online", rows, n,
                       "" if n == 1 else "es")  # fmt: skip
        options = BatchOptions(submit=False, poll_s=args.batch_poll)
        return contextlib.nullcontext(BatchExecutor(caller, run_dir, concurrency, options))
    if not args.ray:
        return contextlib.nullcontext()
    from runner.executors.ray import ray_executor

    return ray_executor(caller, run_dir, args.workers, args.ray_address, concurrency)


def _dry_run(
    caller: Caller, input_path: Path, run_dir: Path, cap: float | None, cache: CacheSettings, lane: str
) -> int:
    from runner.run.estimate import estimate

    print(asyncio.run(estimate(caller, input_path, run_dir, cap, cache, lane)).report())
    return EXIT_OK


async def _run_hosted(work: Callable[[asyncio.Event], Awaitable[RunReport]], host: Host) -> RunReport:
    """Run ``work(stop)`` for a host: it gets the loop and ``stop``, and no signal handler is touched."""
    stop = asyncio.Event()
    if host.started is not None:
        host.started(asyncio.get_running_loop(), stop)
    try:
        return await work(stop)
    finally:
        from runner.provider.provider import aclose

        await aclose()


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
        from runner.provider.provider import aclose

        await aclose()
    if report.status == "interrupted" and received:
        raise Interrupted(received[0])
    return report
