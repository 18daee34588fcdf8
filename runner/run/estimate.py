"""``--dry-run``: the input's tokens counted offline and its cost estimated, without calling anything.

Each row still to do is built into the exact request a run would send; its prompt is counted with
litellm's bundled tokenizers. Output can't be known before the answer, so the estimate gives a
ceiling (every answer as long as its ``max_tokens``, or the model's output limit) and, when the run
already has answers, an expected figure from their average output length. Each lane's prices are
shown side by side where litellm's price map has them (online at the default tier, the Batch API,
the flex and priority tiers), the lane the run would use marked, and ``--max-cost`` is weighed at that
lane's prices.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from runner.call.caller import Caller
from runner.permits.budget import DEFAULT_OUTPUT_TOKENS
from runner.provider.endpoints import estimate_tokens
from runner.provider.prices import Prices, prices
from runner.run import fingerprint, journal
from runner.run.cache import CacheSettings, Lookup
from runner.run.manifest import MANIFEST, read_manifest
from runner.run.source import BadLine, read_rows

__all__ = ["LANES", "Estimate", "ModelEstimate", "estimate"]

# Each lane's label in the report, in the order shown.
LANES = {
    "online": "cost",
    "batch": "at batch-API prices",
    "flex": "at the flex tier",
    "priority": "at the priority tier",
}


@dataclass
class ModelEstimate:
    """The rows one model would get and their tokens."""

    rows: int = 0
    prompt_tokens: int = 0
    max_output_tokens: int = 0  # the ceiling: every answer as long as it may be
    prices: Prices | None = None

    def cost(self, output: int, lane: str) -> float | None:
        """USD for the prompts and ``output`` tokens at ``lane``'s prices (None where the model has none)."""
        if self.prices is None:
            return None
        tier = lane if lane in ("flex", "priority") else None
        return self.prices.cost(self.prompt_tokens, output, lane == "batch", tier=tier)


@dataclass
class Estimate:
    """What a run over the input would send and could cost."""

    to_do: int = 0
    done: int = 0  # rows the run directory already holds (not counted again)
    unusable: int = 0  # bad lines and rows the job cannot build a request for (error records, no call)
    models: dict[str, ModelEstimate] = field(default_factory=dict)
    output_per_row: float | None = None  # average output tokens of the answers already in the run
    input_path: Path | None = None
    spent: float = 0.0  # what the run directory's answers already cost
    cap: float | None = None  # --max-cost
    refused: list[str] = field(default_factory=list)  # why `runner run` would refuse to resume this run
    cached: int = 0  # rows the response cache would answer (not priced)
    duplicates: int = 0  # rows whose request is another row's: sent once (not priced)
    lane: str = "online"  # the lane the run would use: "batch" (--batch-api), "flex" or "priority" (--service-tier)

    def costs(self, lane: str = "online") -> dict[str, float | None]:
        """USD for prompts, expected total (if an output average is known) and the ceiling, at ``lane``'s prices
        (None where a model has none)."""
        totals: dict[str, float | None] = {"input": 0.0, "expected": 0.0, "ceiling": 0.0}
        for m in self.models.values():
            expected = round(self.output_per_row * m.rows) if self.output_per_row is not None else None
            parts = {
                "input": m.cost(0, lane),
                "expected": m.cost(expected, lane) if expected is not None else None,
                "ceiling": m.cost(m.max_output_tokens, lane),
            }
            for key, value in parts.items():
                current = totals[key]
                totals[key] = None if value is None or current is None else current + value
        return totals

    def as_dict(self) -> dict[str, Any]:
        """Plain data for --json style output and tests."""
        return {
            "rows_to_do": self.to_do,
            "rows_done": self.done,
            "rows_unusable": self.unusable,
            "rows_cached": self.cached,
            "rows_duplicate": self.duplicates,
            "output_tokens_per_row": self.output_per_row,
            "models": {
                name: {**asdict(m), "prices": asdict(m.prices) if m.prices else None} for name, m in self.models.items()
            },
            "cost_usd": self.costs(),
            "batch_cost_usd": self.costs("batch"),
            "lanes": {lane: self.costs(lane) for lane in LANES},
            "lane": self.lane,
        }

    def report(self) -> str:
        """A few lines for a person deciding whether to launch the run."""
        lines = [f"dry run of {self.input_path}: {self.to_do:,} rows to send ({self.done:,} already done, "
                 f"{self.unusable:,} unusable)"]  # fmt: skip
        if self.cached or self.duplicates:
            lines.append(f"  not sent, not priced: {self.cached:,} rows answered by the response cache, "
                         f"{self.duplicates:,} identical to an earlier row (sent once)")  # fmt: skip
        if self.refused:
            lines.append(f"  note: `runner run` would refuse to resume this run ({'; '.join(self.refused)}): "
                         "give --run-id NEW for a fresh run, or --allow-changes")  # fmt: skip
        for name, m in sorted(self.models.items()):
            priced = "" if m.prices else " (no price in litellm's map: cost unknown)"
            lines.append(f"  {name}: {m.rows:,} rows, {m.prompt_tokens:,} prompt tokens, "
                         f"up to {m.max_output_tokens:,} output tokens{priced}")  # fmt: skip
        if self.output_per_row is not None:
            lines.append(f"  answers so far average {self.output_per_row:.1f} output tokens")
        for lane, label in LANES.items():
            c = self.costs(lane)
            mine = "   <- this run" if lane == self.lane and self.lane != "online" else ""
            if c["input"] is None:
                if lane in ("online", "batch") or mine:  # a tier nobody asked for and no model has: not shown
                    lines.append(f"  {label}: unknown{mine}" if lane == "online" else
                                 f"  {label}: not in litellm's price map{mine}")  # fmt: skip
                continue
            expected = f"expected ${c['expected']:.4f}, " if c["expected"] is not None else ""
            lines.append(f"  {label}: prompts ${c['input']:.4f}; {expected}at most ${c['ceiling']:.4f}{mine}")
        if self.cap is not None:
            lines.append(self._against_cap(self.cap))
        return "\n".join(lines)

    def _against_cap(self, cap: float) -> str:
        left = cap - self.spent
        said = f"  --max-cost ${cap:g}: ${self.spent:.4f} already spent, ${max(left, 0):.4f} left"
        costs = self.costs(self.lane)
        if costs["ceiling"] is None:
            return said
        if costs["ceiling"] <= left:
            return said + "; the whole estimate fits"
        likely = costs["expected"] if costs["expected"] is not None else costs["input"]
        if likely is not None and likely > left:
            return said + "; the run will stop at the cap (exit 4) before finishing"
        return said + "; it may stop at the cap (exit 4) if answers run long"


