"""OpenAI-compatible fake chat provider that injects faults and latency on demand, for tests.

Directives in the LAST user message let a test target one row exactly (first of each sort wins):

    [[answer:TEXT]]         answer exactly TEXT (otherwise: keyword label bug/feature/billing/other)
    [[latency:MS]]          add MS milliseconds before answering
    [[fail:KIND(:key=value)*]]
        KIND    429 500 502 503 400 401 403 404 | timeout (stall, then answer) | drop (close, no reply)
        options retry_after=S (Retry-After, 429/503)  retry_after_ms=MS (retry-after-ms)
                sleep=S (timeout stall, default 30)   times=N (fail only the first N attempts of
                                                      this exact message, then answer normally)

Without a ``[[fail`` directive a request may instead hit a seeded random fault (``p429``,
``p500``, ``p502``, ``p503``, ``p_timeout``, ``p_drop``; see FaultConfig), so load runs are
reproducible. Requests are counted in total, per status ("200", "429", ..., "timeout", "drop")
and per last-user-message text.

Run by hand: ``python -m tests.fake_provider --port 8099 --latency-ms 50 --p429 0.05 --seed 1``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import random
import re
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from types import TracebackType
from typing import Any, Final, Self

from aiohttp import web

HOST: Final = "127.0.0.1"
MODELS: Final = ("gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "gpt-4.1")
SYSTEM_FINGERPRINT: Final = "fp_fake0001"
STREAM_CHUNK_CHARS: Final = 4

FAIL_KINDS: Final = ("429", "500", "502", "503", "400", "401", "403", "404", "timeout", "drop")
_RANDOM_KINDS: Final = (
    ("429", "p429"),
    ("500", "p500"),
    ("502", "p502"),
    ("503", "p503"),
    ("timeout", "p_timeout"),
    ("drop", "p_drop"),
)

# status -> (error type, error code, message); "{model}" is filled from the request.
_ERRORS: Final[dict[int, tuple[str, str, str]]] = {
    400: ("invalid_request_error", "invalid_value", "Invalid value for 'messages' (injected fault)."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided (injected fault)."),
    403: (
        "invalid_request_error",
        "insufficient_permissions",
        "You do not have access to this resource (injected fault).",
    ),
    404: (
        "invalid_request_error",
        "model_not_found",
        "The model `{model}` does not exist or you do not have access to it (injected fault).",
    ),
    429: (
        "requests",
        "rate_limit_exceeded",
        (
            "Rate limit reached for {model} on requests per min (RPM): "
            "Limit 500, Used 500, Requested 1 (injected fault)."
        ),
    ),
    500: (
        "server_error",
        "server_error",
        "The server had an error while processing your request. Sorry about that! (injected fault)",
    ),
    502: ("server_error", "bad_gateway", "Bad gateway (injected fault)."),
    503: (
        "server_error",
        "service_unavailable",
        "The engine is currently overloaded, please try again later (injected fault).",
    ),
}


# --------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class FaultConfig:
    """Server-wide latency and random-fault settings; each probability applies per request."""

    latency_ms: float = 0.0
    latency_mean_ms: float = 0.0  # mean of an extra random latency drawn from latency_dist
    latency_dist: str = "lognormal"  # or "exponential"
    latency_sigma: float = 0.5  # lognormal shape: larger gives a heavier tail
    seed: int | None = None
    p429: float = 0.0
    retry_after: float | None = None  # Retry-After seconds sent with random 429s and 503s
    p500: float = 0.0
    p502: float = 0.0
    p503: float = 0.0
    p_timeout: float = 0.0
    timeout_sleep: float = 30.0  # how long a random timeout stalls before answering
    p_drop: float = 0.0

    def __post_init__(self) -> None:
        """Reject bad values at configure time rather than failing requests later."""
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "latency_dist":
                if value not in ("lognormal", "exponential"):
                    raise ValueError("latency_dist must be 'lognormal' or 'exponential'")
            elif f.name == "seed":
                if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                    raise ValueError("seed must be an int or None")
            elif value is None and f.name == "retry_after":
                continue
            elif isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"{f.name} must be a non-negative number, got {value!r}")
        probabilities = [getattr(self, name) for _, name in _RANDOM_KINDS]
        if any(p > 1 for p in probabilities) or sum(probabilities) > 1:
            raise ValueError("fault probabilities must each be <= 1 and sum to <= 1")

    def merged(self, changes: Mapping[str, Any]) -> FaultConfig:
        """Return a copy with ``changes`` applied; unknown keys are an error, not ignored."""
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise ValueError(f"unknown fault config keys: {sorted(unknown)}")
        return replace(self, **dict(changes))


# --------------------------------------------------------------------------------------
# Directives in the last user message


class DirectiveError(ValueError):
    """A malformed ``[[...]]`` directive; answered with a 400 so the test author notices."""


@dataclass(frozen=True)
class Fault:
    """One fault to inject: an HTTP error status, a stall (``timeout``) or a dropped connection."""

    kind: str
    retry_after: float | None = None
    retry_after_ms: int | None = None
    sleep: float = 30.0
    times: int | None = None  # fail only the first N attempts of the same message


@dataclass(frozen=True)
class Directives:
    """What a test asked for inside a message; the first directive of each sort wins."""

    text: str  # the message with directives removed, which is what gets classified
    answer: str | None = None
    fault: Fault | None = None
    latency_ms: float = 0.0


_DIRECTIVE: Final = re.compile(r"\[\[(answer|fail|latency):(.*?)\]\]", re.DOTALL)
_FAIL_OPTIONS: Final[dict[str, Callable[[str], float | int]]] = {
    "retry_after": float,
    "retry_after_ms": int,
    "sleep": float,
    "times": int,
}


def parse_fault(spec: str) -> Fault:
    """Parse the ``KIND(:key=value)*`` part of a ``[[fail:...]]`` directive."""
    kind, *options = spec.strip().split(":")
    if kind not in FAIL_KINDS:
        raise DirectiveError(f"unknown fail kind {kind!r}; expected one of {', '.join(FAIL_KINDS)}")
    values: dict[str, float | int] = {}
    for option in options:
        key, sep, raw = option.partition("=")
        convert = _FAIL_OPTIONS.get(key.strip())
        if not sep or convert is None:
            raise DirectiveError(f"bad fail option {option!r}; expected one of {sorted(_FAIL_OPTIONS)}")
        try:
            values[key.strip()] = convert(raw.strip())
        except ValueError:
            raise DirectiveError(f"bad value in fail option {option!r}") from None
    return Fault(kind, **values)  # type: ignore[arg-type]  # keys and types checked above


def parse_directives(message: str) -> Directives:
    """Extract ``[[answer:..]]``, ``[[fail:..]]`` and ``[[latency:MS]]`` from a user message."""
    if "[[" not in message:  # the common case under load: skip the regex entirely
        return Directives(text=message)
    answer: str | None = None
    fault: Fault | None = None
    latency_ms: float | None = None
    for match in _DIRECTIVE.finditer(message):
        sort, arg = match.groups()
        if sort == "answer" and answer is None:
            answer = arg
        elif sort == "fail" and fault is None:
            fault = parse_fault(arg)
        elif sort == "latency" and latency_ms is None:
            try:
                latency_ms = float(arg)
            except ValueError:
                raise DirectiveError(f"bad latency directive {match.group(0)!r}") from None
    text = _DIRECTIVE.sub("", message).strip()
    return Directives(text=text, answer=answer, fault=fault, latency_ms=latency_ms or 0.0)


# --------------------------------------------------------------------------------------
# The canned answer and token accounting


def _keywords(spec: str) -> re.Pattern[str]:
    # Word boundaries keep "add" from matching "address"; CJK has no word boundaries.
    words = spec.split("|")
    parts = [rf"\b{re.escape(w)}s?\b" if w.isascii() else re.escape(w) for w in words]
    return re.compile("|".join(parts), re.IGNORECASE)


# Checked in this order, so a ticket mentioning both a refund and a crash is billing.
_CLASSES: Final = (
    (
        "billing",
        _keywords(
            "refund|charge|charged|invoice|billing|payment|card|subscription|price|VAT"
            "|退款|扣费|发票|账单|付款|收费|订阅|价格"
        ),
    ),
    (
        "bug",
        _keywords(
            "crash|error|bug|broken|fails|failed|not working|doesn't work|exception|500"
            "|freeze|崩溃|报错|错误|无法|闪退|打不开|失败"
        ),
    ),
    (
        "feature",
        _keywords(
            "feature|add|would be nice|please support|request|wish|could you|dark mode"
            "|export|integration|希望|建议|增加|支持|功能"
        ),
    ),
)


def classify(text: str) -> str:
    """Label a support ticket as bug, feature, billing or other by keywords (billing wins ties)."""
    text = text.replace("\u2019", "'")  # so a typographic "doesn’t work" still matches
    for label, pattern in _CLASSES:
        if pattern.search(text):
            return label
    return "other"


_CJK: Final = re.compile(r"[\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef]")


def count_tokens(text: str) -> int:
    """Cheap deterministic token estimate: one per CJK character, one per 4 other characters."""
    cjk = len(_CJK.findall(text))
    return cjk + math.ceil((len(text) - cjk) / 4)


def truncate_to_tokens(text: str, limit: int) -> str:
    """Return the longest prefix of ``text`` whose estimate is at most ``limit`` tokens."""
    cjk = other = 0
    for i, ch in enumerate(text):
        if _CJK.match(ch):
            cjk += 1
        else:
            other += 1
        if cjk + math.ceil(other / 4) > limit:
            return text[:i]
    return text


def content_text(content: object) -> str:
    """Flatten a message ``content`` (string, None or a list of parts) into plain text."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(part.get("text", "")) for part in content if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


