"""``GET /metrics``: every run ``runner serve`` can see, in the Prometheus text format.

Read at scrape time from each run directory, never from a process's memory, so a nightly run that
ended hours ago still reports what it did, and a restart of ``runner serve`` changes nothing.
Counters come from the manifest (so they agree with it exactly: the journal's totals); gauges and
the latency histogram from the last sample of the run's timeline (``runner.run.timeline``).

    runner_run_info{job,run,status,state,model} 1
    runner_run_running{job,run}                         1 while a process holds the run's lock
    runner_rows_total{job,run,status="completed"|"failed"}
    runner_rows_expected{job,run}                       the input's rows, once counted
    runner_rows_per_second{job,run}                     the last timeline interval's rate (0 when not running)
    runner_requests_in_flight{job,run,model}            0 when not running
    runner_concurrency_limit{job,run,model}             the adaptive limit, and ..._ceiling
    runner_rate_limited_total{job,run}                  429s
    runner_retries_total{job,run}
    runner_errors_total{job,run,code}
    runner_tokens_total{job,run,model,kind="input"|"output"|"cached"|"reasoning"}
    runner_cost_usd_total{job,run,model}
    runner_request_latency_seconds{job,run,model}       histogram: rows by latency (retries and waits included)

prometheus_client is imported here only, when ``/metrics`` is first asked for.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from runner.run.manifest import MANIFEST, read_manifest
from runner.run.timeline import LATENCY_LE, last_samples
from runner.serve.status import find_runs, read_run

__all__ = ["CONTENT_TYPE", "render"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def render(runs_dir: Path) -> bytes:
    """The exposition text for every run under ``runs_dir`` (blocking: run it in a worker thread)."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Runs(runs_dir))
    return generate_latest(registry)


class _Runs:
    """A prometheus_client collector over the run directories."""

    def __init__(self, runs_dir: Path) -> None:
        self.runs_dir = runs_dir

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        run_labels = ["job", "run"]
        model_labels = ["job", "run", "model"]
        g = {
            "info": GaugeMetricFamily("runner_run_info", "A run and its status (always 1)",
                                      labels=[*run_labels, "status", "state", "model"]),
            "running": GaugeMetricFamily("runner_run_running", "1 while a process runs it", labels=run_labels),
            "expected": GaugeMetricFamily("runner_rows_expected", "Rows in the run's input", labels=run_labels),
            "rate": GaugeMetricFamily("runner_rows_per_second", "Rows finished per second, last interval",
                                      labels=run_labels),
            "in_flight": GaugeMetricFamily("runner_requests_in_flight", "Requests in flight", labels=model_labels),
            "limit": GaugeMetricFamily("runner_concurrency_limit", "Adaptive concurrency limit", labels=model_labels),
            "ceiling": GaugeMetricFamily("runner_concurrency_ceiling", "--concurrency", labels=model_labels),
        }  # fmt: skip
        c = {
            "rows": CounterMetricFamily("runner_rows", "Rows with a final record", labels=[*run_labels, "status"]),
            "rate_limited": CounterMetricFamily("runner_rate_limited", "429 answers", labels=run_labels),
            "retries": CounterMetricFamily("runner_retries", "Attempts after the first", labels=run_labels),
            "errors": CounterMetricFamily("runner_errors", "Failed rows by error code", labels=[*run_labels, "code"]),
            "tokens": CounterMetricFamily("runner_tokens", "Tokens", labels=[*model_labels, "kind"]),
            "cost": CounterMetricFamily("runner_cost_usd", "Known cost in US dollars", labels=model_labels),
        }
        latency = HistogramMetricFamily("runner_request_latency_seconds", "Row latency, retries and waits included",
                                        labels=model_labels)  # fmt: skip
        for run_dir in find_runs(self.runs_dir) if self.runs_dir.is_dir() else []:
            _one(run_dir, g, c, latency)
        yield from g.values()
        yield from c.values()
        yield latency


def _one(run_dir: Path, g: dict[str, Any], c: dict[str, Any], latency: Any) -> None:
    status = read_run(run_dir, last_errors=0)
    manifest = read_manifest(run_dir / MANIFEST)
    run = [status["job"], status["run_id"]]
    running = bool(status["running"])
    g["info"].add_metric([*run, str(status["status"]), str(status["state"]), str(status["model"] or "")], 1)
    g["running"].add_metric(run, int(running))
    if status["total"] is not None:
        g["expected"].add_metric(run, status["total"])
    c["rows"].add_metric([*run, "completed"], status["completed"])
    c["rows"].add_metric([*run, "failed"], status["failed"])
    c["rate_limited"].add_metric(run, status["rate_limited"])
    c["retries"].add_metric(run, status["retries"])
    for code, n in sorted(status["error_codes"].items()):
        c["errors"].add_metric([*run, code], n)
    for model, m in sorted((manifest.get("models") or {}).items()):
        for kind in ("input", "output", "cached", "reasoning"):
            c["tokens"].add_metric([*run, model, kind], m.get(f"{kind}_tokens") or 0)
        c["cost"].add_metric([*run, model], m.get("cost_usd") or 0.0)
    samples = last_samples(run_dir, most=1)
    last = samples[-1] if samples else {}
    g["rate"].add_metric(run, (last.get("rows_per_s") or 0.0) if running else 0.0)
    for name, series in sorted((last.get("by") or {}).items()):
        kind, _, model = name.partition(":")
        if kind != "model" or not isinstance(series, dict):
            continue
        labels = [*run, model]
        if "in_flight" in series:
            g["in_flight"].add_metric(labels, series["in_flight"] if running else 0)
            g["limit"].add_metric(labels, series["concurrency"])
            g["ceiling"].add_metric(labels, series["concurrency_ceiling"])
        hist = series.get("latency_hist")
        if isinstance(hist, list) and len(hist) == len(LATENCY_LE) + 1:
            cumulative, buckets = 0, []
            for le, n in zip([*map(str, LATENCY_LE), "+Inf"], hist, strict=True):
                cumulative += n
                buckets.append((le, cumulative))
            latency.add_metric(labels, buckets, series.get("latency_sum") or 0.0)
