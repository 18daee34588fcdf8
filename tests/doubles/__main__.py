"""OpenAI-compatible fake chat provider that injects faults and latency on demand, for tests.

Serves in the foreground until Ctrl-C, printing the api_base first:
``python -m tests.doubles --port 8099 --latency-ms 50 --p429 0.05 --seed 1 --rpm-limit 600``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import fields

from tests.doubles.config import FaultConfig
from tests.doubles.server import FakeServer


def main(argv: Sequence[str] | None = None) -> None:
    """Serve in the foreground until Ctrl-C, printing the api_base first."""
    parser = argparse.ArgumentParser(prog="python -m tests.doubles", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8099, help="0 picks a free port")
    integers = ("seed", "rpm_limit", "tpm_limit")
    parser.add_argument("--api-key", help="refuse (401) every request that does not carry this key")
    for name in (f.name for f in fields(FaultConfig) if f.name not in ("latency_dist", "api_key")):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int if name in integers else float)
    parser.add_argument("--latency-dist", choices=("lognormal", "exponential"))
    args = vars(parser.parse_args(argv))
    port = args.pop("port")
    try:
        server = FakeServer(FaultConfig().merged({k: v for k, v in args.items() if v is not None}))
    except ValueError as exc:
        parser.error(str(exc))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(server.serve(port, lambda url: print(url, flush=True)))


if __name__ == "__main__":
    main()
