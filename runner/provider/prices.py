"""What tokens cost, from litellm's bundled price map and its own cost functions.

``litellm.cost_per_token`` prices a call the way litellm prices an answer (cached input, long
context tiers and all); ``litellm.batch_cost_calculator`` gives the Batch API's prices.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import litellm
from litellm.cost_calculator import batch_cost_calculator
from litellm.types.utils import PromptTokensDetailsWrapper, Usage

__all__ = ["Prices", "prices"]


@dataclass(frozen=True)
class Prices:
    """One model's prices; ``cost`` asks litellm, so they are the figures litellm bills answers at."""

    model: str
    max_output_tokens: int | None = None
    batch: bool = False  # litellm's map has Batch API prices for it
    free: bool = False  # the offline local/ models
    tiers: frozenset[str] = frozenset()  # service tiers it has prices for (flex, priority)

    def cost(
        self, prompt: int, output: int, batch: bool = False, cached: int = 0, tier: str | None = None
    ) -> float | None:
        """USD for ``prompt`` input tokens (``cached`` of them read from the provider's cache) and
        ``output`` output tokens, at the Batch API's prices or a service ``tier``'s (flex, priority); None
        where the map has no such prices."""
        if self.free:
            return 0.0
        if tier is not None and tier not in self.tiers:
            return None
        if batch:
            if not self.batch:
                return None
            usage = Usage(prompt_tokens=prompt, completion_tokens=output, total_tokens=prompt + output)
            return sum(batch_cost_calculator(usage, self.model))
        details = PromptTokensDetailsWrapper(cached_tokens=cached) if cached else None
        usage = Usage(prompt_tokens=prompt, completion_tokens=output, total_tokens=prompt + output,
                      prompt_tokens_details=details)  # fmt: skip
        return sum(litellm.cost_per_token(model=self.model, usage_object=usage, service_tier=tier))


@functools.cache  # asked before every request under --max-cost; the bundled map does not change
def prices(model: str) -> Prices | None:
    """``model``'s prices, or None when litellm's map has none (the offline local/ models are free)."""
    if model.startswith("local/"):
        return Prices(model, free=True, batch=True)
    try:
        info = litellm.get_model_info(model)
    except Exception:
        return None
    if info.get("input_cost_per_token") is None or info.get("output_cost_per_token") is None:
        return None
    max_out = info.get("max_output_tokens") or info.get("max_tokens")
    has_batch = info.get("input_cost_per_token_batches") is not None
    tiers = frozenset(t for t in ("flex", "priority") if info.get(f"input_cost_per_token_{t}") is not None)
    return Prices(model, int(max_out) if max_out else None, has_batch, tiers=tiers)
