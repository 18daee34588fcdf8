"""A completion function for workers in other processes: litellm's, with each send's time written down.

Ray workers import it by name (it is pickled by reference), so it lives in a module of its own with
no test imports. The times are ``time.monotonic()``, the same clock in every process of a machine.
"""

from __future__ import annotations

import os
import time
from typing import Any

from runner.provider.provider import acompletion

STAMPS = "RUNNER_TEST_STAMPS"  # the file each call appends "<monotonic time> <kind> <last message>" to
SENT, FAILED = ">", "x"  # kinds: the call was made; it raised (a 429, say), once the answer came back


def _stamp(kind: str, text: str) -> None:
    fd = os.open(os.environ[STAMPS], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{time.monotonic():.6f} {kind} {text}\n".encode())  # one write: lines never interleave
    finally:
        os.close(fd)


async def stamped(**request: Any) -> Any:
    """``acompletion``, with when it was called (and when it failed) appended to $RUNNER_TEST_STAMPS."""
    text = str(request["messages"][-1]["content"]).replace("\n", " ")
    _stamp(SENT, text)
    try:
        return await acompletion(**request)
    except Exception:
        _stamp(FAILED, text)
        raise


def stamps(path: str, kind: str = SENT) -> list[tuple[float, str]]:
    """Every call of ``kind`` so far, in time order."""
    try:
        with open(path) as f:
            lines = [line.rstrip("\n").split(" ", 2) for line in f if line.strip()]
    except FileNotFoundError:
        return []
    return sorted((float(t), text) for t, k, text in lines if k == kind)
