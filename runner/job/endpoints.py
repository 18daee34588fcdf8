"""The OpenAI Batch API's endpoints, as a request names them, checked before anything is sent.

A request for any endpoint but chat carries its URL under ``ENDPOINT`` (the Caller hands it to the
right litellm function, ``runner.provider.endpoints``); a chat request carries nothing extra, so its
fingerprint is what it was before other endpoints existed. Streaming and tools stay chat-only: a
request that asks for them elsewhere is that row's error, naming the parameter. No litellm here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from runner.errors import RowError

__all__ = [
    "CHAT",
    "COMPLETIONS",
    "EMBEDDINGS",
    "ENDPOINT",
    "RESPONSES",
    "URLS",
    "chat_usage",
    "endpoint_url",
    "finish_reasons",
    "split",
]

CHAT: Final = "/v1/chat/completions"
EMBEDDINGS: Final = "/v1/embeddings"
RESPONSES: Final = "/v1/responses"
COMPLETIONS: Final = "/v1/completions"
URLS: Final = (CHAT, EMBEDDINGS, RESPONSES, COMPLETIONS)
ENDPOINT: Final = "endpoint"  # the request key naming a non-chat endpoint (taken out before the call)

# What each endpoint's body must hold (the Batch API refuses a line without it too).
_REQUIRED: Final = {CHAT: "messages", EMBEDDINGS: "input", RESPONSES: "input", COMPLETIONS: "prompt"}
_CHAT_ONLY: Final = ("stream", "stream_options", "tools", "tool_choice", "functions", "function_call")


def endpoint_url(url: object) -> str | None:
    """``url`` as one of ``URLS`` (``/embeddings`` is ``/v1/embeddings``), or None if it is none of them."""
    if not isinstance(url, str):
        return None
    url = url if url.startswith("/v1/") else "/v1" + url
    return url if url in URLS else None


def split(params: Mapping[str, Any], default: str = CHAT) -> tuple[str, dict[str, Any]]:
    """The request's endpoint (its ``ENDPOINT`` key, else ``default``) and its parameters, checked.

    Raises RowError: an unknown URL (``unsupported_url``), a body without the field the endpoint
    needs (``invalid_record``), streaming or tools on an endpoint other than chat
    (``unsupported_parameter``). The parameters come back with ``ENDPOINT`` only for non-chat.
    """
    params = dict(params)
    given = params.pop(ENDPOINT, None) or default
    url = endpoint_url(given)
    if url is None:
        raise RowError("unsupported_url", f"unsupported url {given!r}: runner takes {', '.join(URLS)}")
    need = _REQUIRED[url]
    if url == CHAT:
        if not isinstance(params.get(need), list):
            raise RowError("invalid_record", f"a {url} request needs a {need!r} list")
        return url, params
    if params.get(need) in (None, "", []):
        raise RowError("invalid_record", f"a {url} request needs {need!r}")
    wants = [key for key in _CHAT_ONLY if params.get(key) not in (None, False, [])]
    if wants:
        raise RowError(
            "unsupported_parameter",
            f"{' and '.join(repr(k) for k in wants)} on {url}: streaming and tool calls are supported on "
            f"{CHAT} only; remove {'them' if len(wants) > 1 else 'it'} from this request",
        )
    return url, {**params, ENDPOINT: url}


def chat_usage(usage: Mapping[str, Any]) -> Mapping[str, Any]:
    """A usage block in chat's words: the Responses API's input/output tokens become prompt/completion."""
    if "prompt_tokens" in usage or "input_tokens" not in usage:
        return usage  # chat, completions and embeddings already say prompt_tokens
    return {
        "prompt_tokens": usage.get("input_tokens"),
        "completion_tokens": usage.get("output_tokens"),
        "total_tokens": usage.get("total_tokens"),
        "prompt_tokens_details": usage.get("input_tokens_details") or {},
        "completion_tokens_details": usage.get("output_tokens_details") or {},
    }


def finish_reasons(body: Mapping[str, Any]) -> list[str]:
    """Each answer's finish reason, in chat's words (a Responses API answer cut at its limit is ``length``)."""
    if body.get("object") == "response":
        incomplete = body.get("incomplete_details") or {}
        if incomplete.get("reason") == "max_output_tokens":
            return ["length"]
        return ["stop" if body.get("status") == "completed" else str(body.get("status"))]
    return [str(choice.get("finish_reason")) for choice in body.get("choices") or []]
