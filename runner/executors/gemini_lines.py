"""Gemini batches, line by line: a request as the online call would send it, a result as OpenAI's line.

Going out, a job's OpenAI-shaped request becomes the ``GenerateContentRequest`` body litellm's
online ``gemini/`` call posts to ``:generateContent`` (``get_optional_params``, then
``transform_request_body`` and the default output budget, as litellm's handler does). Coming
back, an inlined response goes through litellm's own
``transform_google_generate_content_to_openai_model_response`` into the chat.completion an online
call returns. A request that online would need more than one call (a context cache made first for
``cache_control`` messages; an answer cut into continuation hops) goes online, where it gets exactly
the online answer.

A request's ``metadata.key`` is ``<run token>_<chunk>_<index>`` (``batch_ids``).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import orjson

from runner.executors.batch_lines import CLIENT_ONLY, provider_of
from runner.job.endpoints import CHAT, ENDPOINT

__all__ = ["ERRORS", "chat_completion", "request_line", "result_line"]

# google.rpc.Code of a failed request: the HTTP status an online call gets, runner's code, and whether the
# row's own (an error record at once, as online) or worth asking again (online).
ERRORS: dict[int, tuple[int, str, str]] = {
    3: (400, "bad_request", "row"),  # INVALID_ARGUMENT
    9: (400, "bad_request", "row"),  # FAILED_PRECONDITION
    11: (400, "bad_request", "row"),  # OUT_OF_RANGE
    16: (401, "authentication_failed", "retry"),  # UNAUTHENTICATED: online says whether the key is bad
    7: (403, "permission_denied", "retry"),  # PERMISSION_DENIED
    5: (404, "model_not_found", "retry"),  # NOT_FOUND
    8: (429, "rate_limited", "retry"),  # RESOURCE_EXHAUSTED
    13: (500, "server_error", "retry"),  # INTERNAL
    14: (503, "server_error", "retry"),  # UNAVAILABLE
    4: (504, "timeout", "retry"),  # DEADLINE_EXCEEDED
}
CONTINUATION = "CONTINUATION"  # a cut answer litellm's online call would continue with another call


def request_line(request: dict[str, Any]) -> bytes | None:
    """``request`` as ``{"model", "request"}`` (the GenerateContentRequest body), or None when it goes online."""
    from litellm.llms.vertex_ai.gemini.transformation import _with_default_output_budget, transform_request_body
    from litellm.utils import get_optional_params

    if request.get(ENDPOINT, CHAT) != CHAT:  # a raw Batch line to another endpoint: online says what it gets
        return None
    model = provider_of(request["model"])[1]
    messages = request.get("messages") or []
    if b"cache_control" in orjson.dumps(messages):  # online makes a context cache first, with another call
        return None
    skip = CLIENT_ONLY | {"model", "messages", ENDPOINT}
    openai_params = {k: v for k, v in request.items() if k not in skip}
    try:
        optional = get_optional_params(model=model, custom_llm_provider="gemini", **openai_params)
        body = transform_request_body(messages=messages, model=model, custom_llm_provider="gemini", litellm_params={},
                                      cached_content=None, optional_params=dict(optional))  # fmt: skip
        body = _with_default_output_budget(body, model, "gemini", None)
    except Exception:
        return None  # the online call fails the same way: its error record is the online one
    return orjson.dumps({"model": model, "request": body}) + b"\n"


def result_line(row_id: str, model: str, item: dict[str, Any]) -> dict[str, Any]:
    """One inlined response (``response`` or ``error``) of a Gemini batch as an OpenAI Batch output line."""
    response = item.get("response")
    if isinstance(response, dict):
        candidates = response.get("candidates") or [{}]
        if candidates[0].get("finishReason") == CONTINUATION:
            error = {"code": "continuation", "message": "the answer needs a continuation call: asked online"}
            return {"custom_id": row_id, "response": None, "error": {**error, "disposition": "retry"}}
        body = chat_completion(response, model)
        return {"custom_id": row_id, "response": {"status_code": 200, "request_id": response.get("responseId"),
                                                  "body": body}, "error": None}  # fmt: skip
    error = item.get("error") or {}
    status, code, disposition = ERRORS.get(int(error.get("code") or 13), (500, "server_error", "retry"))
    message = str(error.get("message") or error.get("status") or "failed in the batch")
    return {"custom_id": row_id, "response": {"status_code": status, "request_id": None, "body": {"error": error}},
            "error": {"code": code, "message": message, "disposition": disposition}}  # fmt: skip


def chat_completion(response: dict[str, Any], model: str) -> dict[str, Any]:
    """A GenerateContentResponse as the chat.completion litellm's online call makes of it."""
    import httpx
    from litellm.llms.vertex_ai.gemini.vertex_and_google_ai_studio_gemini import VertexGeminiConfig
    from litellm.types.utils import ModelResponse

    # The parts of litellm's call log the transformation reads: the call's (OpenAI) optional params and litellm
    # params, neither of which changes how a plain answer is read.
    logged = SimpleNamespace(optional_params={}, litellm_params={})
    made = VertexGeminiConfig().transform_google_generate_content_to_openai_model_response(
        completion_response=response, model_response=ModelResponse(), model=model, logging_obj=logged,  # type: ignore[arg-type]
        raw_response=httpx.Response(200),
    )  # fmt: skip
    return dict(made.model_dump())
