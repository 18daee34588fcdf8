"""`runner status`: what each run directory says about itself, read without disturbing a live run.

Everything here only reads: the manifest (replaced atomically, so never torn), the PID in the lock
file (``lock.holder``, which never tries the flock: that would make a run starting at that instant
exit 75) and at most the last 64 KiB of errors.jsonl (a journal can hold millions of lines).
"""

from __future__ import annotations

import calendar
import os
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from runner.errors import UsageError
from runner.journal import ERRORS
from runner.lock import LOCK, holder
from runner.manifest import MANIFEST, read_manifest

__all__ = ["find_runs", "read_run", "show_status"]

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
    (a new run, or a resume that has not written its first manifest yet).
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
        "running": running,
        "pid": pid if running else None,
        "model": (manifest.get("job") or {}).get("model") or ", ".join(sorted(models)) or None,
        "created_at": manifest.get("created_at"),
        "updated_at": manifest.get("updated_at"),
        "age_s": _age(manifest.get("updated_at"), time.time() if now is None else now),
        "elapsed_s": manifest.get("elapsed_s"),
        "total": total,
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
        "limits": manifest.get("limits") or {},
        "run_errors": manifest.get("errors") or [],  # why a failed run stopped
        "last_errors": _last_errors(run_dir / ERRORS, last_errors),
    }


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


def show_status(runs_dir: Path, job: str | None, run_id: str | None, *, as_json: bool = False) -> int:
    """Print every run as a table, or one run in detail (``--run-id``, or a job's latest); returns 0.

    ``--json`` prints one object when ``--run-id`` names a run, else a list, most recent first.
    """
    if run_id is not None:
        run = read_run(_named_run(runs_dir, job, run_id))
        _print(orjson.dumps(run, option=orjson.OPT_INDENT_2).decode() if as_json else "\n".join(_detail(run)))
        return 0
    runs = [read_run(r, last_errors=5 if as_json or job else 0) for r in find_runs(runs_dir, job)]
    if not runs:
        raise UsageError(_nothing_found(runs_dir, job))
    if as_json:
        _print(orjson.dumps(runs, option=orjson.OPT_INDENT_2).decode())
    elif job is None:
        _print("\n".join(_table(runs)))
    else:
        others = ["", f"other runs of {job} (runner status {job} --run-id ID):", *_table(runs[1:])]
        _print("\n".join(_detail(runs[0]) + (others if len(runs) > 1 else [])))
    return 0


def _print(text: str) -> None:
    sys.stdout.write(text + "\n")


def _named_run(runs_dir: Path, job: str | None, run_id: str) -> Path:
    runs = find_runs(runs_dir, job)
    matches = [r for r in runs if r.name == run_id]
    if len(matches) == 1:
        return matches[0]
    if matches:
        jobs = ", ".join(sorted(r.parent.name for r in matches))
        raise UsageError(f"run {run_id} exists for several jobs ({jobs}); name one: runner status JOB --run-id ID")
    if not runs:
        raise UsageError(_nothing_found(runs_dir, job))
    names = _names([r.name for r in runs] if job else [f"{r.parent.name}/{r.name}" for r in runs])
    where = f"for job {job}" if job else f"in {runs_dir}"
    raise UsageError(f"no run {run_id} {where} (runs: {names}); pick one of those with --run-id")


def _nothing_found(runs_dir: Path, job: str | None) -> str:
    jobs = sorted({r.parent.name for r in find_runs(runs_dir)})
    if job is not None and jobs:
        return f"no runs of job {job} in {runs_dir} (jobs with runs: {_names(jobs)})"
    return f"no runs found in {runs_dir}; start one with `runner run JOB`, or pass --runs-dir DIR where runs live"


def _names(names: list[str], most: int = 8) -> str:
    return ", ".join(names[:most]) + (f", … ({len(names) - most} more)" if len(names) > most else "")


