"""`runner export` of a large run: seconds and peak RSS per format, beside a plain read of the journal.

    .venv/bin/python -m bench.export [--rows 100000 1000000] [--repeat 3] [--quick]

A run directory is made synthetically for each size: an input of N rows and a journal of N records
shaped and sized like a classify run's (~850 bytes), written in completion order (input order
shuffled within windows of 64, as a run at concurrency 64 leaves it), 2% of them in errors.jsonl,
with a manifest naming the input. Each export runs in its own process (``runner export classify
--format F --output …``); peak RSS is that process's ``ru_maxrss``. The references: ``cat`` of the
journal to /dev/null (the least any export must do: read it) and a Python loop over the journal's
lines (the interpreter's own footprint). Memory is flat if the peak does not grow with N.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import orjson

from bench.common import PY, ROOT, machine, spread
from bench.resume import BODY
from runner.records import error_record, result_record
from runner.run.fingerprint import input_identity
from runner.run.manifest import write_manifest

WINDOW = 64
FORMATS = ("jsonl", "csv", "parquet")
# ru_maxrss keeps the forking parent's peak across exec, so the measured process reports its own
# high-water mark (VmHWM, reset by exec) as it exits.
HWM = "print(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')), file=sys.stderr)"
RUNNER = f"import sys\nfrom runner.cli import main\ncode = main(sys.argv[1:])\n{HWM}\nsys.exit(code)"
LOOP = f"import sys\nfor p in sys.argv[1:]:\n    for line in open(p, 'rb'): pass\n{HWM}"


def timed(command: list[str], cwd: Path) -> tuple[float, float, float]:
    """Seconds, CPU seconds and peak RSS (MiB, nan if the command does not report it) of one run."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    with tempfile.TemporaryFile() as err:
        started = time.monotonic()
        proc = subprocess.Popen(command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=err)  # fmt: skip
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        said = err.read().decode()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command[:8])} ... exited {proc.returncode}: {said[-3000:]}")
    peaks = [line.split()[1] for line in said.splitlines() if line.startswith("VmHWM")]
    return wall, usage.ru_utime + usage.ru_stime, int(peaks[-1]) / 1024 if peaks else float("nan")


def make_run(root: Path, rows: int) -> Path:
    """runs/classify/<rows>/ with its input, a shuffled journal and a manifest; returns the run directory."""
    run_dir = root / "runs" / "classify" / str(rows)
    run_dir.mkdir(parents=True)
    input_path = root / f"in-{rows}.jsonl"
    with input_path.open("wb") as f:
        for i in range(rows):
            row = {"id": f"r-{i:07d}", "channel": "email", "text": f"I was charged twice for order {i}, please refund"}
            f.write(orjson.dumps(row) + b"\n")
    order = list(range(rows))
    rng = random.Random(rows)
    for start in range(0, rows, WINDOW):
        window = order[start : start + WINDOW]
        rng.shuffle(window)
        order[start : start + WINDOW] = window
    meta = {"model": "openai/gpt-4o-mini", "attempts": 1, "latency_s": 0.41, "rate_limited": 0,
            "cost_usd": 2.865e-05, "finished_at": "2026-11-25T16:15:51Z"}  # fmt: skip
    with (run_dir / "results.jsonl").open("wb") as ok, (run_dir / "errors.jsonl").open("wb") as bad:
        for i in order:
            custom_id, line_meta = f"r-{i:07d}", {"line": i + 1, **meta}
            if i % 50 == 7:
                record = error_record(custom_id, "invalid_result", "expected one label", line_meta, None, BODY)
                bad.write(orjson.dumps(record.line, option=orjson.OPT_APPEND_NEWLINE))
            else:
                record = result_record(custom_id, BODY, "req_0123456789abcdef", "billing", line_meta)
                ok.write(orjson.dumps(record.line, option=orjson.OPT_APPEND_NEWLINE))
    write_manifest(run_dir / "manifest.json", {"status": "completed", "input_file": input_identity(input_path)})
    return run_dir


def measure(root: Path, run_dir: Path, repeat: int) -> dict[str, list[tuple[float, float, float]]]:
    """(seconds, CPU seconds, peak RSS MiB) per way of reading the run, ``repeat`` times each, interleaved."""
    journal = [str(run_dir / "results.jsonl"), str(run_dir / "errors.jsonl")]
    ways = {"cat journal > /dev/null": ["cat", *journal], "python: read journal lines": [PY, "-c", LOOP, *journal]}
    base = [PY, "-c", RUNNER, "export", "classify", "--runs-dir", str(root / "runs"), "--run-id", run_dir.name]
    for fmt in FORMATS:
        ways[f"export --format {fmt}"] = [*base, "--format", fmt, "--output", str(root / f"out.{fmt}")]
    ways["export --format parquet --with-input"] = [*base, "--format", "parquet", "--with-input", "--output",
                                                    str(root / "out-in.parquet")]  # fmt: skip
    ways["export --order finished (jsonl)"] = [*base, "--order", "finished", "--output", str(root / "fin.jsonl")]
    seen: dict[str, list[tuple[float, float, float]]] = {name: [] for name in ways}
    for _ in range(repeat):
        for name, command in ways.items():
            seen[name].append(timed(command, root))
    lines = sum(1 for _ in (root / f"out.{FORMATS[0]}").open("rb"))
    expected = int(run_dir.name)
    if lines != expected:
        raise SystemExit(f"the JSONL export has {lines} rows, expected {expected}")
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.export", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="10,000 and 100,000 rows, once")
    args = parser.parse_args()
    sizes, repeat = ([10_000, 100_000], 1) if args.quick else (args.rows, args.repeat)
    print(f"export benchmark: {machine()}")
    results: dict[int, dict[str, list[tuple[float, float, float]]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        for rows in sizes:
            root = Path(tmp) / str(rows)
            run_dir = make_run(root, rows)
            size = sum((run_dir / n).stat().st_size for n in ("results.jsonl", "errors.jsonl"))
            print(f"\n{rows:,} rows, journal {size / 2**20:,.0f} MiB (median of {repeat}, min-max)")
            results[rows] = measure(root, run_dir, repeat)
            cat = statistics.median(s for s, _, _ in results[rows]["cat journal > /dev/null"])
            for name, seen in results[rows].items():
                secs, cpu, rss = ([x[i] for x in seen] for i in range(3))
                ratio = statistics.median(secs) / cat if cat else float("nan")
                print(f"  {name:<38} {spread(secs)} s ({ratio:5.1f}x cat), CPU {spread(cpu)} s, "
                      f"peak RSS {spread(rss, '{:.0f}')} MiB")  # fmt: skip
            jsonl = statistics.median(c for _, c, _ in results[rows]["export --format jsonl"])
            print(f"  CPU per row, export jsonl: {jsonl / rows * 1e6:.1f} µs")
    if len(sizes) > 1:
        small, large = sizes[0], sizes[-1]
        print(f"\npeak RSS at {large:,} rows / at {small:,} rows (flat memory: ~1.0)")
        for name in list(results[large])[1:]:
            a = statistics.median(r for *_, r in results[small][name])
            b = statistics.median(r for *_, r in results[large][name])
            print(f"  {name:<38} {b:6.1f} / {a:6.1f} MiB = {b / a:.2f}")


if __name__ == "__main__":
    main()
