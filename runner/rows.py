"""A row: one valid input record, with its line number and id (shared vocabulary, below every subpackage)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Row"]


@dataclass(frozen=True, slots=True)
class Row:
    """One valid input record."""

    line: int
    custom_id: str
    record: dict[str, Any]
