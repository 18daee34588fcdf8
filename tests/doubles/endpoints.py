"""The fake provider's other Batch API endpoints: ``/v1/embeddings``, ``/v1/completions``, ``/v1/responses``.

They share the chat endpoint's machinery (``FakeServer``): counters per text, ``[[...]]`` directives
in the text (``[[fail:...]]``, ``[[latency:MS]]``, ``[[answer:TEXT]]``), seeded random faults, the
rpm/tpm quota, holds, 429 with Retry-After, 5xx, time-outs and dropped connections. The text a
request is counted under is the embedding input (strings joined by a newline), the prompt, or the
responses input's last user text. Streaming is not offered here: runner streams chat only.

Embeddings are deterministic (a hash of the text seeds them), ``dimensions`` long (1536 unless the
request says), unit length, and base64 (float32, little-endian, as OpenAI sends them) when
``encoding_format`` is ``"base64"``.
"""

from __future__ import annotations

import array
import base64
import hashlib
import json
import math
import random
import secrets
import sys
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web

from tests.doubles.answers import classify, count_tokens, truncate_to_tokens
from tests.doubles.chat_request import ChatRequest, InvalidRequestError, RequestInfo
from tests.doubles.directives import DirectiveError, parse_directives
from tests.doubles.wire import error_body

if TYPE_CHECKING:
    from tests.doubles.server import FakeServer

__all__ = ["DIMENSIONS", "embedding_of", "mount"]

DIMENSIONS: Final = 1536  # text-embedding-3-small's


def embedding_of(text: str, dimensions: int = DIMENSIONS) -> list[float]:
    """A deterministic unit vector for ``text``, as float32 values."""
    rng = random.Random(hashlib.blake2b(text.encode(), digest_size=8).digest())
    values = array.array("f", (rng.gauss(0.0, 1.0) for _ in range(dimensions)))
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return list(array.array("f", (v / norm for v in values)))  # rounded to float32, as the API's are


def _base64(vector: list[float]) -> str:
    packed = array.array("f", vector)
    if sys.byteorder == "big":
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode()


