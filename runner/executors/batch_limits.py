"""The providers' Batch API limits, in one table, and which providers runner can batch through litellm.

Figures from the providers' documentation (November 2026):

- OpenAI: one input file holds at most 50,000 requests and 200 MB, one model per file; a 24 h
  completion window; queued ("enqueued") tokens per model are capped by usage tier, and a batch
  that would pass the cap fails with ``token_limit_exceeded`` (runner waits and submits it later).
- Azure OpenAI: 100,000 requests and 200 MB per file, 24 h window (global-batch deployments).
- Anthropic Message Batches: 100,000 requests or 256 MB per batch, 24 h window.
- Gemini Batch Mode (Developer API): inline requests up to 20 MB per create call, a JSONL file
  (up to 2 GB) beyond; a batch pending or running after 48 h expires (24 h is the target). runner
  keeps a Gemini batch to 200 MB, as OpenAI's, so a chunk held in memory stays the same size.

litellm 1.110 creates files and batches in OpenAI's format for ``openai``, ``azure`` and the
OpenAI-compatible ``hosted_vllm`` and ``litellm_proxy``; Anthropic batches it can only retrieve,
not create, so runner makes those with the anthropic SDK (``anthropic_batches``), and Gemini's
through its REST endpoints (``gemini_batches``). ``--batch-api`` takes these and refuses the rest by
name; Vertex AI and Bedrock with what they would need (a bucket, a role).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CHAT_ONLY", "LIMITS", "NEEDS", "BatchLimits", "check_named", "limits_for"]


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
    "gemini": BatchLimits(50_000, 200 * MB),  # inline up to 20 MB, an uploaded file beyond (gemini_batches)
}
SUPPORTED = ("openai", "azure", "hosted_vllm", "litellm_proxy", "anthropic", "gemini")
# What litellm's batches for these need that runner does not set up: named, so the refusal says how far it is.
NEEDS = {
    "vertex_ai": "a Google Cloud Storage bucket for the input and output files (GCS_BUCKET_NAME, with "
    "VERTEXAI_PROJECT and VERTEXAI_LOCATION); use a gemini/ model (Gemini Developer API, GEMINI_API_KEY) instead",
    "bedrock": "an S3 bucket for the input and output files and an IAM role Bedrock can assume to read and "
    "write it (AWS_BATCH_ROLE_ARN)",
}
NEEDS["vertex_ai_beta"] = NEEDS["vertex_ai"]
# Batch APIs runner feeds chat requests only, by the name of their batches.
CHAT_ONLY = {"anthropic": "Anthropic's Message Batches", "gemini": "runner's Gemini batches (generateContent)"}


def check_named(provider: str, model: str, endpoint: str, chat: str) -> None:
    """A ValueError if ``provider``'s batches are refused whatever the setup (Vertex, Bedrock) or can't carry a
    job to ``endpoint`` (``chat``: the chat endpoint); told from names alone, before litellm is imported."""
    if provider in NEEDS:
        raise ValueError(
            f"--batch-api: runner does not create {provider} batches (model {model!r}): they need "
            f"{NEEDS[provider]}; run without --batch-api"
        )
    if provider in CHAT_ONLY and endpoint != chat:
        raise ValueError(f"--batch-api and a {endpoint} job with model {model!r}: {CHAT_ONLY[provider]} "
                         "carry chat requests only; drop --batch-api or use a chat job")  # fmt: skip


def limits_for(provider: str) -> BatchLimits:
    """The limits for ``provider``; a ValueError naming the supported ones if runner can't batch through it."""
    if provider not in SUPPORTED:
        raise ValueError(
            f"--batch-api: runner cannot create batches for provider {provider!r}; "
            f"use a model of {', '.join(SUPPORTED)} (e.g. openai/gpt-4o-mini), or run without --batch-api"
        )
    return LIMITS[provider]