def prompt_tokens(messages: Sequence[Mapping[str, Any]]) -> int:
    """Estimate prompt tokens: the content estimate plus 4 per message of framing, at least 1."""
    return max(1, sum(4 + count_tokens(content_text(m.get("content"))) for m in messages))


def usage(prompt: int, completion: int) -> dict[str, Any]:
    """Build an OpenAI ``usage`` object with the detail blocks current clients expect."""
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


# --------------------------------------------------------------------------------------
# Requests and statistics


class InvalidRequestError(Exception):
    """A chat request the real API would reject with a 400."""

    def __init__(self, message: str, param: str | None = None) -> None:
        """Keep the offending parameter name for the error body."""
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class RequestInfo:
    """What the server saw in one chat request (never the API key itself)."""

    has_authorization: bool
    model: str
    stream: bool
    include_usage: bool
    max_tokens: int | None
    max_completion_tokens: int | None
    temperature: float | None
    timeout: float | None  # a ``timeout``/``request_timeout`` field in the body, if any
    client_read_timeout: float | None  # the openai SDK's x-stainless-read-timeout header


@dataclass(frozen=True)
class ChatRequest:
    """A validated ``/chat/completions`` request."""

    key: str  # the last user message, verbatim: the per-row counting key
    messages: list[dict[str, Any]]
    directives: Directives
    info: RequestInfo

    @property
    def token_limit(self) -> int | None:
        """The effective completion limit; ``max_completion_tokens`` supersedes ``max_tokens``."""
        if self.info.max_completion_tokens is not None:
            return self.info.max_completion_tokens
        return self.info.max_tokens


