"""Where a run starts from: its identity, whether it may resume, and what its journal already holds.

Three ways in:
- a completed run whose input and journal have not moved since: nothing to read or send;
- ``--retry-failed``: errors.jsonl is retired and its rows are found again in the input, by id or
  by line (a fixed bad line has a new id), and sent; a retired error whose row is gone from the
  input is recorded again, so no row ever vanishes;
- otherwise the journal is scanned (from the manifest's checkpoint when it still matches) and every
  row it does not hold is to do.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.errors import RunChangedError
from runner.records import Record, error_record
from runner.redact import redact
from runner.run import fingerprint, journal
from runner.run.idset import IdSet
from runner.run.manifest import Totals, iso_now
from runner.run.source import BadLine, Row

if TYPE_CHECKING:
    from runner.call.caller import Caller
    from runner.run.coordinator import RunSettings

__all__ = ["Resume", "Retry", "input_stat", "start"]

logger = logging.getLogger(__name__)


def input_stat(path: Path) -> dict[str, int]:
    """What changes whenever the input file does, even by an edit of the same size."""
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino, "device": st.st_dev}


@dataclass
class Retry:
    """``--retry-failed``: the retired error records, and which of their rows the input still has."""

    by_id: dict[str, dict[str, Any]]
    by_line: dict[int, dict[str, Any]]
    found: set[str] = field(default_factory=set)  # custom_ids of retired records matched to a row

    @classmethod
    def of(cls, records: list[dict[str, Any]]) -> Retry:
        lines = {r["meta"]["line"]: r for r in records if isinstance((r.get("meta") or {}).get("line"), int)}
        return cls({r["custom_id"]: r for r in records}, lines)

    def wants(self, item: Row | BadLine) -> bool:
        """Whether ``item`` is the row of a retired error (same id, or the same line fixed)."""
        retired = self.by_id.get(item.custom_id) or self.by_line.get(item.line)
        if retired is None:
            return False
        self.found.add(retired["custom_id"])
        return True

    def lost(self) -> list[Record]:
        """Retired errors whose row the input no longer has: recorded again (without the paid answer,
        whose cost the retired file still counts), so the row does not vanish."""
        kept = []
        for custom_id, retired in self.by_id.items():
            if custom_id in self.found:
                continue
            error, meta = retired.get("error") or {}, dict(retired.get("meta") or {})
            message = f"{error.get('message')} (row not found in the input on --retry-failed: kept as it was)"
            meta["finished_at"] = iso_now()
            kept.append(error_record(custom_id, str(error.get("code") or "failed"), message, meta, error.get("status")))
        return kept


@dataclass
class Resume:
    """What a run starts with."""

    identity: dict[str, Any]  # the manifest's fixed part: job, model, input, fingerprint
    totals: Totals = field(default_factory=Totals)
    done: IdSet = field(default_factory=IdSet)
    retry: Retry | None = None
    complete: bool = False  # nothing to read or send
    total: int | None = None  # known when complete


async def start(caller: Caller, settings: RunSettings, previous: dict[str, Any], settled: bool = True) -> Resume:
    """Check the run may resume (RunChangedError if not), then rebuild what its journal holds (blocking parts
    in a thread). Only a run holding the lock calls this: it may repair a torn journal line. ``settled``: False
    when the executor has paid-for work to read back, so a complete run is scanned and run all the same."""
    identity = await _identity(caller, settings, previous)
    complete = settled and not settings.retry_failed
    if complete and await asyncio.to_thread(_already_complete, settings, previous):
        totals = Totals.from_checkpoint(previous["checkpoint"]["totals"])
        return Resume(identity, totals, complete=True, total=previous["request_counts"]["total"])
    retry = None
    if settings.retry_failed:
        retry = Retry.of(await asyncio.to_thread(journal.retire_errors, settings.run_dir))
        logger.info("retrying %d failed rows", len(retry.by_id))
    checkpoint = None if retry else previous.get("checkpoint")
    found = await asyncio.to_thread(journal.scan, settings.run_dir, checkpoint, True)
    return Resume(identity, found.totals, found.done, retry)


def _already_complete(settings: RunSettings, previous: dict[str, Any]) -> bool:
    """A completed run whose input file and journal have not changed since: nothing to read or send."""
    if previous.get("status") != "completed" or not isinstance(previous.get("checkpoint"), dict):
        return False
    if previous.get("input_stat") != input_stat(settings.input_path):
        return False  # it grew, or was edited (even to the same size): there may be new rows
    return journal.unchanged_since(settings.run_dir, previous["checkpoint"])


async def _identity(caller: Caller, settings: RunSettings, previous: dict[str, Any]) -> dict[str, Any]:
    identity = await fingerprint.of_run(caller, settings.input_path)
    old = previous.get("fingerprint")
    if isinstance(old, dict):
        changed = fingerprint.changes(old, identity, settings.input_path)
        if changed and not settings.allow_changes:
            raise RunChangedError(_refusal(settings, previous, changed))
        for change in changed:
            logger.warning("resuming anyway (--allow-changes): %s", change)
    return {
        "object": "batch",
        "id": settings.run_id,
        "job": {
            "name": caller.job.name,
            "source": caller.job.source,
            "model": identity["model"],
            "timeout": caller.timeout,
            "max_attempts": caller.policy.max_attempts,
            "api_base": redact(caller.api_base) if caller.api_base else None,
        },
        "input_file": identity["input"],
        "output_file": journal.RESULTS,
        "error_file": journal.ERRORS,
        "concurrency": settings.concurrency,
        "fingerprint": identity,
        "created_at": previous.get("created_at") or iso_now(),
    }


def _refusal(settings: RunSettings, previous: dict[str, Any], changed: list[str]) -> str:
    """Why a run may not resume, and what to do: --allow-changes only where it would do something."""
    said = f"run {settings.run_dir} was started differently: {'; '.join(changed)}. "
    new_run = "Start a new run with --run-id NEW (make: RUN_ID=NEW)"
    stat = input_stat(settings.input_path)
    old_size = ((previous.get("fingerprint") or {}).get("input") or {}).get("size")
    unmoved = previous.get("input_stat") == stat if "input_stat" in previous else old_size == stat["size"]
    if previous.get("status") == "completed" and unmoved:
        return said + new_run + ": this one is complete, so resuming it would send nothing"
    return said + new_run + ", or resume this one anyway with --allow-changes"
