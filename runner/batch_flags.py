"""The ``--batch-api`` flags: defined here so ``runner --help`` needs nothing of the batch executor."""

from __future__ import annotations

import argparse
import re
from typing import TYPE_CHECKING

from runner.errors import UsageError
from runner.job.endpoints import CHAT
from runner.options import RunOptions

if TYPE_CHECKING:
    from runner.call.caller import Caller
    from runner.executors.batch import BatchExecutor

__all__ = ["add_batch_flags", "batch_executor", "check_batch_flags", "duration"]

_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)([dhms]))")


def duration(text: str) -> float:
    """Seconds in ``6h``, ``90m``, ``1h30m``, ``45s`` or a plain number of seconds (more than 0, at most 7 days)."""
    value: float | None
    try:
        value = float(text)
    except ValueError:
        parts = _DURATION.findall(text.strip().lower())
        whole = "".join(n + u for n, u in parts) == text.strip().lower()
        value = sum(float(n) * _UNITS[u] for n, u in parts) if parts and whole else None
    if value is None or not 0 < value <= 7 * 86400:
        raise argparse.ArgumentTypeError(f"expected a duration such as 6h, 90m or 45s (at most 7d), got {text!r}")
    return value


def add_batch_flags(run: argparse.ArgumentParser) -> None:
    """The flags of the Batch API lane, on ``runner run``."""
    group = run.add_argument_group("Batch API (half price, answers within the provider's 24 h window)")
    group.add_argument(
        "--batch-api",
        action="store_true",
        help="send the rows through the provider's Batch API at batch prices instead of online calls",
    )
    group.add_argument(
        "--no-wait",
        action="store_true",
        help="with --batch-api: submit, collect what has finished, and exit 0; run the same command again to collect",
    )
    group.add_argument(
        "--batch-deadline",
        type=duration,
        metavar="DURATION",
        help="with --batch-api: rows still unanswered this long (e.g. 6h) after the first submission go online "
        "(the rescue starts a tenth of it, at most 30 min, early); their batches are cancelled",
    )
    group.add_argument(
        "--batch-poll",
        type=duration,
        default=60.0,
        metavar="DURATION",
        help="with --batch-api: the longest pause between looks at the batches (default 60s; they start at 1s)",
    )
    group.add_argument(
        "--batch-size",
        type=int,
        metavar="N",
        help="with --batch-api: at most N rows per batch (default: the provider's limit, 50,000 for OpenAI)",
    )


def check_batch_flags(args: RunOptions, model: str | None = None, endpoint: str = CHAT) -> None:
    """Batch flags without --batch-api, a bad --batch-size, a job Anthropic's or Gemini's batches can't carry, or a
    Vertex/Bedrock model (``model`` and the job's ``endpoint``, told by name: litellm is not imported yet) are usage
    errors."""
    if args.batch_api:
        if args.batch_size is not None and args.batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
        if model and "/" in model:
            from runner.executors.batch_limits import check_named

            try:
                check_named(model.split("/", 1)[0], model, endpoint, CHAT)
            except ValueError as exc:
                raise UsageError(str(exc)) from None
        return
    given = [flag for flag, on in (("--no-wait", args.no_wait),
                                   ("--batch-deadline", args.batch_deadline is not None),
                                   ("--batch-size", args.batch_size is not None)) if on]  # fmt: skip
    if given:
        verb, them = ("applies", "it") if len(given) == 1 else ("apply", "them")
        raise UsageError(f"{' and '.join(given)} {verb} only with --batch-api; add --batch-api or drop {them}")


def batch_executor(args: RunOptions, caller: Caller, run_dir: object, concurrency: int) -> BatchExecutor:
    """The batch executor the flags ask for (imports litellm's batch code: only for --batch-api runs)."""
    from pathlib import Path

    from runner.executors.batch import BatchExecutor, BatchOptions, batch_limits

    if caller.model or caller.job.model:
        # refuse an unsupported provider (or endpoint) before anything
        batch_limits(caller.model or caller.job.model or "", caller.job.endpoint)
    options = BatchOptions(
        wait=not args.no_wait, deadline_s=args.batch_deadline, poll_s=args.batch_poll, batch_size=args.batch_size
    )
    return BatchExecutor(caller, Path(str(run_dir)), concurrency, options)
