"""Running at a provider's rate limit: achieved rate / quota, and the share of requests refused.

    .venv/bin/python -m bench.ratelimit [--rpm 600] [--minutes 2] [--repeat 3] [--scenarios a b c]

The fake provider (in this process) enforces a real quota and sends x-ratelimit-* headers on every
answer; runner runs in a child process over enough rows to last --minutes at the quota.
(a) `--rpm R` configured, (b) nothing configured: learned from the headers, (c) a tokens-per-minute
quota with mixed prompt sizes and `--tpm` configured. Each figure is the median of --repeat runs,
with min-max; achieved rates are taken in steady state (from 10% into the run to its last request).
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

from tests.doubles.provider import FakeProvider

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Outcome:
    achieved: float  # of the quota, in steady state
    refused: float  # share of requests answered 429
    wall: float


def tickets(n: int, seed: int, mixed: bool) -> list[dict[str, str]]:
    rng = random.Random(seed)
    words = ["the", "export", "fails", "with", "an", "error", "when", "I", "upload", "a", "big", "file"]
    rows = []
    for i in range(n):
        size = rng.choice([5, 40, 200, 800]) if mixed else 12
        rows.append({"id": f"r-{i:06d}", "text": " ".join(rng.choice(words) for _ in range(size)) + f" #{i}"})
    return rows


def run_once(scenario: str, rpm: int, minutes: float, seed: int) -> Outcome:
    window = 60.0
    tokens_per_minute = rpm * 300  # (c): about 300 tokens a request on average at the request quota
    quota = {"rpm_limit": rpm, "window_s": window} if scenario != "c" else {"tpm_limit": tokens_per_minute}
    server = FakeProvider(latency_ms=100, latency_mean_ms=100, seed=seed, **quota)
    n = int(rpm * minutes) if scenario != "c" else int(rpm * minutes * 1.5)
    flags = {"a": ["--rpm", str(rpm)], "b": [], "c": ["--tpm", str(tokens_per_minute)]}[scenario]
    with server, tempfile.TemporaryDirectory() as tmp:
        with (Path(tmp) / "in.jsonl").open("wb") as f:
            for row in tickets(n, seed, mixed=scenario == "c"):
                f.write(orjson.dumps(row) + b"\n")
        command = [sys.executable, "-m", "runner", "run", "classify", "--jobs-dir", str(ROOT / "jobs"),
                   "--input", "in.jsonl", "--model", "openai/gpt-4o-mini", "--api-base", server.url,
                   "--concurrency", "64", "--max-attempts", "50", "-q", "--no-cache", "--no-dedup", *flags]  # fmt: skip
        started = time.perf_counter()
        proc = subprocess.Popen(command, cwd=tmp, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
        samples: list[tuple[float, int, int]] = []  # (time, answered 200, tokens charged so far)
        while proc.poll() is None:
            stats = server.stats()
            samples.append((time.perf_counter(), stats.by_status.get("200", 0), stats_tokens(server)))
            time.sleep(0.25)
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            raise SystemExit(f"runner exited {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
        stats = server.stats()
    first = next(t for t, ok, _ in samples if ok > 0)
    last = samples[-1][0]
    steady = [s for s in samples if s[0] >= first + 0.1 * (last - first)]
    span_min = (steady[-1][0] - steady[0][0]) / 60
    if scenario == "c":
        achieved = (steady[-1][2] - steady[0][2]) / span_min / tokens_per_minute
    else:
        achieved = (steady[-1][1] - steady[0][1]) / span_min / rpm
    refused = stats.by_status.get("429", 0) / max(stats.total, 1)
    return Outcome(achieved, refused, wall)


def stats_tokens(server: FakeProvider) -> int:
    """Tokens the server's quota has charged so far (0 if it does not say)."""
    return int(getattr(server.stats(), "tokens_charged", 0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rpm", type=int, default=600)
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--scenarios", nargs="+", default=["a", "b", "c"], choices=["a", "b", "c"])
    args = parser.parse_args()
    names = {"a": "(a) --rpm configured", "b": "(b) learned from headers", "c": "(c) --tpm, mixed prompt sizes"}
    for scenario in args.scenarios:
        outcomes = [run_once(scenario, args.rpm, args.minutes, seed) for seed in range(args.repeat)]
        achieved = [o.achieved for o in outcomes]
        refused = [o.refused for o in outcomes]
        walls = [o.wall for o in outcomes]
        line = (
            f"{names[scenario]:<32} achieved/quota median {statistics.median(achieved):.3f} "
            f"({min(achieved):.3f}-{max(achieved):.3f}); 429 share median {statistics.median(refused):.2%} "
            f"({min(refused):.2%}-{max(refused):.2%}); wall median {statistics.median(walls):.0f}s"
        )
        print(line, flush=True)
    print(f"quota: {args.rpm} requests/min (c: {args.rpm * 300:,} tokens/min), {args.minutes} min of rows, "
          "server latency 100 ms + lognormal mean 100 ms, concurrency 64")  # fmt: skip


if __name__ == "__main__":
    main()
