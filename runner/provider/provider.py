"""The litellm boundary: the completion function, credentials, answers, streams, token counts.

Failures are mapped where they cross it (``runner.provider.failures``); prices are ``runner.provider.prices``.
``runner.provider.setup.configure()`` must have run first, so litellm never reaches the network on its own.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from runner.provider import setup

if not setup.configured():  # litellm would fetch its price list at import, and read a stray .env
    raise ImportError(
        "call runner.provider.setup.configure() before importing runner.provider.provider (it imports litellm)"
    )

import litellm
from litellm.llms.custom_httpx.async_client_cleanup import close_litellm_async_clients

from runner.errors import UsageError
from runner.provider.failures import StreamIncomplete
from runner.provider.wire_stream import WireStream
from runner.redact import redact

litellm.suppress_debug_info = True
# litellm builds its OpenAI coroutine in a thread and awaits it later; a call cancelled in between
# (Ctrl-C, a fatal error in another worker) leaves it unawaited. Nothing was sent, so say nothing.
warnings.filterwarnings("ignore", "coroutine 'OpenAIChatCompletion.acompletion' was never awaited", RuntimeWarning)
litellm.telemetry = False
# litellm's OpenAI embedding path reads ``max_retries or DEFAULT_MAX_RETRIES``, so the 0 every call
# passes became 2 retries inside the SDK, unseen by runner's one retry policy (it answered a 429 on
# its own). No call of runner's relies on that default: each one says max_retries=0.
litellm.DEFAULT_MAX_RETRIES = 0  # type: ignore[misc]  # litellm declares it Final; it is read at call time
logging.getLogger("LiteLLM").setLevel(logging.WARNING)

__all__ = [
    "Answer",
    "Complete",
    "aclose",
    "acompletion",
    "answer_from",
    "collect_stream",
    "credentials",
    "estimate_tokens",
    "response_headers",
    "supports_schema",
]

Complete = Callable[..., Awaitable[Any]]
acompletion: Complete = litellm.acompletion

logger = logging.getLogger(__name__)


async def aclose() -> None:
    """Close the HTTP clients litellm cached, and forget them so a later call opens new ones."""
    from runner.provider import wire  # it imports this module

    await close_litellm_async_clients()
    litellm.in_memory_llm_clients_cache.flush_cache()
    await wire.aclose()


@dataclass(frozen=True, slots=True)
class Answer:
    """A successful call: the chat.completion body and what litellm knew about it."""

    body: dict[str, Any]
    request_id: str | None
    cost_usd: float | None
    headers: Mapping[str, str]
    usage_estimated: bool = False  # the provider sent no usage: body["usage"] and the cost are litellm's count


def response_headers(response: Any) -> dict[str, str]:
    """The provider's response headers, lower-case, from wherever litellm put them.

    A plain answer has them in ``_hidden_params["headers"]``; a stream only in
    ``["additional_headers"]``, prefixed ``llm_provider-`` (the one complete set on both paths).
    """
    hidden = getattr(response, "_hidden_params", None) or {}
    merged = {k.lower(): v for k, v in (hidden.get("headers") or {}).items()}
    for key, value in (hidden.get("additional_headers") or {}).items():
        key = key.lower()
        if key.startswith("llm_provider-"):
            merged.setdefault(key.removeprefix("llm_provider-"), value)
    return merged


USAGE_ESTIMATED = "runner_usage_estimated"  # in a response's _hidden_params: its usage is litellm's estimate


def usage_estimated(response: Any) -> bool:
    """Whether ``response``'s usage is litellm's own count rather than the provider's (a stream that ended
    without its usage chunk)."""
    hidden = getattr(response, "_hidden_params", None) or {}
    return bool(hidden.get(USAGE_ESTIMATED))


def answer_from(response: Any, messages: list[Any] | None = None) -> Answer:
    """Turn litellm's ModelResponse (a chat completion) into plain data.

    A body without the provider's usage (litellm reads a missing one as zero tokens; a stream that ended
    before its usage chunk is marked by ``collect_stream``) gets litellm's count of ``messages`` and of the
    answer instead of zeros, and the Answer says it is an estimate.
    """
    body = response.model_dump() if hasattr(response, "model_dump") else dict(response)
    hidden = getattr(response, "_hidden_params", None) or {}
    headers = response_headers(response)
    extra = hidden.get("additional_headers") or {}
    request_id = headers.get("x-request-id") or extra.get("request-id")
    cost = hidden.get("response_cost")
    estimated = usage_estimated(response)
    if not estimated and not (body.get("usage") or {}).get("total_tokens"):  # no chat answer is 0 tokens
        estimated, cost = True, _count_usage(body, messages or [])
    return Answer(body, request_id, float(cost) if cost is not None else None, headers, estimated)


def _count_usage(body: dict[str, Any], messages: list[Any]) -> float | None:
    """Put litellm's token count in ``body["usage"]`` (as ``stream_chunk_builder`` does); its cost, if priced."""
    model = str(body.get("model") or "")
    texts = []
    for choice in body.get("choices") or []:
        message = choice.get("message") or {}
        texts.append(message.get("content") or "")
        texts += [(call.get("function") or {}).get("arguments") or "" for call in message.get("tool_calls") or []]
    try:
        prompt = int(litellm.token_counter(model=model, messages=messages)) if messages else 0
        output = int(litellm.token_counter(model=model, text="".join(texts)))
    except Exception:  # a model litellm has no tokenizer for: about four characters a token
        prompt, output = len(str(messages)) // 4 if messages else 0, len("".join(texts)) // 4
    body["usage"] = {"prompt_tokens": prompt, "completion_tokens": output, "total_tokens": prompt + output}
    try:
        return float(sum(litellm.cost_per_token(model=model, prompt_tokens=prompt, completion_tokens=output)))
    except Exception:  # no price for it: the cost is unknown
        return None


