"""Keeping API keys out of records, logs and messages."""

from __future__ import annotations

import os
import re

__all__ = ["add_secret", "redact"]

_SECRET_NAME = re.compile(r"(API_KEY|_TOKEN|_SECRET|PASSWORD)$|^(OPENAI|ANTHROPIC|AZURE|GEMINI|COHERE)_")
# Key-shaped strings as providers print them in error messages, even partly masked ("sk-abc***xyz").
_KEY_SHAPE = re.compile(r"\b(sk|pk|rk|key|gsk|xai|AIza)[-_][A-Za-z0-9_\-*.]{6,}")
# Credentials in a URL (http://user:secret@host/v1), as an --api-base may carry them.
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@]+@")

# Keys that live in no environment variable (inline in a deployments file), added at start-up.
_added: set[str] = set()


def _secret_values() -> list[str]:
    values = {v for k, v in os.environ.items() if _SECRET_NAME.search(k) and len(v) >= 8} | _added
    return sorted(values, key=len, reverse=True)


def redact(text: str) -> str:
    """``text`` with the values of secret-looking environment variables, key-shaped strings and the
    credentials in URLs masked."""
    for value in _secret_values():
        text = text.replace(value, "***")
    text = _URL_USERINFO.sub(r"\1***@", text)
    return _KEY_SHAPE.sub(lambda m: m.group(1) + "-***", text)


def add_secret(value: str) -> None:
    """Mask ``value`` too from now on (a key written inline in a deployments file, not in the environment)."""
    if len(value) >= 8:
        _added.add(value)
