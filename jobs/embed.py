"""Embed the sample tickets: one vector per ticket, for search, clustering or finding duplicates.

Offline by default (``local/multilingual-e5-small``: 384 numbers, no key, no network); any litellm
embedding model with ``--model`` (``openai/text-embedding-3-small``: 1,536). Vectors are asked for
as base64 (float32, little-endian), a quarter of the size of JSON floats in results.jsonl; ``runner
export`` decodes them. The vector stays in ``response.body.data[0].embedding`` (one copy per row):
``result`` says where it is and how long it is, rather than repeating it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from runner import InvalidResult, Job, RowError
from runner.job.endpoints import EMBEDDINGS

ENCODING = "base64"  # or "float": plain JSON numbers, about four times the size


def build_request(record: Mapping[str, Any]) -> dict[str, Any]:
    """The ticket's text as the embedding input."""
    text = record.get("text")
    if not isinstance(text, str) or not text.strip():
        raise RowError("invalid_record", "the record needs a non-empty 'text' string")
    return {"input": text.strip(), "encoding_format": ENCODING}


def parse_result(body: Mapping[str, Any]) -> dict[str, Any]:
    """Where the one vector is, and its length (checked: a row with no vector is an error)."""
    data = body.get("data") or []
    vector = data[0].get("embedding") if len(data) == 1 else None
    if isinstance(vector, str):  # base64 float32: 4 bytes a number
        dimensions = (len(vector) * 3 // 4 - vector[-2:].count("=")) // 4
    elif isinstance(vector, list):
        dimensions = len(vector)
    else:
        raise InvalidResult(f"expected one embedding, got {len(data)}")
    return {"embedding": "response.body.data[0].embedding", "dimensions": dimensions, "encoding": ENCODING}


job = Job(
    name="embed",
    model="local/multilingual-e5-small",
    endpoint=EMBEDDINGS,
    build_request=build_request,
    parse_result=parse_result,
    id_field="id",
    description="each ticket's embedding (base64 float32); offline by default",
    concurrency=32,
    max_attempts=6,
    timeout=60.0,
)
