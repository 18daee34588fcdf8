"""`runner status`: the runs as a table, or one run in detail, as text or JSON."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import orjson

from runner.errors import UsageError
from runner.serve.spark import rate_line
from runner.serve.status import find_runs, read_run

__all__ = ["show_status"]


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
    rows = [("RUN", "STATUS", "DONE/TOTAL", "%", "OK", "FAILED", "TOKENS", "COST", "RATE", "UPDATED")]
    for r in runs:
        rows.append(
            (
                f"{r['job']}/{r['run_id']}",
                r["state"],
                f"{r['done']:,}/{'?' if r['total'] is None else format(r['total'], ',')}",
                "-" if r["percent"] is None else f"{r['percent']:.1f}",
                f"{r['ok']:,}",
                f"{r['failed']:,}",
                _tokens(r["usage"]["total_tokens"]),
                _cost(r),
                "-" if r["rows_per_s"] is None else f"{r['rows_per_s']:.1f}/s",
                _ago(r["age_s"]),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    right = {2, 3, 4, 5, 6, 7, 8}  # numbers line up on the right
    aligned = [[c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(row)] for row in rows]
    return ["  ".join(row).rstrip() for row in aligned]


def _detail(r: dict[str, Any]) -> list[str]:
    """A few labelled lines about one run."""
    usage, total = r["usage"], r["total"]
    if total is None:
        counting = "the input is still being counted" if r["running"] else "the input was not counted"
        progress = f"{r['done']:,} rows so far ({counting})"
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
        *([f"rows/s    {spark}"] if (spark := rate_line(Path(r["path"]))) else []),
        f"tokens    {usage['input_tokens']:,} in, {usage['output_tokens']:,} out, "
        f"{usage['cached_tokens']:,} cached, {usage['reasoning_tokens']:,} reasoning",
        f"cost      {cost}",
        f"finish    {_counts(r['finish_reasons'])}",
        f"errors    {_counts(r['error_codes'])}",
        f"retries   {r['retries']:,} retries, {r['rate_limited']:,} rate-limited (429)",
    ]
    if (estimated := r["usage_estimated"])["rows"]:
        lines.append(f"estimated {estimated['rows']:,} answers' usage ({estimated['tokens']:,} tokens) is litellm's "
                     "estimate: their streams ended before the provider's usage came")  # fmt: skip
    if (cache := r["cache"])["hits"] or cache["dedup"]:
        lines.append(f"cache     {cache['hits']:,} answered from the response cache, {cache['dedup']:,} by an "
                     f"identical row: nothing sent for them, ${cache['saved_usd']:.4f} saved")  # fmt: skip
    for model, limits in r["limits"].items():
        lines.append(f"limits    {model}: {_limits(limits)}")
    for name, d in r.get("deployments", {}).items():
        lines.append(f"deployment {name}: {_deployment(d)}")
    if r.get("workers"):
        lines.append(f"workers   {_workers(r['workers'])}")
    if set(r.get("lanes", {})) - {"online"}:  # more than one lane (batch, flex): what each cost
        lines.append("lanes     " + ", ".join(f"{k} ${v:.4f}" for k, v in sorted(r["lanes"].items())))
        for lane, whole in sorted(r.get("by_lane", {}).items()):  # and, for a run of several models, whose
            if len(models := whole.get("models") or {}) > 1:
                lines.append(f"  {lane:<8}" + ", ".join(f"{name} {m['requests']:,} (${m['cost_usd']:.4f})"
                                                       for name, m in models.items()))  # fmt: skip
    if providers := (r.get("batch_api") or {}).get("by_provider"):  # --batch-api: each provider's batches
        lines.append("batches   " + ", ".join(f"{name} {p['batches']:,} ({_counts(p['by_status'])}, {p['rows']:,} rows)"
                                              for name, p in sorted(providers.items())))  # fmt: skip
    for b in r.get("batches", []):
        counts = b["counts"] or {"total": b["rows"]}
        lines.append(f"batch     {b['batch_id']} ({b['model']}) {b['status']}: {counts.get('completed', 0):,} of "
                     f"{counts.get('total', b['rows']):,} done, {counts.get('failed', 0):,} failed, "
                     f"submitted {_ago(b['age_s'])}, expires {_when(b['expires_at'])}")  # fmt: skip
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


def _status_line(r: dict[str, Any]) -> str:
    status = r["status"]
    if r["running"]:
        text = f"{r['state']} (PID {r['pid']})"
    elif status == "stopped":
        text = "stopped: no process is running it; run the same `runner run` command again to resume"
    elif status == "interrupted" and r["stop_reason"] == "max_cost":
        return (f"stopped at --max-cost ${r['max_cost_usd']:g}; run the same `runner run` command with a "
                "higher --max-cost to finish the rest")  # fmt: skip
    elif status == "interrupted":
        text = "interrupted; run the same `runner run` command again to resume"
    elif status == "completed" and r["failed"]:
        text = (f"{r['state']}: {r['ok']:,} ok, {r['failed']:,} failed (in errors.jsonl; the same `runner run` "
                "command with --retry-failed runs them again)")  # fmt: skip
    elif status == "failed" and r["run_errors"]:
        text = "failed: " + "; ".join(dict.fromkeys(str(e) for e in r["run_errors"]))  # each reason once
    else:
        text = str(status)
    return text + (f" ({r['stop_reason']})" if r["stop_reason"] else "")


def _limits(m: dict[str, Any]) -> str:
    parts = [f"concurrency {m.get('concurrency')}/{m.get('concurrency_ceiling')}"]
    parts += [f"{m.get('rate_limited', 0)} × 429", f"waited {m.get('waited_s', 0):.1f}s"]
    parts += [f"{k} {_per_minute(m[k])}" for k in ("rpm", "tpm") if m.get(k)]
    parts += [f"learned {k} {_per_minute(v)}" for k, v in sorted((m.get("learned_limits") or {}).items())]
    return ", ".join(parts)


def _deployment(d: dict[str, Any]) -> str:
    """One deployment's share: answers, failed rows, tokens, cost, 429s and failed attempts by code."""
    parts = [f"{d.get('answers', 0):,} answers", f"{d.get('failed_rows', 0):,} failed rows",
             f"{d.get('input_tokens', 0):,} in / {d.get('output_tokens', 0):,} out tokens",
             f"${d.get('cost_usd', 0):.4f}", f"{d.get('rate_limited', 0):,} × 429",
             f"errors {_counts(d.get('errors') or {})}"]  # fmt: skip
    return ", ".join(parts)


def _workers(w: dict[str, Any]) -> str:
    """Ray workers: how many alive, replaced, and each one's rows in flight."""
    each = ", ".join(f"{name} {n:,}" for name, n in sorted((w.get("in_flight") or {}).items()))
    said = f"{w.get('alive', 0)} alive, {w.get('replaced', 0)} replaced"
    return f"{said}; rows in flight: {each}" if each else said


def _per_minute(rate: float) -> str:
    """A rate as given, every digit kept (``:g`` would turn 2,500,000 into 2.5e+06)."""
    return f"{rate:,.0f}" if float(rate).is_integer() else f"{rate:,}"


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


def _when(stamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(stamp)) if stamp else "-"


def _ago(age: float | None) -> str:
    if age is None:
        return "-"
    return "just now" if age < 1 else f"{_duration(age).split()[0]} ago" if age < 86400 else f"{age // 86400:.0f}d ago"
