"""``make demo``: the classify job over the sample tickets, against the project's fake provider.

No API key and no network: the fake OpenAI-compatible server runs in this process on 127.0.0.1
with realistic latency and a few injected 429s and 500s, and labels tickets by keywords.
"""

from __future__ import annotations

import sys
from typing import Any

from runner.cli import main
from tests.doubles.provider import FakeProvider


def demo(argv: list[str]) -> int:
    """Run ``runner run classify`` against a fresh fake provider; extra flags pass through."""
    faults: dict[str, Any] = {
        "latency_ms": 100,
        "latency_mean_ms": 300,
        "p429": 0.03,
        "retry_after": 1,
        "p500": 0.03,
        "seed": 1,
    }
    with FakeProvider(**faults) as provider:
        print(f"fake provider at {provider.url} (keyword labels, ~0.4 s latency, 3% 429s, 3% 500s)", file=sys.stderr)
        args = ["run", "classify", "--model", "openai/gpt-4o-mini", "--api-base", provider.url, "--run-id", "demo"]
        return main([*args, *argv])


if __name__ == "__main__":
    sys.exit(demo(sys.argv[1:]))
