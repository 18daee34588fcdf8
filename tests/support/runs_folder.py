"""A runs folder written by hand, as weeks of nightly runs leave it: for the live view's tests and bench/liveview.py.

Only what ``runner serve`` reads is written (manifest.json, a metrics.jsonl timeline, journal lines), in the
shapes ``runner run`` writes them; each manifest's mtime is its ``updated_at``, so the list's order
(most recently updated first, as ``runner status``) is the nights' order.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from typing import IO, Any

import orjson

from runner.run.lock import LOCK

__all__ = [
    "DAY",
    "NIGHTS",
    "START",
    "batch_run",
    "five_hundred_runs",
    "hold_lock",
    "nightly_runs",
    "ray_run",
    "write_run",
]

DAY = 86400
START = 1_790_000_000  # 2026-09-21 14:13 UTC: the first night
MODEL = "openai/gpt-4o-mini"
NIGHTS = {"classify": 300, "summarize": 198}  # and a Ray run and a Batch API run: 500 runs


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _lane(requests: int, cost: float) -> dict[str, Any]:
    usage = {"input_tokens": requests * 120, "output_tokens": requests * 8, "total_tokens": requests * 128,
             "cached_tokens": 0, "reasoning_tokens": 0}  # fmt: skip
    return {"requests": requests, "usage": usage, "cost_usd": round(cost, 8), "unpriced_requests": 0}


def write_run(
    run_dir: Path,
    *,
    started: float,
    total: int,
    ok: int,
    failed: int = 0,
    status: str = "completed",
    elapsed: float = 60.0,
    lanes: dict[str, tuple[int, float]] | None = None,
    lane_models: dict[str, dict[str, tuple[int, float]]] | None = None,
    samples: int = 0,
    **sections: Any,
) -> dict[str, Any]:
    """A run directory: its manifest (plus ``sections``: ``workers``, ``batches``) and ``samples`` timeline lines;
    ``lane_models``: each lane's answers and cost by model (else all of it the job's model's)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    lanes = lanes if lanes is not None else {"online": (ok + failed, (ok + failed) * 0.00002)}
    lane_models = lane_models or {name: {MODEL: lane} for name, lane in lanes.items()}
    by_lane = {name: {**_lane(n, cost), "models": {m: {"requests": k, "cost_usd": c} for m, (k, c) in
                                                   lane_models[name].items()}}
               for name, (n, cost) in lanes.items()}  # fmt: skip
    usage = {k: sum(lane["usage"][k] for lane in by_lane.values()) for k in next(iter(by_lane.values()))["usage"]}
    cost = round(sum(lane["cost_usd"] for lane in by_lane.values()), 8)
    updated = started + elapsed
    manifest = {
        "job": {"name": run_dir.parent.name, "model": MODEL},
        "created_at": _iso(started),
        "status": status,
        "request_counts": {"total": total, "completed": ok, "failed": failed},
        "usage": usage,
        "cost_usd": cost,
        "cost_known": True,
        "models": {MODEL: {"requests": ok + failed, **usage, "cost_usd": cost, "unpriced_requests": 0}},
        "lanes": by_lane,
        "finish_reasons": {"stop": ok},
        "error_codes": {"bad_request": failed} if failed else {},
        "retries": failed,
        "rate_limited": 0,
        **sections,
        "rows_per_s": round((ok + failed) / elapsed, 3),
        "updated_at": _iso(updated),
        "elapsed_s": elapsed,
    }
    (run_dir / "manifest.json").write_bytes(orjson.dumps(manifest))
    os.utime(run_dir / "manifest.json", (updated, updated))
    if samples:
        lines = [{"kind": "start", "ts": started, "restart": False, "done": 0}]
        for i in range(samples):
            lines.append({"kind": "sample", "ts": started + 5 * (i + 1), "rows_per_s": 2.0 + i % 3, "in_flight": 4,
                          "concurrency": 8, "rate_limited": i % 2, "retries": i % 3,
                          "cost_usd": cost * (i + 1) / samples,
                          "latency_s": {"p50": 0.2, "p95": 0.4, "p99": 0.6}})  # fmt: skip
        (run_dir / "metrics.jsonl").write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    return manifest


def nightly_runs(runs_dir: Path, job: str, nights: int, *, first: float = START) -> list[Path]:
    """``nights`` finished runs of ``job``, one a night (run ids are the dates), a few with failed rows."""
    made = []
    for night in range(nights):
        started = first + night * DAY
        total = 1000 + 37 * (night % 11)
        failed = (night * 7) % 13 if night % 4 == 0 else 0
        run_dir = runs_dir / job / time.strftime("%Y-%m-%d", time.gmtime(started))
        write_run(run_dir, started=started, total=total, ok=total - failed, failed=failed,
                  elapsed=600.0 + 45 * (night % 9), lanes={"online": (total, total * 0.000021)})  # fmt: skip
        made.append(run_dir)
    return made


