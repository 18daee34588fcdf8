"""Reading how long a provider asked us to wait from its response headers."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime

__all__ = ["parse_duration", "retry_after_seconds"]

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float | None:
    """Seconds in an OpenAI-style reset duration ('1s', '6m0s', '250ms', '0.5'), or None."""
    text = text.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(float(n) * _UNIT[u] for n, u in parts)


def retry_after_seconds(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """The wait the provider asked for, in seconds, or None when it asked for none.

    Looks at retry-after-ms, retry-after (seconds or an HTTP date), then x-ratelimit-reset-requests
    and -tokens for whichever limit has nothing remaining (the longer wait if both).
    """
    lower = {k.lower(): v for k, v in headers.items()}
    if (ms := lower.get("retry-after-ms")) is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    if (value := lower.get("retry-after")) is not None:
        try:
            return max(0.0, float(value))
        except ValueError:
            try:
                when = parsedate_to_datetime(value).timestamp()
            except (TypeError, ValueError):
                when = None
            if when is not None:
                return max(0.0, when - (time.time() if now is None else now))
    waits = []
    for kind in ("requests", "tokens"):
        reset = lower.get(f"x-ratelimit-reset-{kind}")
        # Only a limit that is used up explains the refusal; the other one's reset is irrelevant.
        if reset is not None and lower.get(f"x-ratelimit-remaining-{kind}", "0").strip() in ("0", "0.0"):
            waits.append(parse_duration(reset))
    known = [w for w in waits if w is not None]
    return max(known) if known else None
