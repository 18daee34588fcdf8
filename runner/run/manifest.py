"""Run totals derived from journal records, and the atomically written manifest.json."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import orjson

from runner.clock import iso_now
from runner.job.endpoints import chat_usage, finish_reasons
from runner.run import by_deployment

__all__ = ["MANIFEST", "ModelTotals", "Totals", "contents", "iso_now", "read_manifest", "write_manifest"]

MANIFEST = "manifest.json"


@dataclass
class ModelTotals:
    """Usage and cost of one model's calls."""

    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: float = 0.0
    unpriced_requests: int = 0  # answers litellm's price map had no price for


def _int(value: Any) -> int:
    return value if isinstance(value, int) else 0


def _count(model: ModelTotals, usage: Mapping[str, Any], cost: Any) -> None:
    """Add one answer's usage and cost to ``model``'s totals."""
    model.requests += 1
    model.input_tokens += _int(usage.get("prompt_tokens"))
    model.output_tokens += _int(usage.get("completion_tokens"))
    model.total_tokens += _int(usage.get("total_tokens"))
    model.cached_tokens += _int((usage.get("prompt_tokens_details") or {}).get("cached_tokens"))
    model.reasoning_tokens += _int((usage.get("completion_tokens_details") or {}).get("reasoning_tokens"))
    if isinstance(cost, int | float):
        model.cost_usd += cost
    else:
        model.unpriced_requests += 1


@dataclass
class Totals:
    """Everything the manifest counts; built only from records, live or when re-reading the journal."""

    completed: int = 0
    failed: int = 0
    retries: int = 0
    rate_limited: int = 0
    retired: int = 0  # error records set aside by --retry-failed; their tokens still count
    reasks: int = 0  # answers a job rejected and asked again about; their tokens count too
    cache_hits: int = 0  # rows answered from the response cache (another run's answer): nothing sent
    cache_dedup: int = 0  # rows that rode on another row's answer in this run: nothing sent
    saved_usd: float = 0.0  # what those answers cost when they were bought
    usage_estimated: int = 0  # answers whose usage is litellm's count, not the provider's (no usage chunk came)
    usage_estimated_tokens: int = 0  # the tokens those estimates say
    models: dict[str, ModelTotals] = field(default_factory=dict)
    finish_reasons: Counter[str] = field(default_factory=Counter)
    error_codes: Counter[str] = field(default_factory=Counter)
    deployments: dict[str, dict[str, Any]] = field(default_factory=dict)  # see runner.run.by_deployment
    lanes: dict[str, ModelTotals] = field(default_factory=dict)  # "online", "batch" (meta.via): the same usage
    lane_models: dict[str, dict[str, ModelTotals]] = field(default_factory=dict)  # each lane's, by model

    def add(self, record: dict[str, Any], ok: bool, spend_only: bool = False) -> None:
        """Count one results.jsonl (``ok``) or errors.jsonl line; ``spend_only`` for retired errors."""
        meta = record.get("meta") or {}
        if spend_only:
            self.retired += 1
        elif ok:
            self.completed += 1
        else:
            self.failed += 1
            self.error_codes[(record.get("error") or {}).get("code") or "unknown"] += 1
        if ok and meta.get("cache") in ("hit", "dedup"):  # reused: no tokens used, nothing spent
            self._reused(record, meta)
            return
        if meta.get("usage_estimated"):
            self.usage_estimated += 1
            body = (record.get("response") or {}).get("body") or {}
            self.usage_estimated_tokens += _int((body.get("usage") or {}).get("total_tokens"))
        self.retries += max(0, _int(meta.get("attempts")) - 1)
        self.rate_limited += _int(meta.get("rate_limited"))
        if "deployment" in meta or "deployment_errors" in meta:
            by_deployment.count(self.deployments, record, ok, spend_only)
        # The lane that answered, as the executor named it in meta.via ("batch"; online when unnamed). A
        # batch answer the job rejected was re-asked online: only the first answer is that lane's.
        lane = str(meta.get("via") or "online")
        for spent in meta.get("reasked") or []:  # answers rejected on the way to this record
            self.reasks += 1
            self._add_usage(str(meta.get("model")), spent.get("usage") or {}, spent.get("cost_usd"), lane)
            lane = "online"
            if not spend_only:
                self.finish_reasons[str(spent.get("finish_reason"))] += 1
        body = (record.get("response") or {}).get("body")
        if not isinstance(body, dict) or "usage" not in body:
            return
        model = str(meta.get("model") or body.get("model"))
        self._add_usage(model, body.get("usage") or {}, meta.get("cost_usd"), lane)
        for reason in [] if spend_only else finish_reasons(body):
            self.finish_reasons[reason] += 1

    def _reused(self, record: dict[str, Any], meta: dict[str, Any]) -> None:
        if meta["cache"] == "hit":
            self.cache_hits += 1
        else:
            self.cache_dedup += 1
        saved = meta.get("cached_cost_usd")
        self.saved_usd += saved if isinstance(saved, int | float) else 0.0
        body = (record.get("response") or {}).get("body") or {}
        for reason in finish_reasons(body):  # the answers in results.jsonl, reused or not
            self.finish_reasons[reason] += 1

    def _add_usage(self, name: str, given: dict[str, Any], cost: Any, lane: str = "online") -> None:
        usage = chat_usage(given)  # a Responses API answer says input/output tokens
        for model in (self.models.setdefault(name, ModelTotals()), self.lanes.setdefault(lane, ModelTotals()),
                      self.lane_models.setdefault(lane, {}).setdefault(name, ModelTotals())):  # fmt: skip
            _count(model, usage, cost)

    @property
    def done(self) -> int:
        """Rows with a final record, successful or not."""
        return self.completed + self.failed

    def usage(self) -> dict[str, int]:
        """Token totals over every model."""
        keys = ("input_tokens", "output_tokens", "total_tokens", "cached_tokens", "reasoning_tokens")
        return {k: sum(getattr(m, k) for m in self.models.values()) for k in keys}

    @property
    def cost_usd(self) -> float:
        """Known cost so far (answers with no price are counted in ``unpriced_requests``)."""
        return sum(m.cost_usd for m in self.models.values())

    def to_checkpoint(self) -> dict[str, Any]:
        """Everything, as plain data, to be restored by ``from_checkpoint``."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        # asdict() would turn a Counter into a Counter of (key, count) pairs.
        return {**data, "models": {k: asdict(m) for k, m in self.models.items()},
                "deployments": by_deployment.copy(self.deployments),
                "finish_reasons": dict(self.finish_reasons), "error_codes": dict(self.error_codes),
                "lanes": {k: asdict(m) for k, m in self.lanes.items()},
                "lane_models": {k: {n: asdict(m) for n, m in by.items()}
                                for k, by in self.lane_models.items()}}  # fmt: skip

    @classmethod
    def from_checkpoint(cls, data: dict[str, Any]) -> Totals:
        """The totals ``to_checkpoint`` saved."""
        skip = ("models", "finish_reasons", "error_codes", "lanes", "lane_models")
        totals = cls(**{k: v for k, v in data.items() if k not in skip})
        totals.models = {name: ModelTotals(**m) for name, m in data["models"].items()}
        # A checkpoint from before lanes were counted: everything in it went online.
        lanes = data.get("lanes", {"online": _sum(totals.models.values())} if totals.models else {})
        totals.lanes = {name: ModelTotals(**m) if isinstance(m, dict) else m for name, m in lanes.items()}
        by_lane = data.get("lane_models") or {}  # (a checkpoint from before it was kept: none)
        totals.lane_models = {k: {n: ModelTotals(**m) for n, m in by.items()} for k, by in by_lane.items()}
        totals.finish_reasons = Counter(data["finish_reasons"])
        totals.error_codes = Counter(data["error_codes"])
        return totals

    def summary(self) -> dict[str, Any]:
        """The manifest's counting part."""
        return {
            "usage": self.usage(),
            "cost_usd": round(self.cost_usd, 8),
            "cost_known": all(m.unpriced_requests == 0 for m in self.models.values()),
            "models": {name: asdict(m) for name, m in sorted(self.models.items())},
            "lanes": {name: _lane(m, self.lane_models.get(name, {})) for name, m in sorted(self.lanes.items())},
            "finish_reasons": dict(self.finish_reasons),
            "error_codes": dict(self.error_codes),
            "retries": self.retries,
            "rate_limited": self.rate_limited,
            "retired_errors": self.retired,
            "reasks": self.reasks,
            **({"deployments": by_deployment.copy(self.deployments)} if self.deployments else {}),
            "cache": {"hits": self.cache_hits, "dedup": self.cache_dedup, "saved_usd": round(self.saved_usd, 8)},
            "usage_estimated": {"rows": self.usage_estimated, "tokens": self.usage_estimated_tokens},
        }