def ray_run(run_dir: Path, *, started: float) -> dict[str, Any]:
    """A Ray run (--workers 3) halfway: one worker replaced, rows in flight at each."""
    workers = {"alive": 3, "replaced": 1, "in_flight": {"w1": 8, "w2": 7, "w4": 8},
               "hosts": {"w1": "node-a:4101", "w2": "node-a:4102", "w4": "node-b:5120"}}  # fmt: skip
    manifest = write_run(run_dir, started=started, total=400, ok=180, failed=2, status="in_progress", elapsed=90.0,
                         samples=12, workers=workers)  # fmt: skip
    labels = ("bug", "feature", "billing", "other")
    results = [{"id": f"batch_req_{i}", "custom_id": f"t-{i}", "response": {"status_code": 200, "body": {}},
                "error": None, "result": labels[i % 4], "meta": {"latency_s": 0.4 + i / 100, "worker": f"w{1 + i % 2}"}}
               for i in range(6)]  # fmt: skip
    (run_dir / "results.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in results))
    return manifest


CLAUDE = "anthropic/claude-haiku-4-5"


def batch_run(run_dir: Path, *, started: float) -> dict[str, Any]:
    """A Batch API run of two providers' models waiting on two remote batches (one half answered, one at each
    provider), one batch collected already."""
    opened = [
        {"chunk": 1, "batch_id": "batch_abc123", "model": MODEL, "provider": "openai", "status": "in_progress",
         "rows": 300, "counts": {"total": 300, "completed": 150, "failed": 3}, "age_s": 3600,
         "expires_at": started + DAY, "collected": False},
        {"chunk": 2, "batch_id": "msgbatch_def456", "model": CLAUDE, "provider": "anthropic", "status": "in_progress",
         "rows": 200, "counts": {}, "age_s": 1800, "expires_at": started + DAY, "collected": False},
    ]  # fmt: skip
    by_provider = {"anthropic": {"batches": 1, "rows": 200, "by_status": {"in_progress": 1}},
                   "openai": {"batches": 2, "rows": 796, "by_status": {"completed": 1, "in_progress": 1}}}  # fmt: skip
    batches = {"submitted": 3, "by_status": {"completed": 1, "in_progress": 2}, "by_provider": by_provider,
               "rows_waiting": 500, "open": opened, "deadline_at": _iso(started + DAY), "resubmitted": 0,
               "rescued_online": 4, "refused_enqueued_tokens": 0, "duplicates_ignored": 0,
               "duplicates_cost_usd": 0.0}  # fmt: skip
    lane_models = {"batch": {MODEL: (496, 0.0052)}, "online": {MODEL: (3, 0.00006), CLAUDE: (1, 0.00003)}}
    return write_run(run_dir, started=started, total=1000, ok=496, failed=4, status="in_progress", elapsed=3700.0,
                     lanes={"batch": (496, 0.0052), "online": (4, 0.00009)}, lane_models=lane_models, samples=12,
                     batches=batches)  # fmt: skip


def hold_lock(run_dir: Path) -> IO[bytes]:
    """Hold the run's lock as its ``runner run`` would (taken before its manifest was written): it shows as running.
    Closing the returned file lets it go."""
    path = run_dir / LOCK
    f = path.open("wb")
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    then = (run_dir / "manifest.json").stat().st_mtime - 1
    os.utime(path, (then, then))
    return f


def five_hundred_runs(runs_dir: Path) -> list[IO[bytes]]:
    """500 runs: ``NIGHTS`` nights of two jobs up to yesterday, then a Ray run and a Batch API run, the newest,
    shown running (their locks are held until the returned files are closed)."""
    now = time.time()
    first = now - (max(NIGHTS.values()) + 1) * DAY
    nightly_runs(runs_dir, "classify", NIGHTS["classify"], first=first)
    nightly_runs(runs_dir, "summarize", NIGHTS["summarize"], first=first + 3600)
    ray_run(runs_dir / "classify" / "ray-night", started=now - 95)
    batch_run(runs_dir / "summarize" / "batch-night", started=now - 3700)
    return [hold_lock(runs_dir / "classify" / "ray-night"), hold_lock(runs_dir / "summarize" / "batch-night")]
