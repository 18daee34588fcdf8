"""Anthropic Message Batches, line by line: a request as the online call would send it, a result as OpenAI's line.

Going out, a job's OpenAI-shaped request becomes the Messages body litellm's online call sends
(``get_optional_params`` then ``AnthropicConfig.transform_request``, as litellm's handler does),
with the ``anthropic-beta`` flags it would put in the headers (a batch takes them once, for all its
requests). Coming back, a ``succeeded`` result's message goes through litellm's own
``transform_parsed_response`` into the chat.completion an online call returns. A request litellm
can't map back the same way from a batch (its error, an assistant prefill, tool names it renames,
JSON mode through a forced tool on models without structured outputs) goes online instead, where
it gets exactly the online answer or error record.

Anthropic's ``custom_id`` must match ``^[a-zA-Z0-9_-]{1,64}$`` and a batch has no metadata, so a
request's id is ``<run token>_<chunk>_<index>`` (``j`` appended in JSON mode; ``batch_ids``).
"""

from __future__ import annotations

from typing import Any

import orjson

from runner.executors.batch_ids import custom_id, prefix, read_id
from runner.executors.batch_lines import CLIENT_ONLY, provider_of
from runner.job.endpoints import CHAT, ENDPOINT

__all__ = ["custom_id", "params_line", "prefix", "read_id", "result_line"]

# Anthropic's error types: the HTTP status an online call gets, runner's code, and whether the row's own
# (an error record at once, as online) or worth asking again (online).
ERRORS: dict[str, tuple[int, str, str]] = {
    "invalid_request_error": (400, "bad_request", "row"),
    "request_too_large": (413, "http_error", "row"),
    "authentication_error": (401, "authentication_failed", "retry"),  # online says whether the key is bad
    "permission_error": (403, "permission_denied", "retry"),
    "not_found_error": (404, "model_not_found", "retry"),
    "rate_limit_error": (429, "rate_limited", "retry"),
    "api_error": (500, "server_error", "retry"),
    "timeout_error": (504, "timeout", "retry"),
    "overloaded_error": (529, "server_error", "retry"),
}


def params_line(request: dict[str, Any]) -> bytes | None:
    """``request`` as ``{"params", "betas", "json"}``, or None when it should go online instead."""
    from litellm.llms.anthropic.chat.transformation import ANTHROPIC_TOOL_NAME_REVERSE_MAP_KEY, AnthropicConfig
    from litellm.utils import get_optional_params

    if request.get(ENDPOINT, CHAT) != CHAT:  # a raw Batch line to another endpoint: online says what it gets
        return None
    model = provider_of(request["model"])[1]
    messages = request.get("messages") or []
    skip = CLIENT_ONLY | {"model", "messages", ENDPOINT}
    openai_params = {k: v for k, v in request.items() if k not in skip}
    config = AnthropicConfig()
    headers: dict[str, str] = {}
    litellm_params: dict[str, Any] = {}
    try:
        optional = get_optional_params(model=model, custom_llm_provider="anthropic", **openai_params)
        json_mode = bool(optional.pop("json_mode", False))
        body = config.transform_request(model, messages, optional, litellm_params, headers)
        if config.get_prefix_prompt(messages):  # litellm puts an assistant prefill back in front of the answer
            return None
    except Exception:
        return None  # the online call fails the same way: its error record is the online one
    if litellm_params.get(ANTHROPIC_TOOL_NAME_REVERSE_MAP_KEY) or (json_mode and body.get("tools")):
        return None  # online, litellm maps renamed tools back and a JSON-mode tool call to text, with the request
    body.pop("stream", None)
    betas = sorted({b.strip() for b in headers.get("anthropic-beta", "").split(",") if b.strip()})
    return orjson.dumps({"params": body, "betas": betas, "json": json_mode}) + b"\n"


def result_line(row_id: str, result: dict[str, Any], json_mode: bool) -> dict[str, Any]:
    """One result of a Message Batch as an OpenAI Batch output line for row ``row_id``."""
    kind = result.get("type")
    if kind == "succeeded":
        message = result.get("message") or {}
        body = chat_completion(message, json_mode)
        return {"custom_id": row_id, "response": {"status_code": 200, "request_id": message.get("id"), "body": body},
                "error": None}  # fmt: skip
    if kind == "errored":
        error = (result.get("error") or {}).get("error") or {}
        status, code, disposition = ERRORS.get(str(error.get("type")), (500, "server_error", "retry"))
        message_text = str(error.get("message") or error.get("type") or "errored")
        return {"custom_id": row_id, "response": {"status_code": status, "request_id": None, "body": {"error": error}},
                "error": {"code": code, "message": message_text, "disposition": disposition}}  # fmt: skip
    why = "expired" if kind == "expired" else "cancelled"
    error = {"code": f"batch_{why}", "message": f"This request was not run before the batch was {why}."}
    return {"custom_id": row_id, "response": None, "error": error}


def chat_completion(message: dict[str, Any], json_mode: bool) -> dict[str, Any]:
    """A Messages answer as the chat.completion litellm's online call makes of it."""
    import httpx
    from litellm.llms.anthropic.chat.transformation import AnthropicConfig
    from litellm.types.utils import ModelResponse

    response = AnthropicConfig().transform_parsed_response(
        completion_response=message, raw_response=httpx.Response(200), model_response=ModelResponse(),
        json_mode=json_mode,
    )  # fmt: skip
    return dict(response.model_dump())
