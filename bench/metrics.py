"""What watching a run costs: CPU per request of runner with its timeline, without it, and the bare loop.

    .venv/bin/python -m bench.metrics [--rows 3000] [--concurrency 64] [--repeat 3] [--quick]

Three clients over the same rows against the fake provider (``bench.server``, no latency, its own
process), each in its own process, in a rotating order from one repeat to the next:
  runner       ``runner run`` as shipped: the metrics.jsonl timeline on, a sample every 5 s (the default);
  runner-fast  the same with ``--metrics-interval 0.1``: fifty times the default's samples (a stress figure);
  runner-off   ``--metrics-interval 0``: no timeline at all (runner before issue 18);
  bare         the asyncio.Semaphore + litellm.acompletion loop (bench/bare.py).
CPU is the client's user+system time inside the server's window (first request to last answer),
sampled from /proc, so start-up (litellm's import) is not counted; per request = that / rows. The
verdicts are paired per repeat: runner / runner-off (target <= 1.03) and runner / bare (the existing
<= 1.25). ``/metrics`` and the charts cost the run nothing: ``runner serve`` reads the files.

Whole-process CPU on a shared 2-core machine moves by more than 3% from one run to the next, so the
timeline's own cost is also measured directly, in this process: ``Timeline.observe`` over realistic
records in the writer's batches, and one sample line with three models, timed with
``time.process_time`` (the median of 5), then set against runner-off's CPU per request.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import bare_command, child, machine, runner_command, server, spread, tickets, write_rows

LANES = ("runner", "runner-fast", "runner-off", "bare")


def direct_cost(records: int = 20_000, batch: int = 32) -> tuple[float, float]:
    """Microseconds of ``Timeline.observe`` per record, and of one ``Timeline.sample`` line (median of 5)."""
    from runner.permits.limits import Limits
    from runner.records import result_record
    from runner.run.manifest import Totals
    from runner.run.timeline import Timeline

    rng = random.Random(3)
    choice = {"index": 0, "message": {"role": "assistant", "content": "bug"}, "finish_reason": "stop"}
    usage = {"prompt_tokens": 80, "completion_tokens": 1, "total_tokens": 81}
    body = {"id": "chatcmpl-1", "choices": [choice], "usage": usage}
    metas = [{"line": i, "model": f"openai/m{i % 3}", "attempts": 1, "latency_s": rng.lognormvariate(0, 1),
              "rate_limited": 0, "cost_usd": 1e-5} for i in range(records)]  # fmt: skip
    rows = [result_record(f"b-{i}", body, "req", "bug", meta) for i, meta in enumerate(metas)]
    per_record, per_sample = [], []
    for _ in range(5):
        with tempfile.TemporaryDirectory() as tmp:
            totals, limits = Totals(), Limits(64, clock=time.monotonic)
            for i in range(3):
                limits.for_model(f"openai/m{i}")
            timeline = Timeline(Path(tmp), 5.0, lambda: totals, lambda: limits)  # noqa: B023
            timeline.open()
            started = time.process_time()
            for i in range(0, records, batch):
                timeline.observe(rows[i : i + batch])
            per_record.append((time.process_time() - started) / records * 1e6)
            started = time.process_time()
            for _ in range(200):
                timeline.sample()
            per_sample.append((time.process_time() - started) / 200 * 1e6)
            timeline.close("completed")
    return statistics.median(per_record), statistics.median(per_sample)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.metrics", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one repeat of 500 rows")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.repeat = 500, 1
    print(f"bench.metrics, {machine()}", flush=True)
    cpu: dict[str, list[float]] = {lane: [] for lane in LANES}
    rate: dict[str, list[float]] = {lane: [] for lane in LANES}
    with tempfile.TemporaryDirectory() as tmp, server() as srv:
        work = Path(tmp)
        path = write_rows(work / "in.jsonl", tickets(args.rows))
        for attempt in range(args.repeat):
            commands = {
                "runner": runner_command(path, srv.url, args.concurrency, "--run-id", f"on{attempt}"),
                "runner-fast": runner_command(path, srv.url, args.concurrency, "--run-id", f"fast{attempt}",
                                              "--metrics-interval", "0.1"),
                "runner-off": runner_command(path, srv.url, args.concurrency, "--run-id", f"off{attempt}",
                                             "--metrics-interval", "0"),
                "bare": bare_command(path, srv.url, args.concurrency),
            }  # fmt: skip
            order = LANES[attempt % len(LANES) :] + LANES[: attempt % len(LANES)]
            for lane in order:
                srv.reset()
                usage = child(commands[lane], cwd=work)
                window = srv.window()
                if window.answered != args.rows:
                    raise SystemExit(f"{lane}: the server answered {window.answered} of {args.rows} requests")
                cpu[lane].append(1000 * usage.cpu_between(window) / args.rows)
                rate[lane].append(args.rows / window.seconds)
            print(f"  repeat {attempt + 1}/{args.repeat}: "
                  + ", ".join(f"{lane} {cpu[lane][-1]:.2f} ms" for lane in LANES), flush=True)  # fmt: skip
        timeline = sum(1 for _ in (work / "runs" / "classify" / f"fast{args.repeat - 1}" / "metrics.jsonl").open())
    print(f"{args.rows} rows, concurrency {args.concurrency}, server latency 0 ms, median of {args.repeat} (min–max)")
    for lane in LANES:
        print(f"  {lane:<11} CPU {spread(cpu[lane])} ms/request, {spread(rate[lane], '{:.0f}')} requests/s")
    print(f"  (runner-fast wrote {timeline} timeline lines in its last repeat)")
    observe_us, sample_us = direct_cost()
    base_us = 1000 * statistics.median(cpu["runner-off"])
    print(f"  timeline, measured directly: observe {observe_us:.2f} µs/record, one sample line {sample_us:.0f} µs; "
          f"at the default 5 s and {statistics.median(rate['runner']):.0f} requests/s: "
          f"{observe_us + sample_us / (5 * statistics.median(rate['runner'])):.2f} µs/request = "
          f"{100 * (observe_us + sample_us / (5 * statistics.median(rate['runner']))) / base_us:.2f}% of runner-off's "
          "CPU per request (target <= 3%)")  # fmt: skip
    for lane, base, target in (("runner", "runner-off", 1.03), ("runner-fast", "runner-off", None),
                               ("runner", "bare", 1.25), ("runner-off", "bare", None)):  # fmt: skip
        ratios = [a / b for a, b in zip(cpu[lane], cpu[base], strict=True)]
        verdict = "" if target is None else (" -> met" if statistics.median(ratios) <= target else " -> MISSED")
        aim = "" if target is None else f" (target <= {target:.2f})"
        print(f"  ratio {lane} CPU / {base} CPU, paired per repeat: {spread(ratios, '{:.3f}')}{aim}{verdict}")


if __name__ == "__main__":
    main()
