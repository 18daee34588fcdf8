"""Reused answers: a fully cached re-run against the online ceiling, side by side, and the cache's size.

    .venv/bin/python -m bench.cache [--rows 100000] [--online-rows 3000] [--repeat 3]

(1) The response cache is filled once with an answer for each of ``--rows`` classify rows, keyed
exactly as a run keys them (``Caller.request`` + ``key_of``; the body is the fake provider's
answer shape). Then, per repeat and in rotating order, three ``runner run classify`` processes:
"cached", the ``--rows`` rows with that cache (every row a hit: the bench fails if the server sees
one request); "online", the first ``--online-rows`` rows with ``--no-cache --no-dedup`` against the
fake provider (latency 0, concurrency 64: runner's online ceiling); "online+cache", the same rows
with an empty cache of their own, so every answer is looked up and stored (what the cache costs an
online run, and whether its writes slow the event loop). Rows/s is each run's manifest
``rows_per_s``: rows this invocation / its elapsed time (litellm's import not included). Ratios are
paired per repeat.
(2) Size on disk: the cache directory's bytes (SQLite file and its WAL) / rows.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import orjson

from bench.common import MODEL, NO_REUSE, ROOT, Server, child, machine, runner_command, server, spread, write_rows
from bench.resume import BODY
from runner.provider.setup import configure

configure()

from runner.call.caller import Caller  # noqa: E402  (litellm only after configure())
from runner.call.retry import RetryPolicy  # noqa: E402
from runner.job.definition import load_job  # noqa: E402
from runner.run.cache import Entry, ResponseCache, key_of  # noqa: E402
from runner.run.source import Row  # noqa: E402

LABELS = ("bug", "feature", "billing", "other")


def rows(n: int) -> list[dict[str, str]]:
    """``n`` distinct tickets."""
    return [{"id": f"c-{i:07d}", "text": f"I was charged twice for order {i}, please refund"} for i in range(n)]


def fill(cache_dir: Path, items: list[dict[str, str]], url: str) -> None:
    """An answer for every row, stored under the key a run over ``url`` computes."""
    caller = Caller(
        job=load_job("classify", ROOT / "jobs"), policy=RetryPolicy(), timeout=30.0, model=MODEL, api_base=url
    )
    store = ResponseCache(cache_dir)
    try:
        batch: list[tuple[bytes, Entry]] = []
        for i, item in enumerate(items):
            request, _ = caller.request(Row(i + 1, item["id"], item))
            assert request is not None
            key = key_of(request, caller.credentials_for(MODEL))
            assert key is not None
            body = {**BODY, "id": f"chatcmpl-{i:024d}"}
            body["choices"] = [
                {**BODY["choices"][0], "message": {**BODY["choices"][0]["message"], "content": LABELS[i % 4]}}
            ]
            batch.append((key, Entry(body, f"req_{i:020d}", 2.865e-05, "bench-fill")))
            if len(batch) == 5000:
                store.put_many(batch)
                batch = []
        if batch:
            store.put_many(batch)
    finally:
        store.close()


def rate(srv: Server, command: list[str], cwd: Path, run_dir: Path, sent: int | None) -> tuple[float, float]:
    """The run's rows/s (its manifest) and peak RSS in MiB; fails unless the server saw exactly ``sent`` requests."""
    srv.reset()
    usage = child(command, cwd=cwd)
    seen = srv.stats()["total"]
    if sent is not None and seen != sent:
        raise SystemExit(f"expected {sent} requests, the server saw {seen}")
    return float(orjson.loads((run_dir / "manifest.json").read_bytes())["rows_per_s"]), usage.max_rss_mib


def cached(input_path: Path, url: str, run_id: str, cache_dir: Path) -> list[str]:
    """The runner command of the online runs, with the response cache at ``cache_dir`` (and dedup) on."""
    plain = [a for a in runner_command(input_path, url, 64) if a not in NO_REUSE]
    return [*plain, "--run-id", run_id, "--cache-dir", str(cache_dir)]


def size_of(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.iterdir() if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--online-rows", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="10,000 cached rows, 1,000 online, one repeat")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.online_rows, args.repeat = 10_000, 1000, 1
    print(f"bench.cache, {args.rows:,} cached rows, {args.online_rows:,} online, median of {args.repeat} "
          f"(min–max); {machine()}", flush=True)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp, server(latency_ms=0) as srv:
        work = Path(tmp)
        items = rows(args.rows)
        every = write_rows(work / "all.jsonl", items)
        first = write_rows(work / "first.jsonl", items[: args.online_rows])
        cache_dir = work / "cache"
        fill(cache_dir, items, srv.url)
        on_disk = size_of(cache_dir)
        runs = work / "runs" / "classify"
        got: dict[str, list[tuple[float, float]]] = {"cached": [], "online": [], "online+cache": []}
        for attempt in range(args.repeat):
            plans = {
                "cached": (cached(every, srv.url, f"cached{attempt}", cache_dir), 0),
                "online": (runner_command(first, srv.url, 64, "--run-id", f"online{attempt}"), args.online_rows),
                "online+cache": (cached(first, srv.url, f"stored{attempt}", work / f"cold{attempt}"), args.online_rows),
            }
            names = list(plans)
            shift = attempt % len(names)
            for name in names[shift:] + names[:shift]:
                command, sent = plans[name]
                run_id = command[command.index("--run-id") + 1]
                got[name].append(rate(srv, command, work, runs / run_id, sent))
        for name, runs in got.items():
            rates, rss = zip(*runs, strict=True)
            print(f"  {name:<13} {spread(rates, '{:,.0f}')} rows/s; peak RSS {spread(rss, '{:.0f}')} MiB")
        cached_vs_online = [c[0] / o[0] for c, o in zip(got["cached"], got["online"], strict=True)]
        storing = [s[0] / o[0] for s, o in zip(got["online+cache"], got["online"], strict=True)]
        print(f"  cached re-run / online ceiling, paired per repeat: {spread(cached_vs_online)}x")
        print(f"  online with the cache (cold: every answer stored) / without: {spread(storing)}")
        print(f"  cache on disk: {on_disk / args.rows:,.0f} bytes per row ({on_disk / 2**20:,.1f} MiB for "
              f"{args.rows:,} rows; the classify answer body is {len(orjson.dumps(BODY))} bytes of JSON)")  # fmt: skip


if __name__ == "__main__":
    main()
