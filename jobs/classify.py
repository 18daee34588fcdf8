"""Support-ticket triage: each ticket becomes exactly one of bug, feature, billing, other."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from runner import InvalidResult, Job, RowError, content_of

LABELS = ("bug", "feature", "billing", "other")

SYSTEM_PROMPT = """\
You triage customer support tickets for a software company. Put the ticket in exactly one category:
- bug: something is broken, crashes, shows an error, loses or corrupts data, or behaves wrongly
- feature: a request for new functionality or an improvement to existing functionality
- billing: charges, refunds, invoices, payment methods, plans, prices, taxes, subscriptions
- other: anything else (account access, how-to questions, praise, partnerships, spam, shipping, privacy requests)
Tickets may be written in any language. If a ticket mentions several things, choose its main request.
Answer with one lowercase word: bug, feature, billing or other. No punctuation, no explanation."""

_WORD = re.compile(r"[a-z]+")


def build_request(record: Mapping[str, Any]) -> dict[str, Any]:
    """A short, deterministic classification request for one ticket."""
    text = record.get("text")
    if not isinstance(text, str) or not text.strip():
        raise RowError("invalid_record", "the record needs a non-empty 'text' string (the ticket)")
    return {
        "messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": text.strip()}],
        "temperature": 0,
        "max_tokens": 5,
    }


def parse_label(body: Mapping[str, Any]) -> str:
    """The one label the answer names ('Bug.', '**billing**', 'Label: other' are accepted)."""
    answer = content_of(body)
    named = {word for word in _WORD.findall(answer.lower()) if word in LABELS}
    if len(named) != 1:
        shown = answer if len(answer) <= 80 else answer[:77] + "..."
        raise InvalidResult(f"expected exactly one of {', '.join(LABELS)}; the model answered {shown!r}")
    return named.pop()


job = Job(
    name="classify",
    model="gpt-4o-mini",
    build_request=build_request,
    parse_result=parse_label,
    id_field="id",
    description="support ticket -> bug | feature | billing | other",
    concurrency=20,
    max_attempts=6,
    timeout=30.0,
)
