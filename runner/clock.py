"""Time stamps as runner writes them (shared vocabulary, below every subpackage)."""

from __future__ import annotations

import time

__all__ = ["iso_now"]


def iso_now(now: float | None = None) -> str:
    """UTC time as ISO 8601 with seconds."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if now is None else now))
