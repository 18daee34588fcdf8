"""Runner's own cost per request: CPU and rows/s against a bare litellm loop doing the same calls.

    .venv/bin/python -m bench.overhead [--rows 2000] [--concurrency 64] [--repeat 3] [--latency-ms 0]

The fake provider runs in its own process; runner and the bare loop (bench/bare.py) each run in a
child process over the same rows, plain and streamed, alternating so that machine noise hits both.
CPU is the child's user+sys time minus a child that only imports runner.provider.provider (litellm), so
import time is not counted; rows/s likewise takes the import's wall time off.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


def child(command: list[str], cwd: Path) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + sys) of one child process."""
    started = time.perf_counter()
    proc = subprocess.Popen(command, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{command[:4]} failed")
    return time.perf_counter() - started, usage.ru_utime + usage.ru_stime


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    args = parser.parse_args()
    port = free_port()
    server = subprocess.Popen([PY, "-m", "tests.doubles", "--port", str(port), "--latency-ms",
                               str(args.latency_ms)], cwd=ROOT, stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert server.stdout is not None
    url = server.stdout.readline().strip()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            with (work / "in.jsonl").open("wb") as f:
                for i in range(args.rows):
                    f.write(
                        orjson.dumps({"id": f"r-{i}", "text": f"the export fails with an error, ticket {i}"}) + b"\n"
                    )
            base = [
                PY,
                "-c",
                "from runner.provider.setup import configure; configure(); import runner.provider.provider",
            ]
            results: dict[str, list[tuple[float, float]]] = {}
            for attempt in range(args.repeat):
                import_wall, import_cpu = child(base, work)
                for stream in (False, True):
                    flag = ["--stream"] if stream else []
                    lane = "streamed" if stream else "plain"
                    runs = {
                        "runner": [PY, "-m", "runner", "run", "classify", "--jobs-dir", str(ROOT / "jobs"), "--input",
                                   "in.jsonl", "--model", "openai/gpt-4o-mini", "--api-base", url, "--run-id",
                                   f"r{attempt}{lane}", "--concurrency", str(args.concurrency), "-q", "--no-cache",
                                   "--no-dedup", *flag],
                        "bare": [PY, "-m", "bench.bare", "--input", "in.jsonl", "--api-base", url, "--concurrency",
                                 str(args.concurrency), *flag],
                    }  # fmt: skip
                    for who, command in runs.items():
                        env_cwd = ROOT if who == "bare" else work
                        if who == "bare":
                            command = [*command[:4], str(work / "in.jsonl"), *command[5:]]
                        wall, cpu = child(command, env_cwd)
                        per_row_ms = (cpu - import_cpu) / args.rows * 1000
                        rate = args.rows / max(wall - import_wall, 1e-9)
                        results.setdefault(f"{lane} {who}", []).append((per_row_ms, rate))
    finally:
        server.terminate()
        server.wait()
    print(f"{args.rows} rows, concurrency {args.concurrency}, server latency {args.latency_ms:.0f} ms, "
          f"median of {args.repeat} (min-max)")  # fmt: skip
    for lane in ("plain", "streamed"):
        for who in ("runner", "bare"):
            cpus = [r[0] for r in results[f"{lane} {who}"]]
            rates = [r[1] for r in results[f"{lane} {who}"]]
            print(f"  {lane:<8} {who:<6} CPU {statistics.median(cpus):5.2f} ms/row ({min(cpus):.2f}-{max(cpus):.2f}), "
                  f"{statistics.median(rates):6.0f} rows/s ({min(rates):.0f}-{max(rates):.0f})")  # fmt: skip
        ratios = [r[0] / b[0] for r, b in zip(results[f"{lane} runner"], results[f"{lane} bare"], strict=True)]
        print(f"  {lane:<8} runner CPU / bare CPU: median {statistics.median(ratios):.2f} "
              f"({min(ratios):.2f}-{max(ratios):.2f}), paired per repeat")  # fmt: skip


if __name__ == "__main__":
    main()
