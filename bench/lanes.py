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
target is 0.50 for every cheaper lane. Median (min–max) over the repeats. Each pair's records are
also compared row by row (``comparable``): the same keys, ``result``, ``error``, status and response
body, apart from what names the answer or the lane (ids, times, the tier, ``meta``) and the null
or empty fields litellm adds to an object it builds online; the rows whose records differ are counted (the
target is 0, or the bench fails).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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


Records = dict[str, dict[str, Any]]
NAMING = ("id", "created", "service_tier", "system_fingerprint")  # a body's fields that name the answer or lane


def _no_nulls(value: Any) -> Any:
    """``value`` without the keys whose value is null or ``{}`` (litellm's ``provider_specific_fields``), at every
    depth."""
    if isinstance(value, dict):
        return {k: _no_nulls(v) for k, v in value.items() if v is not None and v != {}}
    if isinstance(value, list):
        return [_no_nulls(v) for v in value]
    return value


def comparable(record: dict[str, Any]) -> dict[str, Any]:
    """What two lanes' records of the same row must share: all but ids, times, the tier and ``meta``."""
    response = record.get("response") or {}
    body = {k: v for k, v in (response.get("body") or {}).items() if k not in NAMING}
    return {"keys": list(record), "custom_id": record["custom_id"], "result": record.get("result"),
            "error": record.get("error"), "status": response.get("status_code"), "body": _no_nulls(body)}  # fmt: skip


def differing(online: Records, lane: Records) -> list[str]:
    """The rows whose records differ between the two runs (``comparable``), a row missing from either included."""
    return sorted(i for i in online.keys() | lane.keys()
                  if i not in online or i not in lane or comparable(online[i]) != comparable(lane[i]))  # fmt: skip


def one(input_path: Path, runs: Path, run_id: str, model: str, api_base: str, *extra: str) -> tuple[float, Records]:
    """One ``runner run``: its cost and its records by custom id (each custom id once, or this fails)."""
    command = [PY, "-m", "runner", "run", "batch", "--jobs-dir", str(ROOT / "jobs"), "--input", str(input_path),
               "--model", model, "--api-base", api_base, "--runs-dir", str(runs), "--run-id", run_id,
               "--concurrency", "64", "-q", *NO_REUSE, *extra]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, env={**os.environ, **KEYS}, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} exited {done.returncode}:\n{done.stderr[-2000:]}")
    run_dir = runs / "batch" / run_id
    manifest = orjson.loads((run_dir / "manifest.json").read_bytes())
    records = [orjson.loads(line) for line in (run_dir / "results.jsonl").read_bytes().splitlines()]
    by_id = {r["custom_id"]: r for r in records}
    if len(by_id) != len(records):
        raise SystemExit(f"{run_id}: a row was answered twice")
    return float(manifest["cost_usd"]), by_id


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
                online, plain = one(input_path, Path(tmp) / "runs", f"{tag}-online", model, root + below)
                lane, cheap = one(input_path, Path(tmp) / "runs", f"{tag}-lane", model, root + below, *cheaper)
                if len(plain) != args.rows or len(cheap) != args.rows:
                    raise SystemExit(f"{name}: {len(plain)} online and {len(cheap)} answered of {args.rows} rows")
                if differ := differing(plain, cheap):
                    first = differ[0]
                    raise SystemExit(f"{name}: {len(differ)} of {args.rows} rows' records differ from online, e.g. "
                                     f"{first}:\n{comparable(plain[first])}\n{comparable(cheap[first])}")  # fmt: skip
                ratios[name].append(lane / online)
                print(f"  repeat {repeat + 1}: {name}: ${lane:.6f} against ${online:.6f} online: "
                      f"{lane / online:.3f}; records equal to online's: {args.rows - len(differ)} of {args.rows}",
                      flush=True)  # fmt: skip
    print(
        f"cost of the cheaper lane / online, {args.rows} rows each, every row once in both and every record "
        "equal to online's but for ids, times, tier and meta (target 0.50):"
    )
    for name, found in ratios.items():
        print(f"  {name}: {statistics.median(found):.3f} ({min(found):.3f}–{max(found):.3f})")


if __name__ == "__main__":
    main()
