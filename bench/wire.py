"""CPU per request, side by side: runner (the short way, automatic), runner forced through litellm,
the bare litellm loop, the openai SDK loop and a plain aiohttp loop.

    .venv/bin/python -m bench.wire [--rows 3000] [--repeat 3] [--concurrency 64] [--latency-ms 0]
                                   [--stream | --embed [--base64]] [--provider openai|hosted_vllm|litellm_proxy|azure]

Non-streaming chat (the classify job; ``--stream``: streamed, with the usage chunk, each client
assembling or reading every chunk; ``--embed``: ``/v1/embeddings`` batch lines of one short text
each, 1,536 numbers an answer, as JSON floats or, with ``--base64``, as base64; runner runs them as
``runner run batch``, the bare loop is ``litellm.aembedding`` under a semaphore) against the bench
server at zero latency, each client in its own process, in an order that rotates from one repeat to
the next. CPU per request is the whole process's CPU (user + system, every thread) less the median
CPU of a process that only imports what that client imports, over the rows: robust to a busy
machine, unlike requests/s (shown too, with the load). Runner's own start-up and shut-down (job,
journal, manifest) count against it. The import's own CPU varies by a few tenths of a second on a
loaded machine (~0.1 ms/request over 3000 rows), so the CPU spent between the server's first request
and its last answer is shown too ("in the window": what a client does before its first request and
after its last answer is left out). Targets (issue 26): runner <= 1.0 ms of CPU per request, <= 3.0
ms streamed, <= 1.0 ms an embeddings request. ``--provider`` names the chat model after another of the
short way's providers for runner, runner forced through litellm and the bare loop: ``hosted_vllm/gpt-4o-mini``
(litellm's own HTTP handler, as for a vLLM or SGLang server), ``litellm_proxy/gpt-4o-mini``,
``azure/gpt-4o-mini`` (the deployment's URL with an api-version); the openai SDK and aiohttp loops send the
same JSON whatever litellm would call the provider.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

from bench.common import (
    MODEL,
    NO_REUSE,
    PY,
    Server,
    bare_command,
    child,
    floor_command,
    machine,
    runner_command,
    server,
    spread,
    tickets,
    write_rows,
)
from bench.embed import write_input

LITELLM = "from runner.provider.setup import configure; configure(); import runner.provider.provider"
CLIENTS = {  # name -> what it imports before its first request (subtracted)
    "runner": LITELLM,
    "runner --sender litellm": LITELLM,
    "bare litellm loop": LITELLM,
    "openai SDK loop": "import openai, orjson, runner.job.definition",
    "aiohttp loop": "import aiohttp, orjson, runner.job.definition",
}


def commands(
    path: Path, url: str, concurrency: int, run: str, stream: bool = False, model: str = MODEL
) -> dict[str, list[str]]:
    streamed = ["--stream"] if stream else []
    return {
        "runner": runner_command(path, url, concurrency, "--run-id", f"auto-{run}", *streamed, model=model),
        "runner --sender litellm": runner_command(
            path, url, concurrency, "--run-id", f"litellm-{run}", "--sender", "litellm", *streamed, model=model
        ),
        "bare litellm loop": bare_command(path, url, concurrency, *streamed, model=model),
        "openai SDK loop": [
            PY,
            "-m",
            "bench.sdk",
            "--input",
            str(path),
            "--api-base",
            url,
            "--concurrency",
            str(concurrency),
            *streamed,
        ],
        "aiohttp loop": floor_command(path, url, concurrency, *streamed),
    }


def embed_commands(path: Path, url: str, concurrency: int, run: str) -> dict[str, list[str]]:
    """The same five clients over ``/v1/embeddings`` batch lines."""
    runner = [PY, "-m", "runner", "run", "batch", "--input", str(path), "--api-base", url, "--concurrency",
              str(concurrency), "-q", *NO_REUSE]  # fmt: skip
    loop = ["--input", str(path), "--api-base", url, "--concurrency", str(concurrency), "--embed"]
    return {
        "runner": [*runner, "--run-id", f"auto-{run}"],
        "runner --sender litellm": [*runner, "--run-id", f"litellm-{run}", "--sender", "litellm"],
        "bare litellm loop": [PY, "-m", "bench.embed", "--bare-child", str(path), url, *loop[4:6]],
        "openai SDK loop": [PY, "-m", "bench.sdk", *loop],
        "aiohttp loop": [PY, "-m", "bench.floor", *loop],
    }


def once(srv: Server, command: list[str], cwd: Path) -> tuple[float, float, float]:
    """Requests/s in the server's window, the process's CPU seconds, and its CPU seconds in the window."""
    srv.reset()
    usage = child(command, cwd=cwd)
    window = srv.window()
    if window.answered != srv.stats()["total"]:
        raise SystemExit("the server answered fewer requests than it was sent")
    return window.answered / window.seconds, usage.cpu, usage.cpu_between(window)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--stream", action="store_true", help="streamed requests (usage chunk asked for)")
    parser.add_argument("--embed", action="store_true", help="/v1/embeddings requests instead of chat")
    parser.add_argument("--base64", action="store_true", help="with --embed: encoding_format base64")
    parser.add_argument("--quick", action="store_true", help="1000 rows, one repeat")
    parser.add_argument("--provider", choices=["openai", "hosted_vllm", "litellm_proxy", "azure"], default="openai",
                        help="chat: the model's litellm provider (runner, --sender litellm, bare loop)")  # fmt: skip
    args = parser.parse_args()
    if args.quick:
        args.rows, args.repeat = 1000, 1
    if args.stream and args.embed:
        parser.error("--stream and --embed: choose one (embeddings are not streamed)")
    if args.embed and args.provider != "openai":
        parser.error("--embed and --provider: the short way sends embeddings for openai/ only")
    model = f"{args.provider}/{MODEL.removeprefix('openai/')}"
    os.environ.setdefault("AZURE_API_KEY", "sk-bench")  # azure/ reads no OpenAI key; every client inherits it
    mode = " --stream" if args.stream else " --embed" + (" --base64" if args.base64 else "") if args.embed else ""
    mode += f", {model}" if not args.embed else ""
    print(f"bench.wire{mode}, {args.rows} rows, concurrency {args.concurrency}, "
          f"server latency {args.latency_ms:.0f} ms, "
          f"median of {args.repeat} (min–max); {machine()}", flush=True)  # fmt: skip
    imports: dict[str, list[float]] = {}
    names = list(CLIENTS)
    got: dict[str, list[tuple[float, float, float]]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as tmp, server(latency_ms=args.latency_ms) as srv:
        work = Path(tmp)
        if args.embed:
            path = work / "in.jsonl"
            write_input(path, args.rows, "base64" if args.base64 else "float")
        else:
            path = write_rows(work / "in.jsonl", tickets(args.rows))
        for attempt in range(args.repeat):
            if args.embed:
                run = embed_commands(path, srv.url, args.concurrency, str(attempt))
            else:
                run = commands(path, srv.url, args.concurrency, str(attempt), args.stream, model)
            shift = attempt % len(names)
            for name in names[shift:] + names[:shift]:
                got[name].append(once(srv, run[name], work))
            for code in set(CLIENTS.values()):
                imports.setdefault(code, []).append(child([PY, "-c", code]).cpu)
    print(f"{'client':<24} {'CPU ms/request':<22} {'in the window':<22} requests/s")
    cpu: dict[str, list[float]] = {}
    for name in names:
        base = statistics.median(imports[CLIENTS[name]])
        cpu[name] = [(seconds - base) / args.rows * 1000 for _, seconds, _ in got[name]]
        window = [seconds / args.rows * 1000 for _, _, seconds in got[name]]
        rates = [rate for rate, _, _ in got[name]]
        print(f"{name:<24} {spread(cpu[name]):<22} {spread(window):<22} {spread(rates, '{:.0f}')}")
    spreads = {code: spread(samples) for code, samples in imports.items()}
    print("import-only CPU subtracted (s, median (min–max)): " + "; ".join(
        f"{name}: {spreads[CLIENTS[name]]}" for name in ("runner", "openai SDK loop", "aiohttp loop")))  # fmt: skip
    mine, target = statistics.median(cpu["runner"]), 3.0 if args.stream else 1.0
    ratios = [r / b for r, b in zip(cpu["runner"], cpu["bare litellm loop"], strict=True)]
    print(f"runner / bare litellm loop, paired per repeat: {spread(ratios)}")
    print(f"runner / runner --sender litellm: CPU {mine / statistics.median(cpu['runner --sender litellm']):.2f}; "
          f"target runner <= {target} ms/request: {'met' if mine <= target else 'MISSED'} ({mine:.2f}); "
          f"load average now {machine().rsplit(' ', 1)[-1]}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
