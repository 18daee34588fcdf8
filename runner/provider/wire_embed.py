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
models, any OpenAI-compatible ``--api-base``), to ``litellm_proxy/...`` (the same handler) and to
``azure/<deployment>`` (its Azure handler through the SDK's Azure client: ``wire_embed_azure``; only with
``max_retries=0``, as runner calls, else the SDK would retry) with only the parameters litellm passes on
unchanged; ``dimensions`` only for the ``text-embedding-3`` models litellm lets have it. The rest, and every
call while litellm's globals would change it, goes to ``fallback`` (``litellm.aembedding``):
``hosted_vllm/`` (litellm's HTTP handler with an embedding config of its own) among them.
"""

from __future__ import annotations

import functools
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
from litellm.llms.azure.common_utils import process_azure_headers
from litellm.llms.custom_httpx.aiohttp_transport import map_aiohttp_exceptions
from litellm.types.utils import EmbeddingResponse, Usage

from runner.provider import wire_embed_azure
from runner.provider.wire_embed_sdk import constructed, read
from runner.provider.wire_errors import embedding_error, sdk_transport_error, status_error
from runner.provider.wire_http import Route, litellm_leaves_calls_alone, lowered, post, route, timeouts

if TYPE_CHECKING:
    from runner.provider.provider import Complete

__all__ = ["EmbedSender", "eligible"]

# The providers whose embeddings litellm sends through its OpenAI handler (``main.embedding``'s openai branch), and
# azure, which its Azure handler sends through the openai SDK's Azure client (``wire_embed_azure``).
_PROVIDERS: Final = frozenset({"openai", "litellm_proxy", "azure"})
_OPTIONAL: Final = ("user", "dimensions", "encoding_format")  # sent as given when set (litellm drops a None)
_ALLOWED: Final = frozenset({"model", "input", *_OPTIONAL, "timeout", "max_retries", "api_base", "api_key",
                             "custom_llm_provider", "api_version"})  # fmt: skip


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
    if found is None or ("api_version" in request and found[1] != "azure"):
        return None
    if found[1] == "azure":  # without max_retries=0 its SDK client would retry on its own
        return route(request, *found, embeddings=True) if request.get("max_retries") == 0 else None
    if request.get("dimensions") is not None and "text-embedding-3" not in found[0]:
        return None  # litellm refuses dimensions for other models of its OpenAI handler: its error, its way
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
        except Exception as exc:  # as litellm.aembedding does: its own mapping of its handler's error (or the SDK's)
            raise exception_type(model=request["model"], custom_llm_provider=to.provider, original_exception=exc,
                                 completion_kwargs={}, extra_kwargs={}) from exc  # fmt: skip


@functools.lru_cache(maxsize=65536)
def _cost(model: str, provider: str, served: str | None, usage: tuple[int, int, int]) -> float | None:
    """What litellm prices an embedding answer at (``set_hidden_params``' ``response_cost_calculator``): as the model
    the server named where litellm has a price for it, else as the one asked; None where it has neither."""
    prompt, completion, total = usage
    answer = EmbeddingResponse(model=served, usage=Usage(prompt_tokens=prompt, completion_tokens=completion,
                                                         total_tokens=total))  # fmt: skip
    try:
        return float(litellm.response_cost_calculator(response_object=answer, model=model, custom_llm_provider=provider,
                                                      call_type="aembedding", optional_params={}))  # fmt: skip
    except Exception:
        return None


async def _embed(request: Mapping[str, Any], to: Route) -> EmbeddingResponse:
    """One POST; the answer as litellm's EmbeddingResponse, or the error litellm's embedding handler raises."""
    url = to.url("/embeddings")
    body = {"model": to.name, "input": request.get("input", [])}  # litellm's default
    body.update((k, request[k]) for k in _OPTIONAL if request.get(k) is not None)
    azure = to.provider == "azure"
    asked = "encoding_format" in body
    if azure and not asked:
        body["encoding_format"] = wire_embed_azure.ENCODING
    _, limits = timeouts(request)
    try:
        with map_aiohttp_exceptions():  # aiohttp's errors as httpx's, as litellm's transport raises them
            async with post(url, orjson.dumps(body), to.headers(), limits) as reply:
                raw, pairs = await reply.read(), list(reply.headers.items())
    except httpx.HTTPError as exc:
        sdk = sdk_transport_error(exc, url)
        if azure:  # litellm's Azure handler lets the SDK's error through as it is
            raise sdk from exc
        lost = embedding_error(sdk)
        raise lost from lost.__cause__
    if reply.status >= 400:
        if azure:
            raise status_error(reply.status, httpx2.Headers(pairs), raw, url)
        refused = embedding_error(status_error(reply.status, httpx2.Headers(pairs), raw, url))
        raise refused from refused.__cause__
    headers = lowered(pairs)
    if azure:  # its handler lets what the SDK raises through as it is
        return _response(wire_embed_azure.answer(raw, headers, reply.status, asked), headers, request["model"], to)
    try:
        return _response(read(raw, headers), headers, request["model"], to)
    except Exception as exc:
        raise embedding_error(exc) from exc


def _response(parsed: Any, headers: dict[str, str], model: str, to: Route) -> EmbeddingResponse:
    """The provider's embedding list as litellm returns it (from the SDK's object), priced as litellm prices it."""
    response = convert_to_model_response_object(response_object=constructed(parsed),
                                                 model_response_object=EmbeddingResponse(),
                                                 response_type="embedding", _response_headers=headers)  # fmt: skip
    request_id = get_provider_request_id(headers)
    # litellm's Azure embedding handler keeps the headers as ``process_azure_headers`` makes them
    additional = process_azure_headers(headers) if to.provider == "azure" else {}
    if request_id is not None:
        additional["request-id"] = request_id
    usage = response.usage
    counts = (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) if usage is not None else (0, 0, 0)
    response._hidden_params = {
        "headers": headers,
        "additional_headers": additional,
        "custom_llm_provider": to.provider,
        "response_cost": _cost(model, to.provider, getattr(response, "model", None), counts),
    }
    return response
