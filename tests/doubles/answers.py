"""The canned answer and token accounting: the keyword label, token estimates, example arguments, ``usage``.

A ticket is labelled bug, feature, billing or other by keywords (English and Chinese); tokens are
estimated cheaply and deterministically, one per CJK character and one per 4 other characters.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final


def _keywords(spec: str) -> re.Pattern[str]:
    # Word boundaries keep "add" from matching "address"; CJK has no word boundaries.
    words = spec.split("|")
    parts = [rf"\b{re.escape(w)}s?\b" if w.isascii() else re.escape(w) for w in words]
    return re.compile("|".join(parts), re.IGNORECASE)


# Checked in this order, so a ticket mentioning both a refund and a crash is billing.
_CLASSES: Final = (
    (
        "billing",
        _keywords(
            "refund|charge|charged|invoice|billing|payment|card|subscription|price|VAT"
            "|退款|扣费|发票|账单|付款|收费|订阅|价格"
        ),
    ),
    (
        "bug",
        _keywords(
            "crash|error|bug|broken|fails|failed|not working|doesn't work|exception|500"
            "|freeze|崩溃|报错|错误|无法|闪退|打不开|失败"
        ),
    ),
    (
        "feature",
        _keywords(
            "feature|add|would be nice|please support|request|wish|could you|dark mode"
            "|export|integration|希望|建议|增加|支持|功能"
        ),
    ),
)


def classify(text: str) -> str:
    """Label a support ticket as bug, feature, billing or other by keywords (billing wins ties)."""
    text = text.replace("\u2019", "'")  # so a typographic "doesn’t work" still matches
    for label, pattern in _CLASSES:
        if pattern.search(text):
            return label
    return "other"


_CJK: Final = re.compile(r"[\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef]")


def count_tokens(text: str) -> int:
    """Cheap deterministic token estimate: one per CJK character, one per 4 other characters."""
    cjk = len(_CJK.findall(text))
    return cjk + math.ceil((len(text) - cjk) / 4)


def truncate_to_tokens(text: str, limit: int) -> str:
    """Return the longest prefix of ``text`` whose estimate is at most ``limit`` tokens."""
    cjk = other = 0
    for i, ch in enumerate(text):
        if _CJK.match(ch):
            cjk += 1
        else:
            other += 1
        if cjk + math.ceil(other / 4) > limit:
            return text[:i]
    return text


def content_text(content: object) -> str:
    """Flatten a message ``content`` (string, None or a list of parts) into plain text."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(part.get("text", "")) for part in content if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


def prompt_tokens(messages: Sequence[Mapping[str, Any]]) -> int:
    """Estimate prompt tokens: the content estimate plus 4 per message of framing, at least 1."""
    return max(1, sum(4 + count_tokens(content_text(m.get("content"))) for m in messages))


_FORMAT_EXAMPLES: Final = {
    "email": "user@example.com",
    "date": "2024-01-01",
    "date-time": "2024-01-01T00:00:00Z",
    "time": "00:00:00",
    "uri": "https://example.com",
    "uuid": "00000000-0000-4000-8000-000000000000",
}


def _example_string(schema: Mapping[str, Any], text: str) -> str:
    value = _FORMAT_EXAMPLES.get(str(schema.get("format")), text or "example")
    max_length, min_length = schema.get("maxLength"), schema.get("minLength")
    if isinstance(max_length, int):
        value = value[:max_length]
    if isinstance(min_length, int):
        value = value.ljust(min_length, "x")
    return value


def example_value(schema: Any, text: str, defs: Mapping[str, Any] | None = None, depth: int = 0) -> Any:
    """A deterministic plausible value for a JSON schema (const, null if nullable, enum[0], text, 0...)."""
    if not isinstance(schema, dict) or depth > 20:
        return None
    defs = defs or {}
    if isinstance(schema.get("$ref"), str):  # local refs only: "#/$defs/Name" or "#/definitions/Name"
        return example_value(defs.get(schema["$ref"].rsplit("/", 1)[-1]), text, defs, depth + 1)
    type_ = schema.get("type")
    options = schema.get("anyOf") or schema.get("oneOf") or schema.get("allOf")
    if "const" in schema:
        return schema["const"]
    nullable_options = isinstance(options, list) and any(
        isinstance(o, dict) and o.get("type") == "null" for o in options
    )
    if schema.get("nullable") is True or (isinstance(type_, list) and "null" in type_) or nullable_options:
        return None
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    if isinstance(options, list) and options:
        return example_value(options[0], text, defs, depth + 1)
    if isinstance(type_, list):
        type_ = type_[0] if type_ else None
    if type_ == "object" or (type_ is None and isinstance(schema.get("properties"), dict)):
        properties = schema.get("properties")
        if not isinstance(properties, dict):
            return {}
        return {name: example_value(sub, text, defs, depth + 1) for name, sub in properties.items()}
    if type_ == "array":
        min_items = schema.get("minItems")
        return [example_value(schema.get("items"), text, defs, depth + 1)] * max(
            1, min_items if isinstance(min_items, int) else 0
        )
    if type_ == "string":
        return _example_string(schema, text)
    if type_ in ("integer", "number"):
        minimum = schema.get("minimum")
        return minimum if isinstance(minimum, int | float) and not isinstance(minimum, bool) else 0
    if type_ == "boolean":
        return False
    return schema.get("default")


def example_arguments(parameters: Any, text: str) -> str:
    """The arguments string for a forced tool call: example_value of its parameters, compact JSON."""
    defs: dict[str, Any] = {}
    if isinstance(parameters, dict):
        for key in ("definitions", "$defs"):
            if isinstance(parameters.get(key), dict):
                defs.update(parameters[key])
    value = example_value(parameters, text, defs)
    return json.dumps(value if isinstance(value, dict) else {}, ensure_ascii=False, separators=(",", ":"))


def usage(prompt: int, completion: int) -> dict[str, Any]:
    """Build an OpenAI ``usage`` object with the detail blocks current clients expect."""
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }
