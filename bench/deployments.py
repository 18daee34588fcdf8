"""Three deployments, each with its own quota: achieved rate / the sum of the quotas, and the 429 share.

    .venv/bin/python -m bench.deployments [--rpm 600] [--minutes 2] [--repeat 3] [--scenarios ref a b]

Three fake-provider instances (in this process), each enforcing its own real per-minute quota R
and announcing it in x-ratelimit-* headers, are one model group in a deployments file; runner runs
in a child process over enough rows to last --minutes at 3R. (a) each deployment's ``rpm: R`` in
the file, (b) nothing configured: each deployment's limit learned from its own headers; (ref) the
side-by-side reference: one deployment with the whole quota 3R (``--rpm 3R --api-base``, no file),
so a busy machine shows in both. Target: ≥ 0.95 × 3R in steady state (from 10% into the run to its
last request) with ≤ 1% of requests refused. Scenarios are interleaved within each repeat; each
figure is the median of --repeat runs, with min-max, and a/ref, b/ref are medians of the per-repeat
ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

from bench.common import machine
from bench.ratelimit import tickets
from tests.doubles.provider import FakeProvider

ROOT = Path(__file__).resolve().parent.parent
DEPLOYMENTS = 3


@dataclass
class Outcome:
    achieved: float  # of the summed quotas, in steady state
    refused: float  # share of requests answered 429
    spread: float  # the busiest deployment's answers / the idlest one's
    wall: float


def run_once(scenario: str, rpm: int, minutes: float, seed: int) -> Outcome:
    count, quota = (1, DEPLOYMENTS * rpm) if scenario == "ref" else (DEPLOYMENTS, rpm)
    servers = [
        FakeProvider(latency_ms=100, latency_mean_ms=100, seed=seed + i, rpm_limit=quota, window_s=60.0)
        for i in range(count)
    ]
    n = int(DEPLOYMENTS * rpm * minutes)
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        for server in servers:
            stack.enter_context(server)
        limits = {"rpm": rpm} if scenario == "a" else {}
        config = {
            "model_list": [
                {"model_name": "fast", "model_info": {"id": f"d{i}"},
                 "litellm_params": {"model": "openai/gpt-4o-mini", "api_base": s.url, "api_key": "no-key", **limits}}
                for i, s in enumerate(servers)
            ]
        }  # fmt: skip
        (Path(tmp) / "deployments.json").write_bytes(orjson.dumps(config))
        with (Path(tmp) / "in.jsonl").open("wb") as f:
            for row in tickets(n, seed, mixed=False):
                f.write(orjson.dumps(row) + b"\n")
        route = ["--model", "fast", "--deployments", "deployments.json"]
        if scenario == "ref":
            route = ["--model", "openai/gpt-4o-mini", "--api-base", servers[0].url, "--rpm", str(quota)]
        command = [sys.executable, "-m", "runner", "run", "classify", "--jobs-dir", str(ROOT / "jobs"),
                   "--input", "in.jsonl", *route, "--concurrency", "64", "--max-attempts", "50", "-q",
                   "--no-cache", "--no-dedup"]  # fmt: skip
        started = time.perf_counter()
        proc = subprocess.Popen(command, cwd=tmp, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
        samples: list[tuple[float, int]] = []  # (time, answered 200 over every deployment)
        while proc.poll() is None:
            samples.append((time.perf_counter(), sum(s.stats().by_status.get("200", 0) for s in servers)))
            time.sleep(0.25)
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            raise SystemExit(f"runner exited {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
        stats = [s.stats() for s in servers]
    first = next(t for t, ok in samples if ok > 0)
    last = samples[-1][0]
    steady = [s for s in samples if s[0] >= first + 0.1 * (last - first)]
    span_min = (steady[-1][0] - steady[0][0]) / 60
    achieved = (steady[-1][1] - steady[0][1]) / span_min / (DEPLOYMENTS * rpm)
    refused = sum(s.by_status.get("429", 0) for s in stats) / max(sum(s.total for s in stats), 1)
    answers = [s.by_status.get("200", 0) for s in stats]
    return Outcome(achieved, refused, max(answers) / max(min(answers), 1), wall)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rpm", type=int, default=600, help="each deployment's quota R, requests a minute")
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--scenarios", nargs="+", default=["ref", "a", "b"], choices=["ref", "a", "b"])
    args = parser.parse_args()
    names = {"a": "(a) rpm per deployment in the file", "b": "(b) learned from each one's headers",
             "ref": "(ref) one deployment with quota 3R"}  # fmt: skip
    print(machine(), flush=True)
    results: dict[str, list[Outcome]] = {name: [] for name in args.scenarios}
    for seed in range(args.repeat):  # interleaved, so each repeat's scenarios see the same machine
        for scenario in args.scenarios:
            results[scenario].append(run_once(scenario, args.rpm, args.minutes, seed))
    for scenario, outcomes in results.items():
        achieved, refused = [o.achieved for o in outcomes], [o.refused for o in outcomes]
        line = (
            f"{names[scenario]:<38} achieved/3R median {statistics.median(achieved):.3f} "
            f"({min(achieved):.3f}-{max(achieved):.3f}); 429 share median {statistics.median(refused):.2%} "
            f"({min(refused):.2%}-{max(refused):.2%}); busiest/idlest deployment "
            f"{statistics.median(o.spread for o in outcomes):.2f}; wall median "
            f"{statistics.median(o.wall for o in outcomes):.0f}s"
        )
        if "ref" in results and scenario != "ref":
            ratios = [o.achieved / r.achieved for o, r in zip(outcomes, results["ref"], strict=True)]
            line += f"; ratio to ref median {statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})"
        print(line, flush=True)
    print(machine(), flush=True)
    print(f"target: achieved/3R >= 0.95 with a 429 share <= 1%; quota R = {args.rpm} requests/min on each of "
          f"{DEPLOYMENTS} deployments, {args.minutes} min of rows, server latency 100 ms + lognormal mean 100 ms, "
          "concurrency 64")  # fmt: skip


if __name__ == "__main__":
    main()
