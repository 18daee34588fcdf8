"""How the openai SDK reads an embeddings answer for litellm, so the short way reads it the same.

litellm's OpenAI and Azure embedding handlers both take the answer from the SDK (``raw_response.parse()``),
then ``model_dump()`` it: the body is read with ``json`` (or, under a content type other than JSON, kept as
text where it is not JSON: ``LegacyAPIResponse._parse``), built into ``CreateEmbeddingResponse`` without
validation (a field the body lacks reads as None, numbers of a vector as floats; anything but an object is
no response at all, and fails at ``model_dump``), and, when the call named no encoding (the Azure handler's
calls; the OpenAI handler's name none only to its plain ``post``), base64 vectors decoded as float32 numbers
(``parse_embedding_response``, with numpy where it is installed: runner's dependencies include it).
"""

from __future__ import annotations

import base64
import json
from typing import Any, Final

import numpy as np
import orjson

__all__ = ["constructed", "decoded", "read"]

_ITEM: Final = ("embedding", "index", "object")  # openai's Embedding
_RESPONSE: Final = ("data", "model", "object", "usage")  # its CreateEmbeddingResponse
_USAGE: Final = ("prompt_tokens", "total_tokens")


def read(raw: bytes, headers: dict[str, str]) -> Any:
    """The body as the SDK reads it: JSON (``json``'s error, with its message, where it is not), or its text
    where it is not JSON and says it is something else."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        if headers.get("content-type", "*").split(";")[0].endswith("json"):
            raise
    return raw.decode("utf-8", errors="replace")


def _missing(value: Any, name: str) -> AttributeError:
    return AttributeError(f"'{type(value).__name__}' object has no attribute '{name}'")


def decoded(parsed: Any) -> Any:
    """What ``parse_embedding_response`` makes of an answer to a call that named no encoding."""
    if not isinstance(parsed, dict):
        raise _missing(parsed, "data")
    data = parsed.get("data")
    if not data:
        raise ValueError("No embedding data received")
    vectors = [_vector(item) for item in data]
    if not any(isinstance(vector, str) for vector in vectors):
        return parsed
    for item, vector in zip(data, vectors, strict=True):
        if isinstance(vector, str):
            item["embedding"] = np.frombuffer(base64.b64decode(vector), dtype="float32").tolist()
    return parsed


def _vector(item: Any) -> Any:
    if not isinstance(item, dict):
        raise _missing(item, "embedding")
    return item.get("embedding")


def constructed(parsed: Any) -> dict[str, Any]:
    """``CreateEmbeddingResponse`` built from ``parsed`` without validation, dumped as litellm dumps it."""
    if not isinstance(parsed, dict):
        raise _missing(parsed, "model_dump")
    for key in _RESPONSE:
        parsed.setdefault(key, None)
    usage = parsed["usage"]
    if isinstance(usage, dict):
        for key in _USAGE:
            usage.setdefault(key, None)
    for item in parsed["data"] if isinstance(parsed["data"], list) else ():
        if not isinstance(item, dict):
            continue
        for key in _ITEM:
            item.setdefault(key, None)
        vector = item["embedding"]
        if isinstance(vector, list) and set(map(type, vector)) != {float}:  # in C: ~half a generator's time
            item["embedding"] = [float(v) if isinstance(v, int) else v for v in vector]  # as the SDK reads them
    return parsed