async def estimate(
    caller: Caller,
    input_path: Path,
    run_dir: Path,
    cap: float | None = None,
    cache: CacheSettings | None = None,
    lane: str = "online",
) -> Estimate:
    """Count what a run of ``caller``'s job over ``input_path`` into ``run_dir`` would still send (rows
    the response cache or an identical row would answer are counted, not priced); ``lane``: the one the run
    would use, which ``cap`` is weighed at."""
    result = Estimate(input_path=input_path, cap=cap, lane=lane)
    with Lookup(caller, cache, run_dir) as reused:
        await _count(caller, input_path, run_dir, result, reused)
    return result


async def _count(caller: Caller, input_path: Path, run_dir: Path, result: Estimate, reused: Lookup) -> None:
    done = None
    manifest = read_manifest(run_dir / MANIFEST)
    if isinstance(old := manifest.get("fingerprint"), dict):
        result.refused = fingerprint.changes(old, await fingerprint.of_run(caller, input_path), input_path)
    if (run_dir / journal.RESULTS).exists():
        found = journal.scan(run_dir, manifest.get("checkpoint"))
        done, result.done, result.spent = found.done, found.totals.done, found.totals.cost_usd
        totals = found.totals  # answers reused from the cache used no tokens: not in the average
        usage, answered = totals.usage(), totals.completed - totals.cache_hits - totals.cache_dedup + totals.reasks
        if answered:
            result.output_per_row = usage["output_tokens"] / answered
    async for items in read_rows(input_path, caller.job.id_field, skip=done):
        for item in items:
            if isinstance(item, BadLine):
                result.unusable += 1
                continue
            request, _ = caller.request(item)
            if request is None:
                result.unusable += 1
                continue
            if (how := reused.would_answer(request)) is not None:
                result.cached += how == "hit"
                result.duplicates += how == "dedup"
                continue
            result.to_do += 1
            prompt, max_tokens = estimate_tokens(request)
            model = result.models.get(request["model"])
            if model is None:
                model = result.models[request["model"]] = ModelEstimate(prices=prices(request["model"]))
            ceiling = model.prices.max_output_tokens if model.prices else None
            model.rows += 1
            model.prompt_tokens += prompt
            model.max_output_tokens += max_tokens or ceiling or DEFAULT_OUTPUT_TOKENS
