"""Before a run starts, without importing litellm (seconds) or loading a model: what the run directory
is called and whether it can be written, the well-known providers' keys, the input files, and the
copy of standard input that a run over ``--input -`` reads and resumes from.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from runner.errors import Interrupted, UsageError
from runner.job.definition import BATCH, Job
from runner.options import RunOptions
from runner.run.lock import RunLock
from runner.run.manifest import MANIFEST, read_manifest
from runner.run.source import check_input, spool

__all__ = ["RUNS_DIR_FIX", "STDIN", "check_key", "check_runs_dir", "input_files", "run_dir_for", "stdin_copy"]

logger = logging.getLogger("runner")
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


def run_dir_for(args: RunOptions, job: Job, input_path: Path) -> Path:
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


RUNS_DIR_FIX = "give a directory you can write to with --runs-dir DIR"


def check_runs_dir(run_dir: Path, runs_dir: Path) -> None:
    """A UsageError unless the run directory exists or can be created (nothing is created here)."""
    existing = run_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"--runs-dir {runs_dir}: {existing} is a file, not a directory; {RUNS_DIR_FIX}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"--runs-dir {runs_dir}: {existing} is not writable; make it writable or {RUNS_DIR_FIX}")


def check_key(model: str) -> None:
    """The key a well-known provider needs, named if missing (litellm checks the others later)."""
    for pattern, names in _KEYS:
        if pattern.match(model):
            if not any(name in os.environ for name in names):
                raise UsageError(
                    f"{names[0]} is not set: model {model!r} needs it. "
                    f"Set it (export {names[0]}=...) or choose another model with --model / MODEL=..."
                )
            return


def stdin_copy(run_dir: Path, dry_run: bool, stack: contextlib.ExitStack) -> Path | None:
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
