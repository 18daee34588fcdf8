"""Embeddings the short way: one aiohttp POST to ``/embeddings``, orjson, and litellm's own types around it.

``litellm.aembedding`` spends several ms of CPU per call on an OpenAI-compatible server (a thread hop,
the openai SDK over httpx, a logging object, the answer priced inline). ``EmbedSender`` sends the JSON
litellm would send and hands back what litellm would: an ``EmbeddingResponse`` made by litellm's own
converter from the provider's JSON (numbers as the SDK reads them: an integer becomes a float), the
headers where runner reads them, the cost litellm's ``cost_per_token`` gives the usage; on failure
the SDK's error for that status or transport failure, wrapped as litellm's embedding handler wraps
it (``wire_errors.embedding_error``) and mapped by litellm's ``exception_type``. So a record is the same
whichever way its request went (tests/test_wire_embed.py), floats or base64 (the string as sent:
runner keeps it so, and decodes it only on export).

Which requests: embeddings to litellm's ``openai`` provider (``openai/...``, OpenAI's own embedding
models, any OpenAI-compatible ``--api-base``) and to ``litellm_proxy/...`` (the same handler) with only
the parameters litellm passes on unchanged; ``dimensions`` only for the ``text-embedding-3`` models
litellm lets have it. The rest, and every call while litellm's globals would change it, goes to
``fallback`` (``litellm.aembedding``): ``azure/`` (its handler processes headers and fails on a body
that is not JSON its own way) and ``hosted_vllm/`` (litellm's HTTP handler with an embedding config of
its own) among them.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

import httpx
import httpx2
import litellm
import orjson
from litellm.litellm_core_utils.exception_mapping_utils import exception_type
from litellm.litellm_core_utils.llm_response_utils.convert_dict_to_response import convert_to_model_response_object
from litellm.litellm_core_utils.llm_response_utils.get_headers import get_provider_request_id
from litellm.llms.custom_httpx.aiohttp_transport import map_aiohttp_exceptions
from litellm.types.utils import EmbeddingResponse

from runner.provider.prices import prices
from runner.provider.wire_errors import embedding_error, sdk_transport_error, status_error
from runner.provider.wire_http import Route, litellm_leaves_calls_alone, lowered, post, route, timeouts

if TYPE_CHECKING:
    from runner.provider.provider import Complete

__all__ = ["EmbedSender", "eligible"]

# The providers whose embeddings litellm sends through its OpenAI handler (``main.embedding``'s openai branch).
_PROVIDERS: Final = frozenset({"openai", "litellm_proxy"})
_OPTIONAL: Final = ("user", "dimensions", "encoding_format")  # sent as given when set (litellm drops a None)
_ALLOWED: Final = frozenset({"model", "input", *_OPTIONAL, "timeout", "max_retries", "api_base", "api_key",
                             "custom_llm_provider"})  # fmt: skip


@functools.lru_cache(maxsize=1024)
def _openai_embedding(model: str, provider: str | None) -> tuple[str, str] | None:
    """The model name sent and litellm's provider when litellm sends ``model``'s embeddings through its plain
    OpenAI handler (no provider config rewriting parameters), else None."""
    try:
        name, found, *_ = litellm.get_llm_provider(model, custom_llm_provider=provider)
        config = litellm.ProviderConfigManager.get_provider_embedding_config(
            model=name, provider=litellm.LlmProviders(found)
        )
    except Exception:
        return None
    return (name, found) if found in _PROVIDERS and config is None else None


def eligible(request: Mapping[str, Any]) -> Route | None:
    """Where an embeddings ``request`` goes when it can go the short way, else None (it goes through litellm)."""
    if not request.keys() <= _ALLOWED or request.get("encoding_format") not in (None, "float", "base64"):
        return None
    if not litellm_leaves_calls_alone():
        return None
    if litellm.proxy_auth is not None or os.environ.get("LITELLM_DEFAULT_EMBEDDING_ENCODING_FORMAT"):
        return None  # litellm would add headers, or ask for an encoding of its own
    found = _openai_embedding(request["model"], request.get("custom_llm_provider"))
    if found is None or (request.get("dimensions") is not None and "text-embedding-3" not in found[0]):
        return None  # litellm refuses dimensions for other models: its error, its way
    return route(request, *found)


class EmbedSender:
    """An embedding function: eligible requests sent straight to the server, the others to ``fallback``."""

    def __init__(self, fallback: Complete) -> None:
        self.fallback = fallback

    async def __call__(self, **request: Any) -> Any:
        to = eligible(request)
        if to is None:
            return await self.fallback(**request)
        try:
            return await _embed(request, to)
        except Exception as exc:  # as litellm.aembedding does: its own mapping of its handler's error
            raise exception_type(model=request["model"], custom_llm_provider=to.provider, original_exception=exc,
                                 completion_kwargs={}, extra_kwargs={}) from exc  # fmt: skip


@functools.lru_cache(maxsize=65536)
def _cost(model: str, prompt: int) -> float | None:
    """What litellm prices an embedding of ``prompt`` tokens at, or None if it has no price for ``model``."""
    if prices(model) is None:
        return None
    try:
        return float(sum(litellm.cost_per_token(model=model, prompt_tokens=prompt, completion_tokens=0,
                                                call_type="aembedding")))  # fmt: skip
    except Exception:
        return None


async def _embed(request: Mapping[str, Any], to: Route) -> EmbeddingResponse:
    """One POST; the answer as litellm's EmbeddingResponse, or the error litellm's embedding handler raises."""
    url = to.url("/embeddings")
    body = {"model": to.name, "input": request.get("input", [])}  # litellm's default
    body.update((k, request[k]) for k in _OPTIONAL if request.get(k) is not None)
    _, limits = timeouts(request)
    try:
        with map_aiohttp_exceptions():  # aiohttp's errors as httpx's, as litellm's transport raises them
            async with post(url, orjson.dumps(body), to.headers(), limits) as reply:
                raw, pairs = await reply.read(), list(reply.headers.items())
    except httpx.HTTPError as exc:
        lost = embedding_error(sdk_transport_error(exc, url))
        raise lost from lost.__cause__
    if reply.status >= 400:
        refused = embedding_error(status_error(reply.status, httpx2.Headers(pairs), raw, url))
        raise refused from refused.__cause__
    try:
        return _response(raw, lowered(pairs), request["model"])
    except Exception as exc:
        raise embedding_error(exc) from exc


def _response(raw: bytes, headers: dict[str, str], model: str) -> EmbeddingResponse:
    """The provider's embedding list as litellm returns it, priced as litellm prices it."""
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        parsed = json.loads(raw)  # the SDK's parser, so a broken body fails with the same message
    for item in parsed["data"]:
        vector = item.get("embedding")
        if isinstance(vector, list) and set(map(type, vector)) != {float}:  # in C: ~half a generator's time
            item["embedding"] = [float(v) if isinstance(v, int) else v for v in vector]  # as the SDK reads them
    usage = parsed.get("usage") or {}
    response = convert_to_model_response_object(response_object=parsed, model_response_object=EmbeddingResponse(),
                                                 response_type="embedding", _response_headers=headers)  # fmt: skip
    request_id = get_provider_request_id(headers)
    response._hidden_params = {
        "headers": headers,
        "additional_headers": {"request-id": request_id} if request_id is not None else {},
        "custom_llm_provider": "openai",
        "response_cost": _cost(model, int(usage.get("prompt_tokens") or 0)),
    }
    return response
