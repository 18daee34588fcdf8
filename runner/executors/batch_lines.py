"""A row's request as one line of a batch input file, and a batch output line as an ``Answer``.

The line carries the job's request exactly as an online call would send it (``Caller.request``),
less what only the client uses: credentials, the endpoint, time-outs, retries and streaming (a
batch answers whole). The key is never in the file. Answers are priced at the provider's batch
prices (litellm's ``batch_cost_calculator``, half the online price for OpenAI's models).
"""

from __future__ import annotations

import functools
from typing import Any

import litellm
import orjson

from runner.errors import UsageError
from runner.executors.batch_limits import BatchLimits, check_named, limits_for
from runner.job.endpoints import CHAT, ENDPOINT
from runner.permits.budget import DEFAULT_OUTPUT_TOKENS
from runner.provider.endpoints import estimate_tokens
from runner.provider.prices import prices
from runner.provider.provider import Answer

__all__ = [
    "CLIENT_ONLY",
    "answer_of",
    "batch_cost",
    "batch_limits",
    "failure_of",
    "line_of",
    "provider_of",
    "worst_case",
]

# Request keys litellm consumes on the client side; none may reach the uploaded file.
CLIENT_ONLY = frozenset(
    {"api_key", "api_base", "base_url", "api_version", "organization", "timeout", "request_timeout",
     "max_retries", "num_retries", "stream", "stream_options", "custom_llm_provider", "extra_headers"}
)  # fmt: skip


@functools.cache
def provider_of(model: str) -> tuple[str, str]:
    """``model``'s provider and the name the provider knows it by (``openai/gpt-4o-mini`` -> openai, gpt-4o-mini)."""
    name, provider, _, _ = litellm.get_llm_provider(model)
    return provider, name


def line_of(custom_id: str, request: dict[str, Any]) -> bytes:
    """One line of a batch input file for ``request``."""
    body = {k: v for k, v in request.items() if k not in CLIENT_ONLY and k != ENDPOINT}
    body["model"] = provider_of(request["model"])[1]
    line = {"custom_id": custom_id, "method": "POST", "url": endpoint_of(request), "body": body}
    return orjson.dumps(line) + b"\n"


def endpoint_of(request: dict[str, Any]) -> str:
    """The Batch API endpoint ``request`` goes to (chat unless it names another)."""
    return str(request.get(ENDPOINT) or CHAT)


def batch_cost(model: str, usage: dict[str, Any]) -> float | None:
    """What an answer with ``usage`` costs at ``model``'s batch prices (None: no price known)."""
    return _batch_cost(model, int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))


# litellm's batch_cost_calculator takes ~2 ms a call here; the answers of one job repeat a few token counts.
@functools.lru_cache(maxsize=65536)
def _batch_cost(model: str, prompt: int, output: int) -> float | None:
    price = prices(model)
    if price is None:
        return None
    cost = price.cost(prompt, output, batch=True)
    return cost if cost is not None else price.cost(prompt, output)  # no batch price known: say the online one


def answer_of(line: dict[str, Any], model: str) -> Answer | None:
    """The answer in a batch output line, or None when the line is a failure."""
    response = line.get("response") or {}
    body = response.get("body")
    if line.get("error") or response.get("status_code") != 200 or not isinstance(body, dict):
        return None
    return Answer(body, response.get("request_id"), batch_cost(model, body.get("usage") or {}), {})


def failure_of(line: dict[str, Any]) -> tuple[str, str]:
    """A failed line's code and message."""
    error = line.get("error") or ((line.get("response") or {}).get("body") or {}).get("error") or {}
    status = (line.get("response") or {}).get("status_code")
    code = str(error.get("code") or (f"http_{status}" if status else "batch_failed"))
    return code, str(error.get("message") or "")


def batch_limits(model: str, endpoint: str = CHAT) -> BatchLimits:
    """The Batch API limits for ``model``'s provider; a UsageError if runner can't batch its ``endpoint`` there."""
    try:
        provider = provider_of(model)[0]
    except Exception:
        raise UsageError(f"--batch-api: model {model!r} is not a model litellm knows how to call") from None
    try:
        check_named(provider, model, endpoint, CHAT)
        return limits_for(provider)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def worst_case(model: str, request: dict[str, Any], prompt_margin: float) -> float:
    """The most ``request`` could cost at batch prices, for --max-cost (as online, at the batch price)."""
    price = prices(model)
    if price is None:
        raise UsageError(f"--max-cost needs prices, and litellm's price map has none for model {model!r}")
    prompt, max_tokens = estimate_tokens(request)
    output = max_tokens or price.max_output_tokens or DEFAULT_OUTPUT_TOKENS
    prompt = round(prompt * prompt_margin)
    cost = price.cost(prompt, output, batch=True)
    return cost if cost is not None else price.cost(prompt, output) or 0.0
