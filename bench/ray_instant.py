"""One run on 2 Ray workers that answer at once (bench.instant): prints the coordinator's CPU and wall seconds.

    python -m bench.ray_instant --rows N --workers 2 --dir DIR

bench.ray runs it at two sizes; the difference, over the difference in rows, is the coordinator's
own cost per row (reading, dispatch, leases, records across Ray, journal, manifest), with start-up
(the cluster, the workers' litellm import) cancelled out.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

from runner.provider.setup import configure

configure()

from bench.common import MODEL, ROOT, tickets, write_rows  # noqa: E402
from bench.instant import instant  # noqa: E402
from runner.call.caller import Caller  # noqa: E402
from runner.call.retry import RetryPolicy  # noqa: E402
from runner.executors.ray import RayExecutor, spec_for  # noqa: E402
from runner.executors.ray_cluster import cluster  # noqa: E402
from runner.job.definition import load_job  # noqa: E402
from runner.permits.limits import Limits  # noqa: E402
from runner.run.coordinator import RunSettings, run  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--batch", type=int, default=32, help="the workers' lease size, in requests")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    path = write_rows(args.dir / "in.jsonl", tickets(args.rows))
    caller = Caller(job=load_job("classify", ROOT / "jobs"), policy=RetryPolicy(max_attempts=1), timeout=30,
                    model=MODEL, api_base="http://127.0.0.1:9/v1", limits=Limits(args.concurrency))  # fmt: skip
    settings = RunSettings(path, args.dir / "run", "run", concurrency=args.concurrency)
    with cluster(settings.run_dir, args.workers) as record:
        executor = RayExecutor(caller, args.workers, spec_for(caller, args.workers, args.concurrency,
                                                              complete=instant, batch=args.batch), record)  # fmt: skip
        cpu, wall = time.process_time(), time.monotonic()
        report = asyncio.run(run(caller, settings, executor=executor))
        cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    if report.totals.completed != args.rows:
        raise SystemExit(f"{report.totals.completed} of {args.rows} rows completed ({report.status})")
    print(f"{cpu:.4f} {wall:.4f}")


if __name__ == "__main__":
    main()