def _sum(models: Any) -> ModelTotals:
    total = ModelTotals()
    for m in models:
        for f in fields(ModelTotals):
            setattr(total, f.name, getattr(total, f.name) + getattr(m, f.name))
    return total


def _lane(m: ModelTotals, by_model: Mapping[str, ModelTotals]) -> dict[str, Any]:
    """A lane in the manifest: its usage as the top level shows it, its cost, and its answers and cost by model
    (a run of several models, of several providers, says which went by which lane)."""
    usage = {k: getattr(m, k) for k in ("input_tokens", "output_tokens", "total_tokens", "cached_tokens",
                                         "reasoning_tokens")}  # fmt: skip
    models = {name: {"requests": t.requests, "cost_usd": round(t.cost_usd, 8)} for name, t in sorted(by_model.items())}
    return {"requests": m.requests, "usage": usage, "cost_usd": round(m.cost_usd, 8),
            "unpriced_requests": m.unpriced_requests, "models": models}  # fmt: skip


def contents(
    identity: dict[str, Any],
    status: str,
    totals: Totals,
    total: int | None,
    elapsed: float,
    done_this_run: int,
    **extra: Any,
) -> dict[str, Any]:
    """The manifest: the run's identity, its status and counts, the totals, then ``extra`` (limits,
    checkpoint, stop reason, ...), like an OpenAI Batch object."""
    counts = {"total": total, "completed": totals.completed, "failed": totals.failed}
    return {
        **identity,
        "status": status,
        "request_counts": counts,
        **totals.summary(),
        **{k: v for k, v in extra.items() if v is not None},
        "rows_per_s": round(done_this_run / max(elapsed, 1e-9), 3),
        "updated_at": iso_now(),
        "elapsed_s": round(elapsed, 3),
    }


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest at ``path``, or {} if there is none or it cannot be read."""
    try:
        value = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """Replace ``path`` atomically: a reader sees the old manifest or the new one, never a torn one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as f:
        f.write(orjson.dumps(manifest, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
