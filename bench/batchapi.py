"""``--batch-api`` against online calls: what the same rows cost, and the coordinator's CPU per row.

    .venv/bin/python -m bench.batchapi [--rows 10000] [--repeat 3]

The project's fake provider (chat, files and batches; a batch finishes as soon as it is created)
runs in its own process. Each repeat runs, in child processes over the same rows: the online run
(``runner run classify``), the batch submission (``--batch-api --no-wait``), the batch collection
(the same command again: download the output, settle each line through the job's parser, journal
it) and a child that only imports litellm (its CPU is taken off the others). Reported side by side,
median (min–max) over the repeats: cost batch/online (expect 0.50: litellm's batch prices are
half the online ones for OpenAI's models) and CPU per row of the collection and of the online run.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
from pathlib import Path

import orjson

from bench.overhead import PY, ROOT, child, free_port

MODEL = "openai/gpt-4o-mini"


def _spread(values: list[float], fmt: str) -> str:
    return f"{format(statistics.median(values), fmt)} ({format(min(values), fmt)}–{format(max(values), fmt)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    port = free_port()
    server = subprocess.Popen([PY, "-m", "tests.fake_provider", "--port", str(port)], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert server.stdout is not None
    url = server.stdout.readline().strip()
    texts = ["the app shows an error when I upload a file", "please add dark mode", "I was charged twice this month",
             "what are your office hours"]  # fmt: skip
    ratios: list[float] = []
    collect_ms: list[float] = []
    submit_ms: list[float] = []
    online_ms: list[float] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            with (work / "in.jsonl").open("wb") as f:
                for i in range(args.rows):
                    f.write(orjson.dumps({"id": f"t-{i:06d}", "text": f"{texts[i % 4]} (ticket {i})"}) + b"\n")
            base = [PY, "-m", "runner", "run", "classify", "--jobs-dir", str(ROOT / "jobs"), "--input", "in.jsonl",
                    "--model", MODEL, "--api-base", url, "-q"]  # fmt: skip
            imports = [PY, "-c", "from runner.call.setup import configure; configure(); import runner.call.provider"]
            for n in range(args.repeat):
                _, import_cpu = child(imports, ROOT)
                _, online_cpu = child([*base, "--run-id", f"online{n}", "--concurrency", "64"], work)
                batch = [*base, "--run-id", f"batch{n}", "--batch-api", "--no-wait"]
                _, submit_cpu = child(batch, work)
                _, collect_cpu = child(batch, work)
                runs = work / "runs" / "classify"
                online = orjson.loads((runs / f"online{n}" / "manifest.json").read_bytes())
                batched = orjson.loads((runs / f"batch{n}" / "manifest.json").read_bytes())
                assert batched["status"] == "completed" and batched["request_counts"]["completed"] == args.rows
                assert online["request_counts"]["completed"] == args.rows
                ratios.append(batched["cost_usd"] / online["cost_usd"])
                online_ms.append(1000 * (online_cpu - import_cpu) / args.rows)
                submit_ms.append(1000 * (submit_cpu - import_cpu) / args.rows)
                collect_ms.append(1000 * (collect_cpu - import_cpu) / args.rows)
                print(f"repeat {n + 1}: cost ${batched['cost_usd']:.4f} batch / ${online['cost_usd']:.4f} online; CPU "
                      f"per row {collect_ms[-1]:.3f} ms collect, {submit_ms[-1]:.3f} ms submit, "
                      f"{online_ms[-1]:.3f} ms online", flush=True)  # fmt: skip
    finally:
        server.terminate()
        server.wait()
    print(f"{args.rows:,} rows, median (min–max) of {args.repeat}:")
    print(f"cost ratio batch/online: {_spread(ratios, '.3f')} (target 0.50)")
    print(
        f"CPU per row processed: collect (download + parse + journal) {_spread(collect_ms, '.3f')} ms, "
        f"submit {_spread(submit_ms, '.3f')} ms, online call {_spread(online_ms, '.3f')} ms"
    )
    ratio = [c / o for c, o in zip(collect_ms, online_ms, strict=True)]
    print(f"ratio collect/online CPU per row: {_spread(ratio, '.3f')}")


if __name__ == "__main__":
    main()
