"""Reading JSONL files that runner or its users wrote: one JSON object a line."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

__all__ = ["objects"]


def objects(path: Path) -> Iterator[dict[str, Any] | None]:
    """Each non-blank line of ``path`` parsed (None for one that is not a JSON object); nothing if absent."""
    if not path.exists():
        return
    with path.open("rb") as f:
        for raw in f:
            if not raw.strip():
                continue
            try:
                value = orjson.loads(raw)
            except orjson.JSONDecodeError:
                yield None
                continue
            yield value if isinstance(value, dict) else None
