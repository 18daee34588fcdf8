"""preflight's table of key variables (a fast check before litellm is imported) agrees with litellm's own."""

from __future__ import annotations

import os

import pytest

from runner.preflight import _KEYS

# One model of every provider the table names, as litellm spells it.
SAMPLES = {
    "openai/gpt-4o-mini": "OPENAI_API_KEY",
    "gpt-4o-mini": "OPENAI_API_KEY",
    "o3-mini": "OPENAI_API_KEY",
    "anthropic/claude-3-5-sonnet-20240620": "ANTHROPIC_API_KEY",
    "gemini/gemini-1.5-pro": "GEMINI_API_KEY",
    "mistral/mistral-small-latest": "MISTRAL_API_KEY",
    "groq/llama3-8b-8192": "GROQ_API_KEY",
    "deepseek/deepseek-chat": "DEEPSEEK_API_KEY",
    "xai/grok-2": "XAI_API_KEY",
    "openrouter/openai/gpt-4o": "OPENROUTER_API_KEY",
    "together_ai/meta-llama/Llama-3-8b-chat-hf": "TOGETHERAI_API_KEY",
}


def names_for(model: str) -> tuple[str, ...]:
    return next((names for pattern, names in _KEYS if pattern.match(model)), ())


@pytest.mark.parametrize("model", sorted(SAMPLES))
def test_the_table_names_a_key_litellm_asks_for(model: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import litellm

    for name in list(os.environ):
        if name.endswith(("_API_KEY", "_AUTH_TOKEN")):
            monkeypatch.delenv(name)
    missing = set(litellm.validate_environment(model)["missing_keys"])
    assert SAMPLES[model] in missing  # litellm knows the model and wants that key
    assert set(names_for(model)) & missing, (model, names_for(model), missing)


def test_every_pattern_of_the_table_has_a_sample() -> None:
    covered = {pattern.pattern for pattern, _ in _KEYS if any(pattern.match(m) for m in SAMPLES)}
    assert covered == {pattern.pattern for pattern, _ in _KEYS}