async def collect_stream(
    stream: Any, messages: list[Any], started: float, clock: Callable[[], float]
) -> tuple[Any, float | None]:
    """Read a stream to the end and assemble it with ``stream_chunk_builder``: litellm's stream, or the short
    way's (``WireStream``: the provider's own chunks as dicts, assembled and priced the same way).

    Returns the assembled ModelResponse and the seconds from ``started`` to the first content or
    tool-call delta (None if there was none). Tool-call arguments are only ever read from the
    assembled message, never from partial chunks.
    """
    chunks: list[Any] = []
    first: float | None = None
    finished = False
    wire = isinstance(stream, WireStream)
    try:
        async for chunk in stream:
            chunks.append(chunk)
            choices = _field(chunk, "choices") or []
            if not choices:
                continue  # the usage chunk
            delta = _field(choices[0], "delta")
            if _field(delta, "content") or _field(delta, "tool_calls"):
                first = clock() - started if first is None else first
            finished = finished or _field(choices[0], "finish_reason") is not None
    finally:
        if wire:
            await stream.aclose()
    # litellm turns a 200 stream with no events at all into one made-up "stop" chunk: that is no answer.
    # Whether the provider's own token counts arrived. litellm yields a usage chunk of its own making when the
    # provider sent none, so ask what it received (its wrapper keeps the provider's chunks, usage ones included).
    received = getattr(stream, "chunks", None)
    counted = any(_field(c, "usage") for c in (received if isinstance(received, list) else chunks))
    finished = finished and (first is not None or counted)
    response = litellm.stream_chunk_builder(chunks, messages=messages) if chunks else None
    if response is None or not finished:  # stream_chunk_builder would call a cut-off stream "stop"
        raise StreamIncomplete("the stream ended without a finish reason")
    if wire:
        stream.bill(response)  # usage.cost, as litellm's stream wrapper writes it
    params: Any = response._hidden_params
    if isinstance(params, dict):  # the headers arrived on the stream, not on the built response
        headers = stream.headers if wire else response_headers(stream)
        params["headers"] = {**headers, **(params.get("headers") or {})}
        # The answer is whole (its finish reason came) but the usage chunk asked for did not: stream_chunk_builder
        # filled in litellm's own count. Kept, never presented as the provider's (Caller marks the record).
        params[USAGE_ESTIMATED] = not counted
    return response, first


