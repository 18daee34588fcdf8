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

from runner.call.prices import prices
from runner.call.provider import Answer

__all__ = ["CLIENT_ONLY", "answer_of", "batch_cost", "line_of", "provider_of"]

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
    body = {k: v for k, v in request.items() if k not in CLIENT_ONLY}
    body["model"] = provider_of(request["model"])[1]
    line = {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}
    return orjson.dumps(line) + b"\n"


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
