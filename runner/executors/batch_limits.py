"""The providers' Batch API limits, in one table, and which providers runner can batch through litellm.

Figures from the providers' documentation (November 2026):

- OpenAI: one input file holds at most 50,000 requests and 200 MB, one model per file; a 24 h
  completion window; queued ("enqueued") tokens per model are capped by usage tier, and a batch
  that would pass the cap fails with ``token_limit_exceeded`` (runner waits and submits it later).
- Azure OpenAI: 100,000 requests and 200 MB per file, 24 h window (global-batch deployments).
- Anthropic Message Batches: 100,000 requests or 256 MB per batch, 24 h window.

litellm 1.110 creates files and batches in OpenAI's format for ``openai``, ``azure`` and the
OpenAI-compatible ``hosted_vllm`` and ``litellm_proxy``; Anthropic batches it can only retrieve,
not create, so runner makes those with the anthropic SDK (``anthropic_batches``). ``--batch-api``
takes these and refuses the rest by name.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["LIMITS", "BatchLimits", "limits_for"]


@dataclass(frozen=True)
class BatchLimits:
    """What one batch may hold at most."""

    max_requests: int
    max_bytes: int
    window: str = "24h"


MB = 1_000_000
LIMITS: dict[str, BatchLimits] = {
    "openai": BatchLimits(50_000, 200 * MB),
    "azure": BatchLimits(100_000, 200 * MB),
    "hosted_vllm": BatchLimits(50_000, 200 * MB),  # OpenAI's own limits: the format is OpenAI's
    "litellm_proxy": BatchLimits(50_000, 200 * MB),
    "anthropic": BatchLimits(100_000, 250 * MB),  # 256 MB, less room for the ids and JSON around each body
}
SUPPORTED = ("openai", "azure", "hosted_vllm", "litellm_proxy", "anthropic")


def limits_for(provider: str) -> BatchLimits:
    """The limits for ``provider``; a ValueError naming the supported ones if runner can't batch through it."""
    if provider not in SUPPORTED:
        raise ValueError(
            f"--batch-api: runner cannot create batches for provider {provider!r}; "
            f"use a model of {', '.join(SUPPORTED)} (e.g. openai/gpt-4o-mini), or run without --batch-api"
        )
    return LIMITS[provider]
