"""Every Batch API endpoint through litellm: which function a request goes to, and what comes back.

A request naming an endpoint other than chat (``runner.job.endpoints.ENDPOINT``) goes to litellm's
function for it: ``aembedding``, ``aresponses`` (litellm's Responses API: native for providers that
have one, such as ``openai/`` and any OpenAI-compatible ``--api-base``; bridged to chat completions
for the others) or ``atext_completion``. Everything around the call is the chat path's: the same
permits, retries and failure mapping (the Caller's), so only three things differ per endpoint and
live here: the tokens a request is charged for before it is sent (TPM, ``--max-cost``), the body
journalled (the provider's object for that endpoint, validating as the openai SDK's
``CreateEmbeddingResponse``, ``Response`` or ``Completion``), and where its usage is.

Embedding bodies are kept compact: an embedding asked for with ``encoding_format: "base64"`` stays
the provider's base64 string (float32, little-endian), about a quarter of the JSON floats' size;
it is decoded only when exported.
"""

from __future__ import annotations

import array
import base64
import functools
import hashlib
import os
import sys
import warnings
from collections.abc import Mapping
from typing import Any, Final

import litellm

from runner.job.endpoints import CHAT, COMPLETIONS, EMBEDDINGS, ENDPOINT, RESPONSES, chat_usage
from runner.provider import provider
from runner.provider.provider import Answer, Complete, response_headers

__all__ = ["FUNCTIONS", "answer_from", "estimate_tokens", "prompt_tokens", "send", "used_tokens"]

FUNCTIONS: Final[dict[str, Complete]] = {
    EMBEDDINGS: litellm.aembedding,
    RESPONSES: litellm.aresponses,
    COMPLETIONS: litellm.atext_completion,
}
# The openai SDK keeps a base64 embedding in a list[float] field, and litellm's model_dump of it warns
# on every such answer; the string is exactly what was asked for.
warnings.filterwarnings(
    "ignore",
    r"Pydantic serializer warnings:\s+PydanticSerializationUnexpectedValue\(Expected `list\[float\]` - "
    r"serialized value may not be as expected \[field_name='embedding'",
    UserWarning,
)
# As for chat (runner.provider.provider): an embedding cancelled between litellm making its coroutine and
# awaiting it was never sent.
warnings.filterwarnings("ignore", "coroutine 'OpenAIChatCompletion.aembedding' was never awaited", RuntimeWarning)
_COMPLETIONS_MAX_TOKENS: Final = 16  # what /v1/completions writes when the request sets no max_tokens


async def send(request: Mapping[str, Any], complete: Complete, calls: Mapping[str, Complete]) -> Any:
    """One call of ``request``: chat through ``complete``, another endpoint through ``calls`` or litellm's."""
    url = request.get(ENDPOINT)
    if url is None:
        return await complete(**request)
    params = {k: v for k, v in request.items() if k != ENDPOINT}
    if url == EMBEDDINGS and params.get("encoding_format") == "base64" and _custom(params["model"]):
        del params["encoding_format"]  # litellm refuses it for a custom provider (local/); answer_from encodes
    if url == COMPLETIONS and "client" not in params and _openai(params["model"], params.get("custom_llm_provider")):
        params["client"] = _completions_client(params)
    return await (calls.get(url) or FUNCTIONS[url])(**params)


def answer_from(request: Mapping[str, Any], response: Any) -> Answer:
    """The answer to ``request``: the provider's body for its endpoint, and what litellm knew about it."""
    url = request.get(ENDPOINT, CHAT)
    if url == CHAT:
        return provider.answer_from(response, request.get("messages"))
    if url == EMBEDDINGS:
        body = _embeddings_body(response, request.get("encoding_format") == "base64")
    else:
        body = response.model_dump() if hasattr(response, "model_dump") else dict(response)
        if url == RESPONSES:
            _provider_response(body)
    hidden = getattr(response, "_hidden_params", None) or {}
    headers = response_headers(response)
    request_id = headers.get("x-request-id") or (hidden.get("additional_headers") or {}).get("request-id")
    cost = hidden.get("response_cost")
    return Answer(body, request_id, float(cost) if cost is not None else None, headers)


@functools.cache
def _openai(model: str, provider: str | None) -> bool:
    """Whether litellm sends ``model``'s text completions through the OpenAI SDK."""
    try:
        return litellm.get_llm_provider(model, custom_llm_provider=provider)[1] in ("openai", "text-completion-openai")
    except Exception:
        return False


def _completions_client(params: Mapping[str, Any]) -> Any:
    """One OpenAI client per endpoint and key for /v1/completions, kept in litellm's client cache (so
    ``provider.aclose`` closes it). litellm builds a new one, with a new connection pool it never
    closes, for every text completion: a leaked aiohttp session per row."""
    from litellm.llms.openai.common_utils import BaseOpenAILLM
    from openai import AsyncOpenAI

    api_key = params.get("api_key") or os.environ.get("OPENAI_API_KEY") or "no-key"
    key = f"runner-completions:{params.get('api_base')}:{hashlib.sha256(api_key.encode()).hexdigest()}"
    client = litellm.in_memory_llm_clients_cache.get_cache(key)
    if client is None:
        http = BaseOpenAILLM.get_async_http_client()  # litellm's own transport, as its chat clients have
        client = AsyncOpenAI(api_key=api_key, base_url=params.get("api_base"), max_retries=0,
                             timeout=params.get("timeout"), http_client=http)  # type: ignore[arg-type]  # fmt: skip
        litellm.in_memory_llm_clients_cache.set_cache(key, client, litellm_owned_client=True)  # closed when evicted
    return client