def _texts(value: Any, param: str) -> list[str]:
    """A string or list of strings (token arrays are counted as their numbers' text)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return list(value)
    if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        return [" ".join(map(str, value))]
    if isinstance(value, list) and value and all(isinstance(v, list) for v in value):
        return [" ".join(map(str, v)) for v in value]
    raise InvalidRequestError(f"Invalid '{param}': expected a string or an array of strings or tokens.", param)


def _input_text(value: Any) -> str:
    """The responses API input's last user text (a string input is that text)."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list) or not value:
        raise InvalidRequestError("Invalid 'input': expected a string or an array of input items.", "input")
    for item in reversed(value):
        if isinstance(item, dict) and item.get("role") == "user":
            content = item.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def _limit(body: Mapping[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise InvalidRequestError(f"Invalid '{name}': expected an integer >= 1.", name)
    return value


def _request(raw: bytes, headers: Mapping[str, str], text_of: str) -> tuple[dict[str, Any], ChatRequest]:
    """The body and the ChatRequest the shared counters and faults work on."""
    try:
        body = json.loads(raw)
    except ValueError:
        raise InvalidRequestError("We could not parse the JSON body of your request.") from None
    if not isinstance(body, dict):
        raise InvalidRequestError("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequestError("you must provide a model parameter", "model")
    if body.get("stream") is True:
        raise InvalidRequestError("fake provider: streaming is only served on /v1/chat/completions.", "stream")
    if text_of == "input":
        key = "\n".join(_texts(body.get("input"), "input"))
    elif text_of == "prompt":
        key = "\n".join(_texts(body.get("prompt"), "prompt"))
    else:
        key = _input_text(body.get("input"))
    try:
        directives = parse_directives(key)
    except DirectiveError as exc:
        raise InvalidRequestError(f"fake provider: {exc}", text_of) from None
    limit = _limit(body, "max_output_tokens" if text_of == "responses" else "max_tokens")
    info = RequestInfo(
        has_authorization="Authorization" in headers,
        model=model,
        stream=False,
        include_usage=False,
        max_tokens=limit,
        max_completion_tokens=None,
        temperature=body.get("temperature") if isinstance(body.get("temperature"), int | float) else None,
        timeout=None,
        client_read_timeout=None,
    )
    return body, ChatRequest(key, [{"role": "user", "content": key}], directives, info)


def _answer(chat: ChatRequest) -> tuple[str, int, bool]:
    """The text answer (``[[answer]]`` or the keyword label), its tokens, and whether it was cut off."""
    text = chat.directives.answer if chat.directives.answer is not None else classify(chat.directives.text)
    tokens, limit = max(1, count_tokens(text)), chat.info.max_tokens
    if limit is not None and limit < tokens:
        return truncate_to_tokens(text, limit), limit, True
    return text, tokens, False


def _hex(n: int) -> str:
    return secrets.token_hex(n)


def embeddings_body(body: Mapping[str, Any], chat: ChatRequest) -> tuple[dict[str, Any], int]:
    """An embedding list for the request's inputs, and the prompt tokens it counts."""
    texts = _texts(body.get("input"), "input")
    dimensions = body.get("dimensions") or DIMENSIONS
    if isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1:
        raise InvalidRequestError("Invalid 'dimensions': expected an integer >= 1.", "dimensions")
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise InvalidRequestError("Invalid 'encoding_format': expected 'float' or 'base64'.", "encoding_format")
    data = []
    for i, text in enumerate(texts):
        vector = embedding_of(parse_directives(text).text, dimensions)
        embedding = _base64(vector) if encoding == "base64" else vector
        data.append({"object": "embedding", "index": i, "embedding": embedding})
    tokens = max(1, sum(count_tokens(t) for t in texts))
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return {"object": "list", "data": data, "model": chat.info.model, "usage": usage}, tokens


def completions_body(body: Mapping[str, Any], chat: ChatRequest) -> tuple[dict[str, Any], int]:
    """A text_completion answering the prompt with its label."""
    text, tokens, cut = _answer(chat)
    prompt = max(1, count_tokens(chat.key))
    choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": "length" if cut else "stop"}
    usage = {"prompt_tokens": prompt, "completion_tokens": tokens, "total_tokens": prompt + tokens}
    head = {"id": f"cmpl-{_hex(12)}", "object": "text_completion", "created": int(time.time())}
    return {**head, "model": chat.info.model, "choices": [choice], "usage": usage}, prompt + tokens


def responses_body(body: Mapping[str, Any], chat: ChatRequest) -> tuple[dict[str, Any], int]:
    """A Responses API ``response`` answering the last user text with its label."""
    text, tokens, cut = _answer(chat)
    instructions = body.get("instructions")
    prompt = max(1, count_tokens(chat.key) + (count_tokens(instructions) if isinstance(instructions, str) else 0))
    content = {"type": "output_text", "text": text, "annotations": []}
    message = {"type": "message", "id": f"msg_{_hex(12)}", "status": "incomplete" if cut else "completed",
               "role": "assistant", "content": [content]}  # fmt: skip
    usage = {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
             "output_tokens": tokens, "output_tokens_details": {"reasoning_tokens": 0},
             "total_tokens": prompt + tokens}  # fmt: skip
    return {
        "id": f"resp_{_hex(12)}",
        "object": "response",
        "created_at": int(time.time()),
        "status": "incomplete" if cut else "completed",
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if cut else None,
        "instructions": instructions,
        "max_output_tokens": chat.info.max_tokens,
        "model": chat.info.model,
        "output": [message],
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "store": False,
        "temperature": chat.info.temperature if chat.info.temperature is not None else 1.0,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": usage,
        "user": None,
        "metadata": {},
    }, prompt + tokens


_ROUTES: Final = (
    ("embeddings", "input", embeddings_body),
    ("completions", "prompt", completions_body),
    ("responses", "responses", responses_body),
)


def mount(app: web.Application, server: FakeServer) -> None:
    """Add the three endpoints (with and without ``/v1``) to ``server``'s app."""
    for path, text_of, make in _ROUTES:

        async def handle(request: web.Request, text_of: str = text_of, make: Any = make) -> web.StreamResponse:
            return await _serve(server, request, text_of, make)

        app.router.add_post(f"/v1/{path}", handle)
        app.router.add_post(f"/{path}", handle)
        for root in ("", "/v1"):  # Azure OpenAI's, and under an api_base of …/v1
            app.router.add_post(f"{root}/openai/deployments/{{deployment}}/{path}", handle)


async def _serve(server: FakeServer, request: web.Request, text_of: str, make: Any) -> web.StreamResponse:
    """The chat endpoint's fault handling around ``make(body, chat)``."""
    started = time.monotonic()
    try:
        body, chat = _request(await request.read(), request.headers, text_of)
        answer, charge = make(body, chat)
    except InvalidRequestError as exc:
        server._count_rejected()
        return web.json_response(error_body(400, "", str(exc), exc.param), status=400)
    plan = server._admit(chat, charge, request.remote)
    rate_headers = plan.quota.headers if plan.quota is not None else {}
    if plan.quota is not None and plan.quota.refused is not None:
        return server._quota_error(plan.quota, chat.info.model)
    await server._park_if_held(chat.key)
    await server._sleep(plan.latency_s)
    fault = plan.fault
    if fault is not None and fault.kind == "timeout":
        await server._sleep(fault.sleep)
        fault = None
    if fault is not None and fault.kind == "drop":
        if request.transport is not None:
            request.transport.close()
        return web.Response()
    if fault is not None and fault.kind not in ("break", "truncate", "malformed"):
        return server._error(fault, chat.info.model, rate_headers)
    took = str(round((time.monotonic() - started) * 1000))
    headers = {"x-request-id": f"req_{_hex(16)}", "openai-processing-ms": took, **rate_headers}
    raw = json.dumps(answer).encode()
    if fault is None:
        return web.Response(body=raw, content_type="application/json", headers=headers)
    return await server._broken_body(request, headers, raw, fault)
