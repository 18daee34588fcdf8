"""What each run directory says about itself, read without disturbing a live run (`runner status`,
`runner serve`; ``runner.serve.show`` prints it).

Everything here only reads: the manifest (replaced atomically, so never torn), the PID in the lock
file (``lock.holder``, which never tries the flock: that would make a run starting at that instant
exit 75) and at most the last 64 KiB of errors.jsonl (a journal can hold millions of lines).
"""

from __future__ import annotations

import calendar
import os
import time
from pathlib import Path
from typing import Any

import orjson

from runner.records import ERRORS, RESULTS
from runner.run.lock import LOCK, holder
from runner.run.manifest import MANIFEST, read_manifest

__all__ = ["find_runs", "read_run"]

TAIL_BYTES = 64 * 1024
USAGE_KEYS = ("input_tokens", "output_tokens", "total_tokens", "cached_tokens", "reasoning_tokens")


def find_runs(runs_dir: Path, job: str | None = None) -> list[Path]:
    """Run directories (``runs_dir/<job>/<run_id>/``), most recently updated first.

    A run directory holds manifest.json, or just the lock file of a run that has not written one yet.
    ``job`` is matched against the folder names, never joined into a path.
    """
    found: list[tuple[int, str, Path]] = []
    for job_dir in _subdirs(runs_dir):
        if job is not None and job_dir.name != job:
            continue
        for run_dir in _subdirs(job_dir):
            for name in (MANIFEST, LOCK):
                try:
                    found.append((-(run_dir / name).stat().st_mtime_ns, str(run_dir), run_dir))
                    break
                except OSError:
                    continue
    return [run_dir for *_, run_dir in sorted(found)]


def _subdirs(path: Path) -> list[Path]:
    try:
        return [p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")]
    except OSError:
        return []


def read_run(run_dir: Path, last_errors: int = 5, *, now: float | None = None) -> dict[str, Any]:
    """A JSON-able status of one run; safe to call while a ``runner run`` process is writing it.

    ``status`` is the manifest's, except: ``stopped`` for an in_progress run whose process is gone,
    and ``starting`` while a live process holds a lock taken after the manifest was last written
    (a new run, or a resume that has not written its first manifest yet). ``state`` is the word a
    person is shown: ``running`` for a live in_progress run, ``completed with errors`` for a completed
    run with failed rows, else ``status``. ``ok`` and ``completed`` both count the rows with a result
    (``completed`` is the manifest's, OpenAI Batch's, name for it); ``failed`` those in errors.jsonl.
    """
    manifest = read_manifest(run_dir / MANIFEST)
    status = manifest.get("status") or None
    pid = holder(run_dir)
    restarted = pid is not None and _lock_is_newer(run_dir)
    running = restarted or (pid is not None and status == "in_progress")
    if restarted:
        status = "starting"
    elif status in (None, "in_progress") and not running:
        status = "stopped"
    counts = manifest.get("request_counts") or {}
    total = counts.get("total")
    completed, failed = counts.get("completed") or 0, counts.get("failed") or 0
    if not counts and not running:  # no manifest, or an unreadable one: the journal says how far the run got
        completed, failed = _lines(run_dir / RESULTS), _lines(run_dir / ERRORS)
    done = completed + failed
    rate = manifest.get("rows_per_s")
    eta = None
    if running and status == "in_progress" and rate and total is not None:
        eta = round(max(0, total - done) / rate, 1)
    models = manifest.get("models") or {}
    usage = manifest.get("usage") or {}
    return {
        "job": run_dir.parent.name,
        "run_id": run_dir.name,
        "path": str(run_dir),
        "status": status,
        "state": _state(status, running, failed),
        "running": running,
        "pid": pid if running else None,
        "model": (manifest.get("job") or {}).get("model") or ", ".join(sorted(models)) or None,
        "created_at": manifest.get("created_at"),
        "updated_at": manifest.get("updated_at"),
        "age_s": _age(manifest.get("updated_at"), time.time() if now is None else now),
        "elapsed_s": manifest.get("elapsed_s"),
        "total": total,
        "ok": completed,
        "completed": completed,
        "failed": failed,
        "done": done,
        "percent": None if total is None else 100.0 if total == 0 else round(100 * done / total, 1),
        "usage": {k: usage.get(k) or 0 for k in USAGE_KEYS},
        "cost_usd": manifest.get("cost_usd") or 0.0,
        "cost_known": manifest.get("cost_known", True),
        "unpriced_requests": sum(m.get("unpriced_requests") or 0 for m in models.values()),
        "max_cost_usd": manifest.get("max_cost_usd"),
        "stop_reason": manifest.get("stop_reason"),
        "rows_per_s": rate,
        "eta_s": eta,
        "finish_reasons": manifest.get("finish_reasons") or {},
        "error_codes": manifest.get("error_codes") or {},
        "retries": manifest.get("retries") or 0,
        "rate_limited": manifest.get("rate_limited") or 0,
        "retired_errors": manifest.get("retired_errors") or 0,
        "reasks": manifest.get("reasks") or 0,
        # answers whose usage is litellm's estimate (a stream that ended before its usage chunk)
        "usage_estimated": {"rows": 0, "tokens": 0, **(manifest.get("usage_estimated") or {})},
        "cache": {"hits": 0, "dedup": 0, "saved_usd": 0.0, **(manifest.get("cache") or {})},  # rows reused
        "limits": manifest.get("limits") or {},
        "deployments": manifest.get("deployments") or {},  # per deployment (--deployments): usage, 429s, errors
        "workers": manifest.get("workers"),  # Ray workers: alive, replaced, rows in flight each (None: in-process)
        "run_errors": manifest.get("errors") or [],  # why a failed run stopped
        "last_errors": _last_errors(run_dir / ERRORS, last_errors),
        "lanes": {k: v.get("cost_usd") for k, v in (manifest.get("lanes") or {}).items()},  # cost by lane
        # --batch-api: batches not collected yet, as the executor reported them (its manifest section)
        "batches": (manifest.get("batches") or {}).get("open") or [],
        "by_lane": manifest.get("lanes") or {},  # the manifest's lanes whole: requests, usage, cost each
        "batch_api": manifest.get("batches"),  # the manifest's --batch-api section (None: no Batch API)
    }


def _lines(path: Path) -> int:
    """Whole lines in a journal file (0 if there is none), read in blocks."""
    try:
        with path.open("rb") as f:
            return sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 20), b""))
    except OSError:
        return 0


