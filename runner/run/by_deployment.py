"""Per-deployment totals (usage, cost, 429s, errors), counted from records like every other total.

A record names the deployment that answered it, or was tried last, in ``meta.deployment``, and its
failed attempts by deployment and code in ``meta.deployment_errors`` (``runner.call.deployments``).
Counted from the journal, these survive a restart as the rest of the manifest does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["copy", "count"]


def _entry() -> dict[str, Any]:
    return {"answers": 0, "failed_rows": 0, "input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0,
            "rate_limited": 0, "errors": {}}  # fmt: skip


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def count(table: dict[str, dict[str, Any]], record: Mapping[str, Any], ok: bool, spend_only: bool = False) -> None:
    """Add one journal record to ``table`` (deployment -> totals); a record with no deployment adds nothing."""
    meta = record.get("meta") or {}
    name = meta.get("deployment")
    spent = list(meta.get("reasked") or [])
    body = (record.get("response") or {}).get("body")
    if isinstance(body, dict) and "usage" in body:
        spent.append({"usage": body.get("usage"), "cost_usd": meta.get("cost_usd")})
    if isinstance(name, str):
        entry = table.setdefault(name, _entry())
        if not spend_only:
            entry["answers" if ok else "failed_rows"] += 1
        for answer in spent:
            usage = answer.get("usage") or {}
            entry["input_tokens"] += _int(usage.get("prompt_tokens"))
            entry["output_tokens"] += _int(usage.get("completion_tokens"))
            cost = answer.get("cost_usd")
            entry["cost_usd"] = round(entry["cost_usd"] + (cost if isinstance(cost, int | float) else 0.0), 10)
    failures = meta.get("deployment_errors")
    if not isinstance(failures, dict) or spend_only:
        return
    for other, codes in failures.items():
        entry = table.setdefault(str(other), _entry())
        for code, n in (codes or {}).items():
            if code == "rate_limited":
                entry["rate_limited"] += _int(n)
            else:
                entry["errors"][code] = entry["errors"].get(code, 0) + _int(n)


def copy(table: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """A copy by name that the writer thread can serialise while the loop goes on counting."""
    return {name: {**entry, "errors": dict(entry["errors"])} for name, entry in sorted(table.items())}