def _table(runs: list[dict[str, Any]]) -> list[str]:
    """One line per run, columns aligned."""
    rows = [("RUN", "STATUS", "DONE/TOTAL", "%", "FAILED", "TOKENS", "COST", "RATE", "UPDATED")]
    for r in runs:
        rows.append(
            (
                f"{r['job']}/{r['run_id']}",
                _state(r),
                f"{r['done']:,}/{'?' if r['total'] is None else format(r['total'], ',')}",
                "-" if r["percent"] is None else f"{r['percent']:.1f}",
                f"{r['failed']:,}",
                _tokens(r["usage"]["total_tokens"]),
                _cost(r),
                "-" if r["rows_per_s"] is None else f"{r['rows_per_s']:.1f}/s",
                _ago(r["age_s"]),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    right = {2, 3, 4, 5, 6, 7}  # numbers line up on the right
    aligned = [[c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(row)] for row in rows]
    return ["  ".join(row).rstrip() for row in aligned]


def _detail(r: dict[str, Any]) -> list[str]:
    """A few labelled lines about one run."""
    usage, total = r["usage"], r["total"]
    if total is None:
        progress = f"{r['done']:,} rows so far (the input is still being counted)"
    else:
        progress = f"{r['done']:,} of {total:,} rows ({r['percent']:.1f}%)"
    rate = "unknown" if r["rows_per_s"] is None else f"{r['rows_per_s']:.1f} rows/s"
    if r["eta_s"] is not None:
        rate += f", ETA {_duration(r['eta_s'])}"
    elif r["rows_per_s"] is not None and not r["running"]:
        rate += " (its last invocation)"
    cost = _cost(r).rstrip("+")
    if r["max_cost_usd"] is not None:
        cost += f" of at most ${r['max_cost_usd']:g}"
    if not r["cost_known"]:
        cost += f" (unknown for {r['unpriced_requests']:,} answers: no price for their model)"
    lines = [
        f"{r['job']}/{r['run_id']}  {r['path']}",
        f"status    {_status_line(r)}",
        f"model     {r['model'] or '(from each request)'}",
        f"progress  {progress}: {r['completed']:,} succeeded, {r['failed']:,} failed",
        f"rate      {rate}",
        f"tokens    {usage['input_tokens']:,} in, {usage['output_tokens']:,} out, "
        f"{usage['cached_tokens']:,} cached, {usage['reasoning_tokens']:,} reasoning",
        f"cost      {cost}",
        f"finish    {_counts(r['finish_reasons'])}",
        f"errors    {_counts(r['error_codes'])}",
        f"retries   {r['retries']:,} retries, {r['rate_limited']:,} rate-limited (429)",
    ]
    for model, limits in r["limits"].items():
        lines.append(f"limits    {model}: {_limits(limits)}")
    updated = f"updated {r['updated_at']} ({_ago(r['age_s'])})" if r["updated_at"] else "no manifest yet"
    started = f"started {r['created_at']}, " if r["created_at"] else ""
    lines.append(f"times     {started}{updated}")
    if r["last_errors"]:
        lines.append(f"last errors ({len(r['last_errors'])} of {r['failed']:,}, oldest first):")
        for e in r["last_errors"]:
            message = " ".join(str(e["message"]).split())
            message = message if len(message) <= 160 else message[:159] + "…"
            lines.append(f"  {e['custom_id']} (line {e['line']}) {e['code']}: {message}")
    return lines


def _state(r: dict[str, Any]) -> str:
    return "running" if r["status"] == "in_progress" and r["running"] else str(r["status"])


def _status_line(r: dict[str, Any]) -> str:
    status = r["status"]
    if r["running"]:
        text = f"{_state(r)} (PID {r['pid']})"
    elif status == "stopped":
        text = "stopped: no process is running it; run the same `runner run` command again to resume"
    elif status == "interrupted":
        text = "interrupted; run the same `runner run` command again to resume"
    elif status == "failed" and r["run_errors"]:
        text = "failed: " + "; ".join(str(e) for e in r["run_errors"])
    else:
        text = str(status)
    return text + (f" ({r['stop_reason']})" if r["stop_reason"] else "")


def _limits(m: dict[str, Any]) -> str:
    parts = [f"concurrency {m.get('concurrency')}/{m.get('concurrency_ceiling')}"]
    parts += [f"{m.get('rate_limited', 0)} × 429", f"waited {m.get('waited_s', 0):.1f}s"]
    parts += [f"{k} {m[k]:g}" for k in ("rpm", "tpm") if m.get(k)]
    parts += [f"learned {k} {v:g}" for k, v in sorted((m.get("learned_limits") or {}).items())]
    return ", ".join(parts)


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])) or "none"


def _cost(r: dict[str, Any]) -> str:
    """Dollars; a trailing + when some answers had no price (the real cost is higher)."""
    cost = r["cost_usd"]
    digits = 2 if cost >= 1 or cost == 0 else 4 if cost >= 0.01 else 6
    return f"${cost:.{digits}f}" + ("" if r["cost_known"] else "+")


def _tokens(n: int) -> str:
    return f"{n:,}" if n < 10_000 else f"{n / 1000:.1f}k" if n < 1_000_000 else f"{n / 1_000_000:.1f}M"


def _duration(seconds: float) -> str:
    s = round(seconds)
    return f"{s}s" if s < 60 else f"{s // 60}m {s % 60:02d}s" if s < 3600 else f"{s // 3600}h {s % 3600 // 60:02d}m"


def _ago(age: float | None) -> str:
    if age is None:
        return "-"
    return "just now" if age < 1 else f"{_duration(age).split()[0]} ago" if age < 86400 else f"{age // 86400:.0f}d ago"
