"""What the cheaper lanes cost against the online one, for each provider, side by side in one run.

    .venv/bin/python -m bench.lanes [--rows 2000] [--repeat 3]

The same rows (raw Batch lines, the ``batch`` job: a support-ticket question, ``max_tokens`` 5 and no
``temperature``, which gpt-5 models refuse at 0) go through ``runner run`` (the CLI, a process each) against the
project's fake provider (``bench.server``: OpenAI's chat, files and batches, Anthropic's Messages
and Message Batches, Gemini's generateContent and batches; a batch finishes as soon as it is made):

- for each of ``openai/``, ``anthropic/`` and ``gemini/``: online, then ``--batch-api``;
- ``openai/gpt-5-mini`` at the default tier, then ``--service-tier flex``.

Each pair's cost ratio (the manifest's ``cost_usd``, as litellm's price map prices each answer) is
printed with every row answered exactly once in both runs (checked, or the bench fails): the
target is 0.50 for every cheaper lane. Median (min–max) over the repeats.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import orjson

from bench.common import NO_REUSE, PY, ROOT, machine, server, tickets, write_rows

# name, model, the api_base below the server's root, the cheaper lane's flags
PAIRS: Sequence[tuple[str, str, str, tuple[str, ...]]] = (
    ("openai batch", "openai/gpt-4o-mini", "/v1", ("--batch-api", "--batch-poll", "0.2")),
    ("anthropic batch", "anthropic/claude-haiku-4-5", "", ("--batch-api", "--batch-poll", "0.2")),
    ("gemini batch", "gemini/gemini-2.5-flash", "/v1beta", ("--batch-api", "--batch-poll", "0.2")),
    ("openai flex", "openai/gpt-5-mini", "/v1", ("--service-tier", "flex")),
)
KEYS = {"OPENAI_API_KEY": "sk-bench", "ANTHROPIC_API_KEY": "sk-ant-bench", "GEMINI_API_KEY": "bench-key"}


def one(input_path: Path, runs: Path, run_id: str, model: str, api_base: str, *extra: str) -> tuple[float, int]:
    """One ``runner run``: its cost and the rows it answered (each custom id once, or this fails)."""
    command = [PY, "-m", "runner", "run", "batch", "--jobs-dir", str(ROOT / "jobs"), "--input", str(input_path),
               "--model", model, "--api-base", api_base, "--runs-dir", str(runs), "--run-id", run_id,
               "--concurrency", "64", "-q", *NO_REUSE, *extra]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, env={**os.environ, **KEYS}, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} exited {done.returncode}:\n{done.stderr[-2000:]}")
    run_dir = runs / "batch" / run_id
    manifest = orjson.loads((run_dir / "manifest.json").read_bytes())
    ids = [orjson.loads(line)["custom_id"] for line in (run_dir / "results.jsonl").read_bytes().splitlines()]
    if len(ids) != len(set(ids)):
        raise SystemExit(f"{run_id}: a row was answered twice")
    return float(manifest["cost_usd"]), len(ids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"bench.lanes, {machine()}", flush=True)
    ratios: dict[str, list[float]] = {name: [] for name, *_ in PAIRS}
    with tempfile.TemporaryDirectory() as tmp, server() as srv:
        root = srv.url.removesuffix("/v1")
        lines = [{"custom_id": t["id"], "method": "POST", "url": "/v1/chat/completions",
                  "body": {"model": "openai/gpt-4o-mini", "max_tokens": 5,
                           "messages": [{"role": "user", "content": f"Classify this ticket: {t['text']}"}]}}
                 for t in tickets(args.rows)]  # fmt: skip
        input_path = write_rows(Path(tmp) / "in.jsonl", lines)
        for repeat in range(args.repeat):
            for name, model, below, cheaper in PAIRS:
                tag = f"{name.replace(' ', '-')}-{repeat}"
                online, answered = one(input_path, Path(tmp) / "runs", f"{tag}-online", model, root + below)
                lane, lane_answered = one(input_path, Path(tmp) / "runs", f"{tag}-lane", model, root + below,
                                          *cheaper)  # fmt: skip
                if answered != args.rows or lane_answered != args.rows:
                    raise SystemExit(f"{name}: {answered} online and {lane_answered} answered of {args.rows} rows")
                ratios[name].append(lane / online)
                print(f"  repeat {repeat + 1}: {name}: ${lane:.6f} against ${online:.6f} online: "
                      f"{lane / online:.3f}", flush=True)  # fmt: skip
    print(f"cost of the cheaper lane / online, {args.rows} rows each, every row once in both (target 0.50):")
    for name, found in ratios.items():
        print(f"  {name}: {statistics.median(found):.3f} ({min(found):.3f}–{max(found):.3f})")


if __name__ == "__main__":
    main()
