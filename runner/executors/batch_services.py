"""Which ``BatchService`` speaks to a provider's Batch API (the anthropic SDK is imported only for Anthropic)."""

from __future__ import annotations

from runner.executors.batch_api import BatchApi
from runner.executors.batch_seam import BatchService
from runner.provider.wire_http import env_base

__all__ = ["service_for"]


def service_for(provider: str, api_base: str | None, api_key: str | None) -> BatchService:
    """The Batch API of ``provider`` (litellm's name for it), at ``api_base`` if given, else where litellm sends
    that provider's online calls (its environment variable, ``wire_http.env_base``; else the provider's own)."""
    api_base = api_base or env_base(provider)
    if provider == "anthropic":
        from runner.executors.anthropic_batches import AnthropicBatches

        return AnthropicBatches(api_base, api_key)
    if provider == "gemini":
        from runner.executors.gemini_batches import GeminiBatches

        return GeminiBatches(api_base, api_key)
    return BatchApi(provider, api_base, api_key)