def _custom(model: str) -> bool:
    """Whether ``model`` is served by a custom provider registered with litellm (the offline ``local/``)."""
    return any(model.startswith(f"{entry.get('provider')}/") for entry in litellm.custom_provider_map)


def _base64(vector: list[float]) -> str:
    """A vector as OpenAI's API sends it for ``encoding_format: "base64"``: float32, little-endian."""
    packed = array.array("f", vector)
    if sys.byteorder == "big":
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode()


def _embeddings_body(response: Any, base64_asked: bool) -> dict[str, Any]:
    """OpenAI's embedding list: vectors as sent (floats, or the base64 string asked for), usage as the API
    words it. Numbers from a provider that was not passed the encoding are encoded as asked."""
    data = []
    for i, item in enumerate(getattr(response, "data", None) or []):
        fields = item if isinstance(item, Mapping) else vars(item)
        vector = fields.get("embedding")
        if base64_asked and isinstance(vector, list):
            vector = _base64(vector)
        data.append({"object": "embedding", "index": fields.get("index", i), "embedding": vector})
    usage = getattr(response, "usage", None)
    prompt = getattr(usage, "prompt_tokens", None) or 0
    total = getattr(usage, "total_tokens", None) or prompt
    return {"object": "list", "data": data, "model": getattr(response, "model", None) or "",
            "usage": {"prompt_tokens": prompt, "total_tokens": total}}  # fmt: skip


def _provider_response(body: dict[str, Any]) -> None:
    """The Responses API object as the provider sent it: its own id (litellm wraps it in one of its
    own, with the provider's name), and the usage details the API always carries."""
    from litellm.responses.utils import ResponsesAPIRequestUtils

    if isinstance(body.get("id"), str):
        body["id"] = ResponsesAPIRequestUtils.decode_responses_api_response_id(body["id"])["response_id"]
    usage = body.get("usage")
    if isinstance(usage, dict):
        usage.pop("cost", None)  # litellm's own addition
        inputs = usage.get("input_tokens_details")
        usage["input_tokens_details"] = {"cached_tokens": 0, "cache_write_tokens": 0,
                                         **{k: v for k, v in (inputs or {}).items() if v is not None}}  # fmt: skip
        outputs = usage.get("output_tokens_details")
        usage["output_tokens_details"] = {"reasoning_tokens": 0,
                                          **{k: v for k, v in (outputs or {}).items() if v is not None}}  # fmt: skip


def used_tokens(response: Any) -> tuple[int | None, int | None]:
    """The prompt and output tokens the provider counted (Responses API: input and output tokens)."""
    usage = getattr(response, "usage", None)
    prompt = getattr(usage, "prompt_tokens", None)
    output = getattr(usage, "completion_tokens", None)
    if prompt is None:
        prompt, output = getattr(usage, "input_tokens", None), getattr(usage, "output_tokens", None)
    return prompt, output


def prompt_tokens(body: Mapping[str, Any]) -> int | None:
    """The prompt tokens a journalled body says the provider counted."""
    value = chat_usage(body.get("usage") or {}).get("prompt_tokens")
    return value if isinstance(value, int) else None


def estimate_tokens(request: Mapping[str, Any]) -> tuple[int, int]:
    """A request's prompt tokens counted offline and the most it may write (0 for embeddings), for TPM
    and ``--max-cost``; the provider's own count corrects the charge when the answer lands."""
    url = request.get(ENDPOINT, CHAT)
    if url == CHAT:
        return provider.estimate_tokens(request)
    if url == EMBEDDINGS:
        return _count(request["model"], request.get("input")), 0
    if url == COMPLETIONS:
        most = int(request.get("max_tokens") or _COMPLETIONS_MAX_TOKENS)
        return _count(request["model"], request.get("prompt")), most
    prompt = _count(request["model"], [request.get("instructions") or "", request.get("input")])
    return prompt, int(request.get("max_output_tokens") or 0)


def _count(model: str, value: Any) -> int:
    """Tokens of every text in ``value`` (strings, token arrays, input items), with litellm's tokenizer."""
    tokens = 0
    texts: list[str] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            texts.append(item)
        elif isinstance(item, int) and not isinstance(item, bool):
            tokens += 1  # an input already tokenized
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, Mapping):
            stack.extend(v for k, v in item.items() if k in ("content", "text"))
    text = "\n".join(texts)
    if not text:
        return tokens
    try:
        return tokens + int(litellm.token_counter(model=model, text=text))
    except Exception:  # a model litellm has no tokenizer for: about four characters a token
        return tokens + len(text) // 4