def _state(status: str | None, running: bool, failed: int) -> str:
    if status == "in_progress" and running:
        return "running"
    if status == "completed" and failed:
        return "completed with errors"  # "completed" alone reads as success, even with every row failed
    return str(status)


def _lock_is_newer(run_dir: Path) -> bool:
    """Whether the lock was taken after the manifest was last written (or there is no manifest)."""
    try:
        lock = (run_dir / LOCK).stat().st_mtime_ns
    except OSError:
        return False
    try:
        return lock > (run_dir / MANIFEST).stat().st_mtime_ns
    except OSError:
        return True


def _age(stamp: Any, now: float) -> float | None:
    try:
        then = calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ"))
    except (TypeError, ValueError):
        return None
    return round(max(0.0, now - then), 1)


def _last_errors(path: Path, n: int) -> list[dict[str, Any]]:
    """The last ``n`` whole records of an errors file, oldest first, from its last TAIL_BYTES only."""
    if n <= 0:
        return []
    try:
        with path.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            start = max(0, size - TAIL_BYTES)
            f.seek(max(0, start - 1))  # one byte more: is the window's first line whole?
            data = f.read(size - max(0, start - 1))
    except OSError:
        return []
    if start > 0:
        data = data[data.find(b"\n") + 1 :] if b"\n" in data else b""
    found: list[dict[str, Any]] = []
    for line in reversed(data.split(b"\n")[:-1]):  # the last part is a torn line, or empty
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(record, dict):
            error, meta = record.get("error") or {}, record.get("meta") or {}
            found.append(
                {
                    "custom_id": record.get("custom_id"),
                    "code": error.get("code") if isinstance(error, dict) else None,
                    "message": error.get("message") if isinstance(error, dict) else None,
                    "line": meta.get("line") if isinstance(meta, dict) else None,
                }
            )
            if len(found) == n:
                break
    return found[::-1]
