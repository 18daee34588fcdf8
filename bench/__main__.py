"""Every benchmark, one after another, then a summary: ``make bench`` (``make bench ARGS=--quick``).

    .venv/bin/python -m bench [--quick] [--only seed throughput ...]

Each benchmark runs in its own process with the arguments below (median of 3 runs unless
--quick); its output is shown as it comes and kept, whole, in runs/bench-<time>.txt. The full
set takes a bit over an hour on the project's 2-core machine, most of it the rate-limit runs
(real per-minute quotas) and the sequential reference in the seed scenario; --quick takes a few
minutes and only shows that everything still runs.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

FULL = {
    "seed": ["--repeat", "3"],
    "throughput": ["--repeat", "3"],
    "memory": ["--repeat", "3"],
    "overhead": ["--rows", "2000", "--repeat", "3"],
    "resume": ["--repeat", "3"],
    "ratelimit": ["--repeat", "3"],
    "flat": ["--repeat", "3"],
    "deployments": ["--minutes", "1", "--repeat", "3"],
    "metrics": ["--repeat", "3"],
    "ray": ["--repeat", "3"],
    "batchapi": ["--rows", "10000", "--repeat", "3"],
    "export": ["--repeat", "3"],
    "cache": ["--rows", "100000", "--online-rows", "2000", "--repeat", "3"],
    "embed": ["--rows", "2000", "--repeat", "3"],
    "liveview": ["--repeat", "5"],
}
QUICK = {
    "seed": ["--quick"],
    "throughput": ["--quick"],
    "memory": ["--quick"],
    "overhead": ["--rows", "300", "--repeat", "1"],
    "resume": ["--rows", "10000", "100000", "--repeat", "1"],
    "ratelimit": ["--minutes", "0.25", "--repeat", "1"],
    "flat": ["--quick"],
    "deployments": ["--minutes", "0.25", "--repeat", "1"],
    "metrics": ["--quick"],
    "ray": ["--quick"],
    "batchapi": ["--rows", "500", "--repeat", "1"],
    "export": ["--quick"],
    "cache": ["--quick"],
    "embed": ["--rows", "300", "--repeat", "1"],
    "liveview": ["--quick"],
}
# Lines that carry a verdict or a headline figure go into the summary.
KEYS = ("target", "ratio", "efficiency", "ceiling", "first new request", "memory growth", "achieved/quota",
        "runner CPU / bare CPU", "per row processed", "peak RSS", "sequential", "where runner's CPU",
        "seed scenario", "2 s latency", "server latency", "ideal", "span", "achieved/3R", "--workers",
        "coordinator", "cost ratio", "CPU per row", "export --format", "cached re-run", "cache on disk",
        "with the cache", "list shown")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: small inputs, one repeat each")
    parser.add_argument("--only", nargs="+", choices=list(FULL), default=list(FULL), metavar="NAME")
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    log_dir = ROOT / "runs"
    log_dir.mkdir(exist_ok=True)
    log_path = log_dir / f"bench-{time.strftime('%Y%m%dT%H%M%S')}.txt"
    summary: list[str] = []
    failed: list[str] = []
    with log_path.open("w") as log:
        for name in args.only:
            command = [sys.executable, "-m", f"bench.{name}", *plan[name]]
            header = f"== {' '.join(['python', *command[1:]])}"
            print(header, flush=True)
            log.write(header + "\n")
            started = time.monotonic()
            proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
            assert proc.stdout is not None
            lines = []
            for line in proc.stdout:
                print(line, end="", flush=True)
                log.write(line)
                lines.append(line.rstrip())
            code = proc.wait()
            took = f"{name}: {time.monotonic() - started:.0f}s"
            if code != 0:
                failed.append(name)
                took += f", FAILED (exit {code})"
            summary.append(f"-- {took}")
            summary += [f"   {line.strip()}" for line in lines if any(k in line for k in KEYS)]
        log.write("\n== summary\n" + "\n".join(summary) + "\n")
    print("\n== summary (whole output: " + str(log_path.relative_to(ROOT)) + ")")
    print("\n".join(summary))
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