def _field(value: Any, name: str) -> Any:
    """A field of a chunk or of a part of one: litellm's objects, or the provider's JSON (the short way)."""
    return value.get(name) if isinstance(value, dict) else getattr(value, name, None)


def supports_schema(model: str) -> bool:
    """Whether litellm's model map says ``model`` takes a JSON-schema ``response_format``."""
    try:
        return bool(litellm.supports_response_schema(model=model))
    except Exception:
        return False


def estimate_tokens(request: Mapping[str, Any]) -> tuple[int, int]:
    """A request's prompt tokens counted offline (litellm's bundled tokenizers) and its max_tokens."""
    try:
        prompt = int(litellm.token_counter(model=request["model"], messages=request.get("messages") or []))
    except Exception:  # a model litellm has no tokenizer for: about four characters a token
        prompt = len(str(request.get("messages") or "")) // 4
    return prompt, int(request.get("max_completion_tokens") or request.get("max_tokens") or 0)


# What litellm finds in place of a variable its check names (``validate_environment`` names azure's three whenever
# one is missing): azure's version has a default (``AZURE_DEFAULT_API_VERSION``), its key other names and Entra ID.
_INSTEAD: Final[dict[str, tuple[str, ...] | None]] = {
    "AZURE_API_VERSION": None,
    "AZURE_API_KEY": ("AZURE_OPENAI_API_KEY", "AZURE_AD_TOKEN", "AZURE_CLIENT_SECRET", "AZURE_PASSWORD"),
}


def _found(name: str) -> bool:
    """Whether a variable litellm's check names is set after all, or not needed (``_INSTEAD``)."""
    if os.environ.get(name):
        return True
    instead = _INSTEAD.get(name, ())
    return instead is None or any(os.environ.get(other) for other in instead)


def credentials(model: str, api_base: str | None) -> dict[str, Any]:
    """Extra call arguments for ``model``'s credentials; a UsageError naming the variable if one is missing.

    With ``api_base``, a name litellm does not know (``meta-llama/Meta-Llama-3-8B-Instruct``, as
    vLLM's and other servers' batch files say) goes to that server as-is, through litellm's
    OpenAI-compatible provider, so such a file runs unchanged.
    """
    extra: dict[str, Any] = {}
    try:
        name, provider, *_ = litellm.get_llm_provider(model)
        if provider == "text-completion-openai":  # litellm finds no key missing for it: check OpenAI's
            model = f"openai/{name}"
    except Exception as exc:
        if not api_base:
            raise UsageError(
                f"model {model!r} is not a model litellm knows how to call; "
                "use provider/model, e.g. openai/gpt-4o-mini (--model or MODEL=...)"
            ) from exc
        logger.info("model %s is not one litellm knows: sending it to %s as-is, through litellm's "
                    "OpenAI-compatible provider", model, redact(api_base))  # fmt: skip
        extra, model = {"custom_llm_provider": "openai"}, f"openai/{model}"
    env = litellm.validate_environment(model=model, api_base=api_base)
    missing = [name for name in env.get("missing_keys") or [] if not _found(name)]
    if env.get("keys_in_environment") or not missing:
        return extra
    if api_base:
        # A self-hosted OpenAI-compatible server often needs no key, but the SDK insists on one.
        logger.info("%s is not set; calling %s without a key", missing[0], api_base)
        return {**extra, "api_key": "no-key"}
    names = " and ".join(missing)
    are, them = ("is", "it") if len(missing) == 1 else ("are", "them")
    raise UsageError(
        f"{names} {are} not set: model {model!r} needs {them}. "
        f"Set it (export {missing[0]}=...) or choose another model with --model / MODEL=..."
    )