def _optional_number(body: Mapping[str, Any], name: str) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequestError(f"Invalid type for '{name}': expected a number.", name)
    return float(value)


def _optional_limit(body: Mapping[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidRequestError(f"Invalid '{name}': expected an integer >= 1.", name)
    return value


def parse_chat_request(raw: bytes, headers: Mapping[str, str]) -> ChatRequest:
    """Validate a chat request body the way the real API would, raising InvalidRequestError."""
    try:
        body = json.loads(raw)
    except ValueError:
        raise InvalidRequestError("We could not parse the JSON body of your request.") from None
    if not isinstance(body, dict):
        raise InvalidRequestError("The request body must be a JSON object.")
    model, messages = body.get("model"), body.get("messages")
    if not isinstance(model, str) or not model:
        raise InvalidRequestError("you must provide a model parameter", "model")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise InvalidRequestError("'messages' must be a non-empty array of message objects.", "messages")
    user_messages = [m for m in messages if m.get("role") == "user"]
    key = content_text(user_messages[-1].get("content")) if user_messages else ""
    try:
        directives = parse_directives(key)
    except DirectiveError as exc:
        raise InvalidRequestError(f"fake provider: {exc}", "messages") from None
    stream_options = body.get("stream_options")
    header_timeout = headers.get("x-stainless-read-timeout")
    try:
        client_read_timeout = float(header_timeout) if header_timeout else None
    except ValueError:
        client_read_timeout = None
    timeout = _optional_number(body, "timeout")
    info = RequestInfo(
        has_authorization="Authorization" in headers,
        model=model,
        stream=body.get("stream") is True,
        include_usage=isinstance(stream_options, dict) and stream_options.get("include_usage") is True,
        max_tokens=_optional_limit(body, "max_tokens"),
        max_completion_tokens=_optional_limit(body, "max_completion_tokens"),
        temperature=_optional_number(body, "temperature"),
        timeout=timeout if timeout is not None else _optional_number(body, "request_timeout"),
        client_read_timeout=client_read_timeout,
    )
    return ChatRequest(key=key, messages=messages, directives=directives, info=info)


@dataclass(frozen=True)
class Stats:
    """A point-in-time copy of the server's request counters."""

    total: int
    by_status: dict[str, int]  # "200", "429", ..., plus "timeout" and "drop"
    by_key: dict[str, int]  # attempts per last-user-message text
    last_requests: dict[str, RequestInfo]

    def last_request_for(self, key: str) -> RequestInfo:
        """The most recent request whose last user message was ``key``."""
        try:
            return self.last_requests[key]
        except KeyError:
            raise KeyError(f"no request seen with last user message {key!r}") from None

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form served by ``GET /_stats``."""
        return {
            "total": self.total,
            "by_status": self.by_status,
            "by_key": self.by_key,
            "last_request": {key: asdict(info) for key, info in self.last_requests.items()},
        }


@dataclass(frozen=True)
class _Plan:
    """How to treat one admitted request, decided atomically under the state lock."""

    fault: Fault | None
    latency_s: float


# --------------------------------------------------------------------------------------
# The server


def _hex(n: int) -> str:
    return secrets.token_hex(n)


def _seconds(value: float) -> str:
    return str(int(value)) if value == int(value) else str(value)


def error_body(status: int, model: str, message: str | None = None, param: str | None = None) -> dict[str, Any]:
    """An OpenAI-shaped error body for ``status``."""
    type_, code, default = _ERRORS[status]
    return {"error": {"message": message or default.format(model=model), "type": type_, "param": param, "code": code}}


class FakeServer:
    """The request handlers and their counters; handlers run on one loop, readers may be anywhere."""

    def __init__(self, config: FaultConfig | None = None) -> None:
        """Set up empty counters; nothing listens until ``serve`` runs."""
        self._config = config or FaultConfig()
        # A plain lock (not asyncio) so test threads can read stats without a loop round-trip.
        self._lock = threading.Lock()
        self._rng = random.Random(self._config.seed)
        self._total = 0
        self._by_status: Counter[str] = Counter()
        self._by_key: Counter[str] = Counter()
        self._last: dict[str, RequestInfo] = {}
        self._stopping = asyncio.Event()

    def make_app(self) -> web.Application:
        """A fresh aiohttp app for these handlers (an app is tied to the first loop that runs it)."""
        app = web.Application()
        app.add_routes(
            [
                web.post("/v1/chat/completions", self._chat),
                web.post("/chat/completions", self._chat),
                web.get("/v1/models", self._models),
                web.get("/models", self._models),
                web.get("/_stats", self._stats_handler),
                web.post("/_reset", self._reset_handler),
                web.post("/_config", self._config_handler),
            ]
        )
        return app

    # -- state, safe to call from any thread -------------------------------------------

    @property
    def config(self) -> FaultConfig:
        """The current server-wide fault configuration."""
        return self._config

    def configure(self, changes: Mapping[str, Any]) -> FaultConfig:
        """Merge ``changes`` into the fault config; a new ``seed`` restarts the random sequence."""
        with self._lock:
            self._config = self._config.merged(changes)
            if "seed" in changes:
                self._rng.seed(self._config.seed)
            return self._config

    def reset(self) -> None:
        """Clear all counters and ``times`` state, and restart the seeded random sequence."""
        with self._lock:
            self._total = 0
            self._by_status.clear()
            self._by_key.clear()
            self._last.clear()
            self._rng.seed(self._config.seed)

    def stats(self) -> Stats:
        """Snapshot the counters."""
        with self._lock:
            return Stats(self._total, dict(self._by_status), dict(self._by_key), dict(self._last))

    def _admit(self, request: ChatRequest) -> _Plan:
        with self._lock:
            self._total += 1
            self._by_key[request.key] += 1
            self._last[request.key] = request.info
            attempt = self._by_key[request.key]
            fault, latency_s = self._draw()
            directive = request.directives.fault
            if directive is not None:
                # A [[fail]] directive opts the row out of random faults, even once its `times` ran out.
                fault = directive if directive.times is None or attempt <= directive.times else None
            self._by_status["200" if fault is None else fault.kind] += 1
            return _Plan(fault, latency_s + request.directives.latency_ms / 1000)

    def _draw(self) -> tuple[Fault | None, float]:
        cfg = self._config
        latency_ms = cfg.latency_ms
        if cfg.latency_mean_ms > 0:
            if cfg.latency_dist == "exponential":
                latency_ms += self._rng.expovariate(1 / cfg.latency_mean_ms)
            else:
                # Pick mu so the distribution's mean, not its median, equals latency_mean_ms.
                mu = math.log(cfg.latency_mean_ms) - cfg.latency_sigma**2 / 2
                latency_ms += self._rng.lognormvariate(mu, cfg.latency_sigma)
        # Always draw, so one request's fault doesn't depend on which probabilities are non-zero.
        u = self._rng.random()
        for kind, name in _RANDOM_KINDS:
            p: float = getattr(cfg, name)
            if u < p:
                return Fault(kind, retry_after=cfg.retry_after, sleep=cfg.timeout_sleep), latency_ms / 1000
            u -= p
        return None, latency_ms / 1000

    def _count_rejected(self) -> None:
        # A malformed request has no trustworthy key, so only the totals see it.
        with self._lock:
            self._total += 1
            self._by_status["400"] += 1

    # -- serving -----------------------------------------------------------------------

    async def serve(self, port: int, on_ready: Callable[[str], None]) -> None:
        """Listen on 127.0.0.1:``port`` (0 picks a free one) until ``shutdown`` or cancellation."""
        self._stopping = asyncio.Event()  # fresh per loop: an Event binds to the loop that awaits it
        runner = web.AppRunner(self.make_app(), access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        try:
            site = web.TCPSite(runner, HOST, port)
            await site.start()
            bound = runner.addresses[0][1]
            on_ready(f"http://{HOST}:{bound}/v1")
            await self._stopping.wait()
        finally:
            self._stopping.set()  # wake handlers parked in an injected timeout so cleanup is quick
            await runner.cleanup()

    def shutdown(self) -> None:
        """Ask ``serve`` to return; call on the server's loop."""
        self._stopping.set()

    async def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), seconds)

    # -- handlers ----------------------------------------------------------------------

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        try:
            chat = parse_chat_request(await request.read(), request.headers)
        except InvalidRequestError as exc:
            self._count_rejected()
            return web.json_response(error_body(400, "", str(exc), exc.param), status=400)
        plan = self._admit(chat)
        await self._sleep(plan.latency_s)
        fault = plan.fault
        if fault is not None and fault.kind == "timeout":
            await self._sleep(fault.sleep)
            fault = None  # a client that waited this long gets a normal answer
        if fault is None:
            return await self._answer(request, chat, started)
        if fault.kind == "drop":
            if request.transport is not None:
                request.transport.close()
            # aiohttp's write to the closed transport fails and it quietly abandons the connection.
            return web.Response()
        return self._error(fault, chat.info.model)

    def _error(self, fault: Fault, model: str) -> web.Response:
        status = int(fault.kind)
        headers = {"x-request-id": f"req_{_hex(16)}"}
        if fault.retry_after is not None:
            headers["Retry-After"] = _seconds(fault.retry_after)
        if fault.retry_after_ms is not None:
            headers["retry-after-ms"] = str(fault.retry_after_ms)
        return web.json_response(error_body(status, model), status=status, headers=headers)

    async def _answer(self, request: web.Request, chat: ChatRequest, started: float) -> web.StreamResponse:
        directives = chat.directives
        content = directives.answer if directives.answer is not None else classify(directives.text)
        completion_tokens = max(1, count_tokens(content))
        finish_reason = "stop"
        limit = chat.token_limit
        if limit is not None and limit < completion_tokens:
            content, completion_tokens, finish_reason = truncate_to_tokens(content, limit), limit, "length"
        totals = usage(prompt_tokens(chat.messages), completion_tokens)
        head = {
            "id": f"chatcmpl-{_hex(12)}",
            "created": int(time.time()),
            "model": chat.info.model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }
        headers = {
            "x-request-id": f"req_{_hex(16)}",
            "openai-processing-ms": str(round((time.monotonic() - started) * 1000)),
        }
        if chat.info.stream:
            return await self._stream(request, head, headers, content, finish_reason, totals, chat.info.include_usage)
        message = {"role": "assistant", "content": content, "refusal": None}
        body = {
            **head,
            "object": "chat.completion",
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}],
            "usage": totals,
        }
        return web.json_response(body, headers=headers)

    async def _stream(
        self,
        request: web.Request,
        head: dict[str, Any],
        headers: dict[str, str],
        content: str,
        finish_reason: str,
        totals: dict[str, Any],
        include_usage: bool,
    ) -> web.StreamResponse:
        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            body = {**head, "object": "chat.completion.chunk", "choices": [choice]}
            if include_usage:
                body["usage"] = None  # as the real API does on every chunk before the usage one
            return body

        chunks = [chunk({"role": "assistant", "content": "", "refusal": None})]
        chunks += [
            chunk({"content": content[i : i + STREAM_CHUNK_CHARS]}) for i in range(0, len(content), STREAM_CHUNK_CHARS)
        ]
        chunks.append(chunk({}, finish_reason))
        if include_usage:
            chunks.append({**head, "object": "chat.completion.chunk", "choices": [], "usage": totals})
        response = web.StreamResponse(
            headers={**headers, "Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        # A client that hangs up mid-stream is normal here; don't let aiohttp log it as a crash.
        with contextlib.suppress(ConnectionResetError):
            for body in chunks:
                await response.write(b"data: " + json.dumps(body).encode() + b"\n\n")
            await response.write(b"data: [DONE]\n\n")
        return response

    async def _models(self, request: web.Request) -> web.Response:
        data = [{"id": m, "object": "model", "created": 1715367049, "owned_by": "system"} for m in MODELS]
        return web.json_response({"object": "list", "data": data})

    async def _stats_handler(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats().to_json())

    async def _reset_handler(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"ok": True})

    async def _config_handler(self, request: web.Request) -> web.Response:
        try:
            changes = await request.json()
            if isinstance(changes, dict):
                return web.json_response(asdict(self.configure(changes)))
            message = "expected a JSON object"
        except ValueError as exc:  # bad JSON and bad config values alike
            message = str(exc)
        return web.json_response(error_body(400, "", f"fake provider: {message}"), status=400)


# --------------------------------------------------------------------------------------
# Test-facing wrapper


class FakeProvider:
    """Runs a FakeServer on 127.0.0.1 in a background thread with its own event loop."""

    def __init__(self, *, port: int = 0, **config: Any) -> None:
        """Accept FaultConfig fields as keyword arguments; ``port=0`` picks a free port."""
        self.server = FakeServer(FaultConfig().merged(config))
        self.url = ""  # the api_base for litellm, e.g. http://127.0.0.1:43123/v1; set by start()
        self._port = port
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self) -> Self:
        """Start serving and return once the port is bound."""
        if self._thread is not None:
            raise RuntimeError("FakeProvider is already started")
        self._ready.clear()
        self._error = None
        self._thread = threading.Thread(target=self._run, name="fake-provider", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._thread.join()
            self._thread = None
            raise self._error
        return self

    def stop(self) -> None:
        """Stop serving, wait for the server thread to finish, and re-raise any error it hit."""
        thread, loop = self._thread, self._loop
        if thread is None:
            return
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended on its own
                loop.call_soon_threadsafe(self.server.shutdown)
        thread.join()
        self._thread = self._loop = None
        if self._error is not None:
            raise self._error

    def stats(self) -> Stats:
        """Snapshot of the request counters."""
        return self.server.stats()

    def configure(self, **config: Any) -> None:
        """Merge FaultConfig fields into the running server's fault config."""
        self.server.configure(config)

    def reset(self) -> None:
        """Clear counters and ``times`` state."""
        self.server.reset()

    def __enter__(self) -> Self:
        """Start on entering a ``with`` block."""
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Stop on leaving a ``with`` block."""
        self.stop()

    def _run(self) -> None:
        try:
            asyncio.run(self.server.serve(self._port, self._on_ready))
        # Hand any failure to start()/stop() rather than dying silently in the thread.
        except BaseException as exc:
            self._error = exc
        finally:
            self._ready.set()

    def _on_ready(self, url: str) -> None:
        self.url = url
        self._loop = asyncio.get_running_loop()
        self._ready.set()


# --------------------------------------------------------------------------------------
# Command line


def main(argv: Sequence[str] | None = None) -> None:
    """Serve in the foreground until Ctrl-C, printing the api_base first."""
    parser = argparse.ArgumentParser(prog="python -m tests.fake_provider", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8099, help="0 picks a free port")
    numeric = [f.name for f in fields(FaultConfig) if f.name not in ("seed", "latency_dist")]
    for name in numeric:
        parser.add_argument(f"--{name.replace('_', '-')}", type=float)
    parser.add_argument("--latency-dist", choices=("lognormal", "exponential"))
    parser.add_argument("--seed", type=int)
    args = vars(parser.parse_args(argv))
    port = args.pop("port")
    try:
        server = FakeServer(FaultConfig().merged({k: v for k, v in args.items() if v is not None}))
    except ValueError as exc:
        parser.error(str(exc))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(server.serve(port, lambda url: print(url, flush=True)))


if __name__ == "__main__":
    main()
