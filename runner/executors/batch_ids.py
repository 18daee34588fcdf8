"""Request ids that name a run, a chunk and a place in it: how a batch without metadata is matched back.

Anthropic's Message Batches (``custom_id``) and Gemini's batches (``metadata.key``) carry one id
per request and no metadata on the batch itself that runner could rely on, so a request's id is
``<run token>_<chunk>_<index>``: the run (the ledger's 16-hex token), the chunk, and the row's
place in the chunk's ids file, which names the row. It matches Anthropic's pattern
``^[a-zA-Z0-9_-]{1,64}$`` whatever the rows' own ids; ``j`` is appended for an Anthropic request
read back in JSON mode.
"""

from __future__ import annotations

import re

from runner.executors.batch_seam import Tag

__all__ = ["CUSTOM_ID", "custom_id", "prefix", "read_id"]

CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def prefix(tag: Tag) -> str:
    """The start of every request id of ``tag``'s chunk."""
    return f"{tag.token}_{tag.number:05d}_"


def custom_id(tag: Tag, index: int, json_mode: bool = False) -> str:
    """The id of request ``index`` of ``tag``'s chunk."""
    made = f"{prefix(tag)}{index:06d}{'j' if json_mode else ''}"
    assert CUSTOM_ID.match(made), made
    return made


def read_id(tag: Tag, made: str) -> tuple[int, bool] | None:
    """The index and JSON mode in an id ``custom_id`` made for ``tag``; None for any other id."""
    start = prefix(tag)
    if not made.startswith(start):
        return None
    rest = made[len(start) :]
    json_mode = rest.endswith("j")
    digits = rest[:-1] if json_mode else rest
    return (int(digits), json_mode) if digits.isdigit() else None
