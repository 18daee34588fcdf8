"""OpenAI-compatible fake chat provider that injects faults and latency on demand, for tests.

Directives in the LAST user message let a test target one row exactly (first of each sort wins):

    [[answer:TEXT]]         answer exactly TEXT (otherwise: keyword label bug/feature/billing/other)
    [[latency:MS]]          add MS milliseconds before answering
    [[tool:NAME:JSON]]      call tool NAME (it must be in the request's ``tools``) with JSON, a JSON
                            object returned verbatim as the arguments string (it cannot contain "]]")
    [[chunk:N]]             stream content N characters per chunk (default 4)
    [[split:N]]             stream tool-call arguments N characters per chunk (default 5)
    [[fail:KIND(:key=value)*]]
        KIND    429 500 502 503 400 401 403 404 | timeout (stall, then answer) | drop (close, no reply)
                | break (stream: close the connection after K events, no [DONE])
                | truncate (stream: end cleanly after K events, before the finish chunk, no [DONE];
                  after=0 is an empty stream, which litellm 1.110.2 takes as an empty "stop" answer)
                | malformed (stream: after K events send ``data: {not json``, then end without [DONE])
                | end (stream: end cleanly after K events wherever they fall, no [DONE]: after the finish
                  chunk and before the usage chunk, say; a non-streamed body comes without its usage)
                | stall (stream: pause ``sleep`` seconds after K events, then send the rest; a
                  non-streamed body pauses halfway)
                A non-streamed request gets the same three faults in its JSON body instead: cut off
                halfway by a closed connection, cut off halfway but ended cleanly, or ``{not json``.
        options retry_after=S (Retry-After, 429/503)  retry_after_ms=MS (retry-after-ms)
                sleep=S (timeout stall, default 30)   after=K (stream faults: events first, default 2)
                times=N (fail only the first N attempts of this exact message, then answer normally)

With ``tools`` in the request, the answer is a tool call when there is a ``[[tool`` directive or
``tool_choice`` forces one (a named function, or "required": the first tool); forced calls without
a directive get deterministic arguments built from the tool's JSON schema (see example_value).

Without a ``[[fail`` directive a request may instead hit a seeded random fault (``p429``,
``p500``, ``p502``, ``p503``, ``p_timeout``, ``p_drop``; see FaultConfig), so load runs are
reproducible. ``rpm_limit``/``tpm_limit`` add a real quota over a rolling ``window_s``: refusals are
429s with Retry-After, and every answer carries OpenAI's x-ratelimit-* headers (see Quota).
``api_key`` makes the server refuse (401) every request whose bearer key is another one, as a
deployment with a wrong key would.
Requests are counted in total, per status ("200", "429", ..., "timeout", "drop", "stream_break",
"stream_truncate", "stream_malformed", and "quota_429", a subset of "429"), per last-user-message text
and per client address (the peer's IP: which machine, or network namespace, sent them).

Tests can also hold requests: ``FakeProvider.hold(predicate)`` parks every request whose last user
message matches until ``release()`` (or reset, or shutdown), so a test can kill or stop a run while
exactly those requests are in flight; ``FakeProvider.wait_for(condition)`` blocks until the counters
satisfy ``condition``, woken by each request rather than by polling.

Run by hand: ``python -m tests.fake_provider --port 8099 --latency-ms 50 --p429 0.05 --seed 1 --rpm-limit 600``.
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
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from types import TracebackType
from typing import Any, Final, Self

from aiohttp import web

from tests.fake_anthropic import FakeAnthropic
from tests.fake_batches import FakeBatches
from tests.fake_gemini import FakeGemini

HOST: Final = "127.0.0.1"
MODELS: Final = ("gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "gpt-4.1")
SYSTEM_FINGERPRINT: Final = "fp_fake0001"
STREAM_CHUNK_CHARS: Final = 4
TOOL_ARGS_CHUNK_CHARS: Final = 5

STREAM_FAULTS: Final = ("break", "truncate", "malformed", "end", "stall")
FAIL_KINDS: Final = ("429", "500", "502", "503", "400", "401", "403", "404", "timeout", "drop", *STREAM_FAULTS)
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
    rpm_limit: int | None = None  # requests admitted per rolling window; None is unlimited
    tpm_limit: int | None = None  # tokens admitted per rolling window (see Quota for the charge)
    window_s: float = 60.0  # the rolling window of both limits, in seconds
    api_key: str | None = None  # when set, a request with any other bearer key is refused with a 401
    p_flex_unavailable: float = 0.0  # share of service_tier=flex requests answered 429 "Resource Unavailable"

    def __post_init__(self) -> None:
        """Reject bad values at configure time rather than failing requests later."""
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("rpm_limit", "tpm_limit"):
                if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                    raise ValueError(f"{f.name} must be an int >= 1 or None, got {value!r}")
            elif f.name == "window_s":
                if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                    raise ValueError(f"window_s must be a positive number, got {value!r}")
            elif f.name == "latency_dist":
                if value not in ("lognormal", "exponential"):
                    raise ValueError("latency_dist must be 'lognormal' or 'exponential'")
            elif f.name == "seed":
                if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                    raise ValueError("seed must be an int or None")
            elif f.name == "api_key":
                if value is not None and (not isinstance(value, str) or not value):
                    raise ValueError(f"api_key must be a non-empty string or None, got {value!r}")
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


QUIET: Final = asdict(FaultConfig(seed=0))  # configure(**QUIET): every fault, latency and quota off


class DirectiveError(ValueError):
    """A malformed ``[[...]]`` directive; answered with a 400 so the test author notices."""


@dataclass(frozen=True)
class Fault:
    """One fault to inject: an HTTP error status, a stall, a dropped connection or a broken stream."""

    kind: str
    retry_after: float | None = None
    retry_after_ms: int | None = None
    sleep: float = 30.0
    times: int | None = None  # fail only the first N attempts of the same message
    after: int = 2  # stream faults: how many SSE events go out intact first

    @property
    def status(self) -> str:
        """The ``by_status`` key this fault is counted under ("stream_break" for ``break``...)."""
        return f"stream_{self.kind}" if self.kind in STREAM_FAULTS else self.kind


@dataclass(frozen=True)
class ToolCallSpec:
    """A tool call a ``[[tool:NAME:JSON]]`` directive asked for."""

    name: str
    arguments: str  # the JSON object exactly as written in the directive


@dataclass(frozen=True)
class Directives:
    """What a test asked for inside a message; the first directive of each sort wins."""

    text: str  # the message with directives removed, which is what gets classified
    answer: str | None = None
    fault: Fault | None = None
    latency_ms: float = 0.0
    tool: ToolCallSpec | None = None
    chunk_chars: int | None = None  # content characters per stream chunk
    split_chars: int | None = None  # tool-call argument characters per stream chunk


_DIRECTIVE: Final = re.compile(r"\[\[(answer|fail|latency|tool|chunk|split):(.*?)\]\]", re.DOTALL)
_FAIL_OPTIONS: Final[dict[str, Callable[[str], float | int]]] = {
    "retry_after": float,
    "retry_after_ms": int,
    "sleep": float,
    "times": int,
    "after": int,
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
    if values.get("after", 0) < 0:
        raise DirectiveError(f"bad value in fail option after={values['after']}: must be >= 0")
    return Fault(kind, **values)  # type: ignore[arg-type]  # keys and types checked above


def parse_tool_call(spec: str) -> ToolCallSpec:
    """Parse the ``NAME:JSON`` part of a ``[[tool:...]]`` directive; JSON must be an object."""
    name, sep, arguments = spec.partition(":")
    if not sep or not name.strip():
        raise DirectiveError(f"bad tool directive {spec!r}; expected [[tool:NAME:JSON_OBJECT]]")
    try:
        parsed = json.loads(arguments)
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        raise DirectiveError(f"tool directive arguments are not a JSON object: {arguments!r}")
    return ToolCallSpec(name.strip(), arguments)


def _positive_int(directive: str, arg: str) -> int:
    try:
        value = int(arg)
    except ValueError:
        value = 0
    if value < 1:
        raise DirectiveError(f"bad {directive} directive {arg!r}; expected an integer >= 1")
    return value


def parse_directives(message: str) -> Directives:
    """Extract the ``[[answer|fail|latency|tool|chunk|split:..]]`` directives from a user message."""
    if "[[" not in message:  # the common case under load: skip the regex entirely
        return Directives(text=message)
    found: dict[str, Any] = {}
    for match in _DIRECTIVE.finditer(message):
        sort, arg = match.groups()
        if sort in found:
            continue
        if sort == "answer":
            found[sort] = arg
        elif sort == "fail":
            found[sort] = parse_fault(arg)
        elif sort == "tool":
            found[sort] = parse_tool_call(arg)
        elif sort in ("chunk", "split"):
            found[sort] = _positive_int(sort, arg)
        else:
            try:
                found[sort] = float(arg)
            except ValueError:
                raise DirectiveError(f"bad latency directive {match.group(0)!r}") from None
    return Directives(
        text=_DIRECTIVE.sub("", message).strip(),
        answer=found.get("answer"),
        fault=found.get("fail"),
        latency_ms=found.get("latency", 0.0),
        tool=found.get("tool"),
        chunk_chars=found.get("chunk"),
        split_chars=found.get("split"),
    )


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


_FORMAT_EXAMPLES: Final = {
    "email": "user@example.com",
    "date": "2024-01-01",
    "date-time": "2024-01-01T00:00:00Z",
    "time": "00:00:00",
    "uri": "https://example.com",
    "uuid": "00000000-0000-4000-8000-000000000000",
}


def _example_string(schema: Mapping[str, Any], text: str) -> str:
    value = _FORMAT_EXAMPLES.get(str(schema.get("format")), text or "example")
    max_length, min_length = schema.get("maxLength"), schema.get("minLength")
    if isinstance(max_length, int):
        value = value[:max_length]
    if isinstance(min_length, int):
        value = value.ljust(min_length, "x")
    return value


def example_value(schema: Any, text: str, defs: Mapping[str, Any] | None = None, depth: int = 0) -> Any:
    """A deterministic plausible value for a JSON schema (const, null if nullable, enum[0], text, 0...)."""
    if not isinstance(schema, dict) or depth > 20:
        return None
    defs = defs or {}
    if isinstance(schema.get("$ref"), str):  # local refs only: "#/$defs/Name" or "#/definitions/Name"
        return example_value(defs.get(schema["$ref"].rsplit("/", 1)[-1]), text, defs, depth + 1)
    type_ = schema.get("type")
    options = schema.get("anyOf") or schema.get("oneOf") or schema.get("allOf")
    if "const" in schema:
        return schema["const"]
    nullable_options = isinstance(options, list) and any(
        isinstance(o, dict) and o.get("type") == "null" for o in options
    )
    if schema.get("nullable") is True or (isinstance(type_, list) and "null" in type_) or nullable_options:
        return None
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    if isinstance(options, list) and options:
        return example_value(options[0], text, defs, depth + 1)
    if isinstance(type_, list):
        type_ = type_[0] if type_ else None
    if type_ == "object" or (type_ is None and isinstance(schema.get("properties"), dict)):
        properties = schema.get("properties")
        if not isinstance(properties, dict):
            return {}
        return {name: example_value(sub, text, defs, depth + 1) for name, sub in properties.items()}
    if type_ == "array":
        min_items = schema.get("minItems")
        return [example_value(schema.get("items"), text, defs, depth + 1)] * max(
            1, min_items if isinstance(min_items, int) else 0
        )
    if type_ == "string":
        return _example_string(schema, text)
    if type_ in ("integer", "number"):
        minimum = schema.get("minimum")
        return minimum if isinstance(minimum, int | float) and not isinstance(minimum, bool) else 0
    if type_ == "boolean":
        return False
    return schema.get("default")


def example_arguments(parameters: Any, text: str) -> str:
    """The arguments string for a forced tool call: example_value of its parameters, compact JSON."""
    defs: dict[str, Any] = {}
    if isinstance(parameters, dict):
        for key in ("definitions", "$defs"):
            if isinstance(parameters.get(key), dict):
                defs.update(parameters[key])
    value = example_value(parameters, text, defs)
    return json.dumps(value if isinstance(value, dict) else {}, ensure_ascii=False, separators=(",", ":"))


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
    tools: tuple[str, ...] = ()  # names of the function tools offered
    tool_choice: Any = None  # the ``tool_choice`` field as sent


@dataclass(frozen=True)
class ChatRequest:
    """A validated ``/chat/completions`` request."""

    key: str  # the last user message, verbatim: the per-row counting key
    messages: list[dict[str, Any]]
    directives: Directives
    info: RequestInfo
    tool_call: ToolCallSpec | None = None  # the tool call to answer with, if any
    tools_tokens: int = 0  # the prompt-token estimate of the tool definitions
    tier: str = "default"  # the service_tier asked for ("auto" is served at "default")

    @property
    def token_limit(self) -> int | None:
        """The effective completion limit; ``max_completion_tokens`` supersedes ``max_tokens``."""
        if self.info.max_completion_tokens is not None:
            return self.info.max_completion_tokens
        return self.info.max_tokens

    @property
    def prompt_estimate(self) -> int:
        """Prompt tokens: the messages' estimate plus the tool definitions'."""
        return prompt_tokens(self.messages) + self.tools_tokens


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


def _parse_tools(body: Mapping[str, Any]) -> dict[str, Any]:
    """Map each offered function tool's name to its parameters schema, in order."""
    tools = body.get("tools")
    if tools is None:
        return {}
    if not isinstance(tools, list) or not tools:
        raise InvalidRequestError("Invalid 'tools': expected a non-empty array of tools.", "tools")
    schemas: dict[str, Any] = {}
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else None
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(function, dict) or not isinstance(name, str) or not name:
            raise InvalidRequestError(f"Invalid 'tools[{i}]': expected a function tool with a name.", f"tools[{i}]")
        schemas[name] = function.get("parameters") or {"type": "object", "properties": {}}
    return schemas


def _forced_tool(choice: Any, tools: Mapping[str, Any]) -> str | None:
    """The tool ``tool_choice`` forces: a named function, or the first tool for "required"."""
    if choice is None:
        return None
    if not tools:
        raise InvalidRequestError(
            "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified.", "tool_choice"
        )
    if choice in ("none", "auto"):
        return None
    if choice == "required":
        return next(iter(tools))
    function = choice.get("function") if isinstance(choice, dict) and choice.get("type") == "function" else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str):
        raise InvalidRequestError(
            "Invalid value for 'tool_choice': expected 'none', 'auto', 'required' or a function.", "tool_choice"
        )
    if name not in tools:
        raise InvalidRequestError(
            f"Invalid value for 'tool_choice': no function named '{name}' in 'tools'.", "tool_choice"
        )
    return name


def _tool_call(directives: Directives, tools: Mapping[str, Any], choice: Any) -> ToolCallSpec | None:
    """The call to answer with: the directive's (checked against the request) or a forced one."""
    forced = _forced_tool(choice, tools)
    wanted = directives.tool
    if wanted is None:
        return None if forced is None else ToolCallSpec(forced, example_arguments(tools[forced], directives.text))
    if wanted.name not in tools:
        raise InvalidRequestError(f"fake provider: [[tool:{wanted.name}]] names no tool in 'tools'.", "messages")
    if choice == "none" or (forced is not None and choice != "required" and forced != wanted.name):
        raise InvalidRequestError(f"fake provider: [[tool:{wanted.name}]] conflicts with 'tool_choice'.", "messages")
    return wanted


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
    tools = _parse_tools(body)
    tool_call = _tool_call(directives, tools, body.get("tool_choice"))
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
        tools=tuple(tools),
        tool_choice=body.get("tool_choice"),
    )
    tools_tokens = count_tokens(json.dumps(body["tools"])) if tools else 0
    tier = body.get("service_tier") or "default"
    if tier not in ("auto", "default", "flex", "priority"):
        raise InvalidRequestError(f"Invalid value for 'service_tier': {tier!r}.", "service_tier")
    return ChatRequest(key, messages, directives, info, tool_call, tools_tokens, "default" if tier == "auto" else tier)


@dataclass(frozen=True)
class Reply:
    """The answer to a request before it is framed: text or a tool call, with its accounting."""

    content: str | None
    tool_call: ToolCallSpec | None
    completion_tokens: int
    finish_reason: str


def plan_reply(chat: ChatRequest) -> Reply:
    """Decide the answer: the tool call, ``[[answer]]`` or the label, cut to the token limit."""
    call = chat.tool_call
    text = call.arguments if call is not None else chat.directives.answer
    if text is None:
        text = classify(chat.directives.text)
    tokens, finish_reason = max(1, count_tokens(text)), "stop" if call is None else "tool_calls"
    limit = chat.token_limit
    if limit is not None and limit < tokens:
        # Like the real API, a cut-off tool call keeps its (now invalid) partial arguments.
        text, tokens, finish_reason = truncate_to_tokens(text, limit), limit, "length"
    if call is not None:
        return Reply(None, replace(call, arguments=text), tokens, finish_reason)
    return Reply(text, None, tokens, finish_reason)


@dataclass(frozen=True)
class Stats:
    """A point-in-time copy of the server's request counters."""

    total: int
    # "200", "429", ..., "timeout", "drop", "stream_break|truncate|malformed"; "quota_429" is a
    # subset of "429" (the ones the rpm/tpm quota refused), so these counts may sum past total.
    by_status: dict[str, int]
    by_key: dict[str, int]  # attempts per last-user-message text
    last_requests: dict[str, RequestInfo]
    tokens_charged: int = 0  # tokens the rpm/tpm quota charged to admitted requests (0 with no limit)
    held: int = 0  # requests parked by a hold right now (see FakeProvider.hold)
    # the usage of the last answer per last-user-message text, whether or not a fault kept it from the client
    usage_by_key: dict[str, dict[str, Any]] = field(default_factory=dict)
    by_peer: dict[str, int] = field(default_factory=dict)  # chat requests per client IP address

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
            "tokens_charged": self.tokens_charged,
            "by_peer": self.by_peer,
        }


# --------------------------------------------------------------------------------------
# The rpm/tpm quota


def _ceil_ms(seconds: float) -> int:
    return max(0, math.ceil(round(seconds * 1000, 6)))  # round first so 0.3 s is 300 ms, not 301


def _decimal_seconds(ms: int) -> str:
    return f"{ms // 1000}.{ms % 1000:03d}".rstrip("0").rstrip(".")


def reset_duration(seconds: float) -> str:
    """Format like OpenAI's x-ratelimit-reset-* headers, rounded up to 1 ms: 250ms, 1s, 1.5s, 6m0s."""
    ms = _ceil_ms(seconds)
    if ms < 1000:
        return f"{ms}ms" if ms else "0s"
    minutes, ms = divmod(ms, 60_000)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes}m{_decimal_seconds(ms)}s"
    if minutes:
        return f"{minutes}m{_decimal_seconds(ms)}s"
    return f"{_decimal_seconds(ms)}s"


@dataclass(frozen=True)
class QuotaDecision:
    """The quota's verdict on one request: its x-ratelimit-* headers and, if refused, why."""

    headers: dict[str, str]
    refused: str | None = None  # "requests" or "tokens"
    retry_after_ms: int | None = None  # when a retry would be admitted; None if it never would
    message: str = ""


class Quota:
    """Sliding-window rpm/tpm limits: a log of (time, tokens) for the requests admitted in the window.

    A request is admitted if, counting it, the requests and tokens admitted in the last
    ``window_s`` stay within the limits; refused requests are not logged, so they cost nothing, and
    are answered at once (no latency). An admitted request is charged even if an injected fault
    then fails it.
    The charge is the prompt estimate plus ``max_completion_tokens``/``max_tokens`` when given,
    else the completion tokens actually produced (so it is known before answering, as OpenAI's is).
    Retry-After is the exact time until enough logged requests fall out of the window, rounded
    up to 1 ms; x-ratelimit-reset-* is the time until the window is empty again (fully reset).
    Not thread-safe on its own: FakeServer calls it under its lock.
    """

    def __init__(self) -> None:
        """Start with an empty window."""
        self._log: deque[tuple[float, int]] = deque()
        self._tokens = 0
        self.charged = 0  # tokens charged to every request admitted since the last clear()

    def clear(self) -> None:
        """Forget everything admitted so far."""
        self._log.clear()
        self._tokens = 0
        self.charged = 0

    def check(self, cfg: FaultConfig, now: float, tokens: int, model: str) -> QuotaDecision:
        """Admit (and log) or refuse a request charged ``tokens``, at monotonic time ``now``."""
        while self._log and now - self._log[0][0] >= cfg.window_s:
            self._tokens -= self._log.popleft()[1]
        waits: dict[str, float] = {}  # per refusing limit, seconds until a retry fits (inf: never)
        if cfg.rpm_limit is not None and len(self._log) + 1 > cfg.rpm_limit:
            waits["requests"] = self._log[len(self._log) - cfg.rpm_limit][0] + cfg.window_s - now
        if cfg.tpm_limit is not None and self._tokens + tokens > cfg.tpm_limit:
            waits["tokens"] = self._token_wait(cfg.tpm_limit, cfg.window_s, now, tokens)
        if not waits:
            self._log.append((now, tokens))
            self._tokens += tokens
            self.charged += tokens
            return QuotaDecision(self._headers(cfg, now))
        refused = max(waits, key=waits.__getitem__)
        retry_ms = None if math.isinf(waits[refused]) else max(1, _ceil_ms(waits[refused]))
        message = self._message(cfg, refused, model, tokens, retry_ms)
        return QuotaDecision(self._headers(cfg, now), refused, retry_ms, message)

    def _token_wait(self, limit: int, window_s: float, now: float, tokens: int) -> float:
        if tokens > limit:
            return math.inf  # too large for any window: OpenAI's "Request too large" 429
        left = self._tokens
        for logged_at, logged in self._log:
            left -= logged
            if left + tokens <= limit:
                return logged_at + window_s - now
        return window_s  # unreachable: an empty window always fits a request within the limit

    def _headers(self, cfg: FaultConfig, now: float) -> dict[str, str]:
        reset = reset_duration(self._log[-1][0] + cfg.window_s - now if self._log else 0.0)
        headers: dict[str, str] = {}
        for unit, limit, used in (("requests", cfg.rpm_limit, len(self._log)), ("tokens", cfg.tpm_limit, self._tokens)):
            if limit is not None:
                headers[f"x-ratelimit-limit-{unit}"] = str(limit)
                headers[f"x-ratelimit-remaining-{unit}"] = str(max(0, limit - used))
                headers[f"x-ratelimit-reset-{unit}"] = reset
        return headers

    def _message(self, cfg: FaultConfig, refused: str, model: str, tokens: int, retry_ms: int | None) -> str:
        if refused == "requests":
            limit, used, requested, short = cfg.rpm_limit, len(self._log), 1, "requests per min (RPM)"
        else:
            limit, used, requested, short = cfg.tpm_limit, self._tokens, tokens, "tokens per min (TPM)"
        if retry_ms is None:
            return (
                f"Request too large for {model} in organization org-fake on {short}: Limit {limit}, "
                f"Requested {requested}. The input or output tokens must be reduced in order to run successfully."
            )
        return (
            f"Rate limit reached for {model} in organization org-fake on {short}: Limit {limit}, Used {used}, "
            f"Requested {requested}. Please try again in {reset_duration(retry_ms / 1000)}. "
            "Visit https://platform.openai.com/account/rate-limits to learn more."
        )


@dataclass(frozen=True)
class _Plan:
    """How to treat one admitted request, decided atomically under the state lock."""

    fault: Fault | None
    latency_s: float
    quota: QuotaDecision | None = None  # None when no rpm/tpm limit is configured


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


def _pieces(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def completion_body(head: Mapping[str, Any], reply: Reply, totals: dict[str, Any], call_id: str) -> dict[str, Any]:
    """A non-streamed ``chat.completion`` carrying ``reply``."""
    message: dict[str, Any] = {"role": "assistant", "content": reply.content, "refusal": None}
    if reply.tool_call is not None:
        function = {"name": reply.tool_call.name, "arguments": reply.tool_call.arguments}
        message["tool_calls"] = [{"id": call_id, "type": "function", "function": function}]
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": reply.finish_reason}
    return {**head, "object": "chat.completion", "choices": [choice], "usage": totals}


def stream_chunks(
    head: Mapping[str, Any],
    reply: Reply,
    totals: dict[str, Any],
    include_usage: bool,
    directives: Directives,
    call_id: str,
) -> list[dict[str, Any]]:
    """The ``chat.completion.chunk`` events for ``reply``: role, content or arguments, finish, usage."""

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        body = {**head, "object": "chat.completion.chunk", "choices": [choice]}
        if include_usage:
            body["usage"] = None  # as the real API does on every chunk before the usage one
        return body

    call = reply.tool_call
    if call is None:
        chunks = [chunk({"role": "assistant", "content": "", "refusal": None})]
        size = directives.chunk_chars or STREAM_CHUNK_CHARS
        chunks += [chunk({"content": piece}) for piece in _pieces(reply.content or "", size)]
    else:
        # Like OpenAI: the first delta names the call with empty arguments, then arguments follow in pieces.
        function = {"name": call.name, "arguments": ""}
        first = {"index": 0, "id": call_id, "type": "function", "function": function}
        chunks = [chunk({"role": "assistant", "content": None, "tool_calls": [first], "refusal": None})]
        size = directives.split_chars or TOOL_ARGS_CHUNK_CHARS
        chunks += [
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
            for piece in _pieces(call.arguments, size)
        ]
    chunks.append(chunk({}, reply.finish_reason))
    if include_usage:
        chunks.append({**head, "object": "chat.completion.chunk", "choices": [], "usage": totals})
    return chunks


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
        self._by_peer: Counter[str] = Counter()
        self._last: dict[str, RequestInfo] = {}
        self._usage: dict[str, dict[str, Any]] = {}
        self._quota = Quota()
        self.clock: Callable[[], float] = time.monotonic  # the quota window's; a test may put a hand-moved one here
        self._stopping = asyncio.Event()
        # Held requests: parked on ``_gate`` (made on the serving loop) until released. ``_changed``
        # wakes test threads in ``wait_for`` whenever a counter moves.
        self._changed = threading.Condition(self._lock)
        self._hold: Callable[[str], bool] | None = None
        self._held = 0
        self._gate: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.batches = FakeBatches(self)  # /v1/files and /v1/batches
        self.anthropic = FakeAnthropic(self)  # /v1/messages and /v1/messages/batches (tests/fake_anthropic.py)
        self.gemini = FakeGemini(self)  # /v1beta: generateContent and Batch Mode (tests/fake_gemini.py)

    def make_app(self) -> web.Application:
        """A fresh aiohttp app for these handlers (an app is tied to the first loop that runs it)."""
        app = web.Application(client_max_size=256 * 1024**2)  # batch input files: up to OpenAI's 200 MB
        app.add_routes(
            [
                web.post("/v1/chat/completions", self._chat),
                web.post("/chat/completions", self._chat),
                web.get("/v1/models", self._models),
                web.get("/models", self._models),
                web.get("/_stats", self._stats_handler),
                web.post("/_reset", self._reset_handler),
                web.post("/_config", self._config_handler),
                *self.batches.routes(),
                *self.anthropic.routes(),
                *self.gemini.routes(),
            ]
        )
        from tests.fake_endpoints import mount  # /v1/embeddings, /v1/completions, /v1/responses

        mount(app, self)
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
        """Clear all counters, ``times`` and quota state, and restart the seeded random sequence."""
        with self._lock:
            self._total = 0
            self._by_status.clear()
            self._by_key.clear()
            self._by_peer.clear()
            self._last.clear()
            self._usage.clear()
            self._quota.clear()
            self._rng.seed(self._config.seed)
        self.release()
        self.batches.reset()
        self.anthropic.reset()
        self.gemini.reset()

    def stats(self) -> Stats:
        """Snapshot the counters."""
        with self._lock:
            return self._stats_locked()

    def hold(self, predicate: Callable[[str], bool]) -> None:
        """Park every request whose last user message satisfies ``predicate`` until ``release``."""
        with self._lock:
            self._hold = predicate

    def release(self) -> None:
        """Stop holding: every parked request goes on and is answered; safe from any thread."""
        with self._lock:
            self._hold = None
            gate, self._gate, loop = self._gate, None, self._loop
        if gate is not None and loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already closed: nothing is parked
                loop.call_soon_threadsafe(gate.set)

    def wait_for(self, condition: Callable[[Stats], bool], timeout: float) -> Stats:
        """Block until the counters satisfy ``condition``; TimeoutError after ``timeout`` seconds."""
        with self._changed:
            if not self._changed.wait_for(lambda: condition(self._stats_locked()), timeout):
                raise TimeoutError(f"the fake provider never reached the condition: {self._stats_locked()}")
            return self._stats_locked()

    def _stats_locked(self) -> Stats:
        by_status, by_key, last = dict(self._by_status), dict(self._by_key), dict(self._last)
        return Stats(self._total, by_status, by_key, last, self._quota.charged, self._held, dict(self._usage),
                     dict(self._by_peer))  # fmt: skip

    async def _park_if_held(self, key: str) -> None:
        with self._lock:
            if self._hold is None or not self._hold(key):
                return
            if self._gate is None:
                self._gate = asyncio.Event()
            gate = self._gate
            self._held += 1
            self._changed.notify_all()
        try:
            await gate.wait()
        finally:
            with self._lock:
                self._held -= 1
                self._changed.notify_all()

    def _admit(self, request: ChatRequest, charge: int, peer: str | None = None) -> _Plan:
        # A quota-refused request still counts as an attempt of its message for `times`.
        with self._lock:
            self._total += 1
            self._by_key[request.key] += 1
            if peer is not None:
                self._by_peer[peer] += 1
            self._last[request.key] = request.info
            attempt = self._by_key[request.key]
            fault, latency_s = self._draw()
            quota = None
            if self._config.rpm_limit is not None or self._config.tpm_limit is not None:
                quota = self._quota.check(self._config, self.clock(), charge, request.info.model)
                if quota.refused is not None:
                    self._by_status["429"] += 1
                    self._by_status["quota_429"] += 1
                    self._changed.notify_all()
                    return _Plan(None, 0.0, quota)
            directive = request.directives.fault
            if directive is not None:
                # A [[fail]] directive opts the row out of random faults, even once its `times` ran out.
                fault = directive if directive.times is None or attempt <= directive.times else None
            self._by_status["200" if fault is None else fault.status] += 1
            self._changed.notify_all()
            return _Plan(fault, latency_s + request.directives.latency_ms / 1000, quota)

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

    async def serve(self, port: int, on_ready: Callable[[str], None], host: str = HOST) -> None:
        """Listen on ``host``:``port`` (0 picks a free one) until ``shutdown`` or cancellation."""
        self._stopping = asyncio.Event()  # fresh per loop: an Event binds to the loop that awaits it
        self._loop = asyncio.get_running_loop()
        runner = web.AppRunner(self.make_app(), access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            await site.start()
            bound = runner.addresses[0][1]
            on_ready(f"http://{host}:{bound}/v1")
            await self._stopping.wait()
        finally:
            self._stopping.set()  # wake handlers parked in an injected timeout so cleanup is quick
            self.release()
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
        key = self._config.api_key
        if key is not None and request.headers.get("Authorization") != f"Bearer {key}":
            return self._wrong_key(chat)
        reply = plan_reply(chat)
        limit = chat.token_limit
        charge = chat.prompt_estimate + (limit if limit is not None else reply.completion_tokens)
        plan = self._admit(chat, charge, request.remote)
        rate_headers = plan.quota.headers if plan.quota is not None else {}
        if plan.quota is not None and plan.quota.refused is not None:
            return self._quota_error(plan.quota, chat.info.model)
        if chat.tier == "flex" and self._flex_unavailable():
            return self._tier_unavailable(chat)
        await self._park_if_held(chat.key)
        await self._sleep(plan.latency_s)
        fault = plan.fault
        if fault is not None and fault.kind == "timeout":
            await self._sleep(fault.sleep)
            fault = None  # a client that waited this long gets a normal answer
        if fault is None or fault.kind in STREAM_FAULTS:
            return await self._answer(request, chat, reply, started, rate_headers, fault)
        if fault.kind == "drop":
            if request.transport is not None:
                request.transport.close()
            # aiohttp's write to the closed transport fails and it quietly abandons the connection.
            return web.Response()
        return self._error(fault, chat.info.model, rate_headers)

    def _flex_unavailable(self) -> bool:
        with self._lock:
            return self._rng.random() < self._config.p_flex_unavailable

    def _tier_unavailable(self, chat: ChatRequest) -> web.Response:
        """OpenAI's answer when the flex tier has no capacity: a 429 that is not a rate limit."""
        with self._lock:
            self._total += 1
            self._by_status["429"] += 1
            self._by_status["flex_unavailable"] += 1
            self._by_key[chat.key] += 1
            self._changed.notify_all()
        body = {"error": {"message": "Resource Unavailable: the flex tier has no capacity right now; try again "
                          "later or use the default tier.", "type": "resource_unavailable", "param": None,
                          "code": "resource_unavailable"}}  # fmt: skip
        return web.json_response(body, status=429, headers={"x-request-id": f"req_{_hex(16)}"})

    def _wrong_key(self, chat: ChatRequest) -> web.Response:
        """A 401 for a key other than ``api_key``, counted as an attempt of its message, like any refusal."""
        with self._lock:
            self._total += 1
            self._by_status["401"] += 1
            self._by_key[chat.key] += 1
            self._changed.notify_all()
        headers = {"x-request-id": f"req_{_hex(16)}"}
        return web.json_response(error_body(401, chat.info.model), status=401, headers=headers)

    def _error(self, fault: Fault, model: str, rate_headers: Mapping[str, str]) -> web.Response:
        status = int(fault.kind)
        headers = {"x-request-id": f"req_{_hex(16)}", **rate_headers}
        if fault.retry_after is not None:
            headers["Retry-After"] = _seconds(fault.retry_after)
        if fault.retry_after_ms is not None:
            headers["retry-after-ms"] = str(fault.retry_after_ms)
        return web.json_response(error_body(status, model), status=status, headers=headers)

    def _quota_error(self, quota: QuotaDecision, model: str) -> web.Response:
        headers = {"x-request-id": f"req_{_hex(16)}", **quota.headers}
        if quota.retry_after_ms is not None:
            headers["Retry-After"] = _decimal_seconds(quota.retry_after_ms)
            headers["retry-after-ms"] = str(quota.retry_after_ms)
        body = error_body(429, model, quota.message)
        body["error"]["type"] = quota.refused
        return web.json_response(body, status=429, headers=headers)

    async def _answer(
        self,
        request: web.Request,
        chat: ChatRequest,
        reply: Reply,
        started: float,
        rate_headers: Mapping[str, str],
        fault: Fault | None,
    ) -> web.StreamResponse:
        totals = usage(chat.prompt_estimate, reply.completion_tokens)
        with self._lock:
            self._usage[chat.key] = totals
        head = {
            "id": f"chatcmpl-{_hex(12)}",
            "created": int(time.time()),
            "model": chat.info.model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "service_tier": chat.tier,  # the tier that served it, as OpenAI says
        }
        headers = {
            "x-request-id": f"req_{_hex(16)}",
            "openai-processing-ms": str(round((time.monotonic() - started) * 1000)),
            **rate_headers,
        }
        call_id = f"call_{_hex(12)}"
        if chat.info.stream:
            chunks = stream_chunks(head, reply, totals, chat.info.include_usage, chat.directives, call_id)
            return await self._stream(request, headers, chunks, fault)
        body = json.dumps(completion_body(head, reply, totals, call_id)).encode()
        if fault is None:
            return web.Response(body=body, content_type="application/json", headers=headers)
        return await self._broken_body(request, headers, body, fault)

    async def _stream(
        self, request: web.Request, headers: dict[str, str], chunks: list[dict[str, Any]], fault: Fault | None
    ) -> web.StreamResponse:
        events = [b"data: " + json.dumps(body).encode() + b"\n\n" for body in chunks]
        rest: list[bytes] = []
        if fault is not None and fault.kind == "stall":
            events, rest = events[: fault.after], [*events[fault.after :], b"data: [DONE]\n\n"]
        elif fault is not None:
            # truncate stops before the finish chunk whatever `after` says; the others may reach [DONE]'s place.
            finish_at = next(
                i for i, body in enumerate(chunks) if body["choices"] and body["choices"][0]["finish_reason"]
            )
            events = events[: min(fault.after, finish_at if fault.kind == "truncate" else len(events))]
        response = web.StreamResponse(
            headers={**headers, "Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        # A client that hangs up mid-stream is normal here; don't let aiohttp log it as a crash.
        with contextlib.suppress(ConnectionResetError):
            for event in events:
                await response.write(event)
            if rest:
                await self._sleep(fault.sleep if fault is not None else 0.0)
                for event in rest:
                    await response.write(event)
            elif fault is None:
                await response.write(b"data: [DONE]\n\n")
            elif fault.kind == "malformed":
                await response.write(b"data: {not json\n\n")
            elif fault.kind == "break":
                self._hang_up(request)
        return response

    async def _broken_body(
        self, request: web.Request, headers: dict[str, str], body: bytes, fault: Fault
    ) -> web.StreamResponse:
        """A non-streamed answer with a stream fault: its JSON body cut off or replaced."""
        if fault.kind == "malformed":
            return web.Response(body=b"{not json", content_type="application/json", headers=headers)
        if fault.kind == "end":  # a whole answer whose usage the server did not send
            without = {k: v for k, v in json.loads(body).items() if k != "usage"}
            return web.Response(body=json.dumps(without).encode(), content_type="application/json", headers=headers)
        if fault.kind == "truncate":
            return web.Response(body=body[: len(body) // 2], content_type="application/json", headers=headers)
        response = web.StreamResponse(headers={**headers, "Content-Type": "application/json"})
        response.content_length = len(body)
        await response.prepare(request)
        with contextlib.suppress(ConnectionResetError):
            await response.write(body[: len(body) // 2])
            if fault.kind == "stall":
                await self._sleep(fault.sleep)
                await response.write(body[len(body) // 2 :])
            else:
                self._hang_up(request)
        return response

    @staticmethod
    def _hang_up(request: web.Request) -> None:
        # close() flushes what was written, then the peer sees the connection end mid-body.
        if request.transport is not None:
            request.transport.close()

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
    """Runs a FakeServer on 127.0.0.1 (or ``host``) in a background thread with its own event loop."""

    def __init__(
        self, *, port: int = 0, host: str = HOST, enter: Callable[[], None] | None = None, **config: Any
    ) -> None:
        """Accept FaultConfig fields as keyword arguments; ``port=0`` picks a free port. ``enter`` runs in
        the server's thread before it binds (to move that thread into a network namespace, say)."""
        self.server = FakeServer(FaultConfig().merged(config))
        self.url = ""  # the api_base for litellm, e.g. http://127.0.0.1:43123/v1; set by start()
        self._port, self._host, self._enter = port, host, enter
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

    @property
    def batches(self) -> FakeBatches:
        """The Files and Batch API (tests/fake_batches.py): configure, release, stats, wait_for."""
        return self.server.batches

    @property
    def anthropic(self) -> FakeAnthropic:
        """The Anthropic API (tests/fake_anthropic.py): configure, release, stats, wait_for."""
        return self.server.anthropic

    @property
    def gemini(self) -> FakeGemini:
        """The Gemini API (tests/fake_gemini.py): configure, release, stats, wait_for."""
        return self.server.gemini

    @property
    def root(self) -> str:
        """The server's root, the ``api_base`` for anthropic/ models (litellm and the SDK add /v1/...)."""
        return self.url.removesuffix("/v1")

    def configure(self, **config: Any) -> None:
        """Merge FaultConfig fields into the running server's fault config."""
        self.server.configure(config)

    def reset(self) -> None:
        """Clear counters and ``times`` state, and release any hold."""
        self.server.reset()

    def hold(self, predicate: Callable[[str], bool]) -> None:
        """Park requests whose last user message satisfies ``predicate`` until ``release`` (see FakeServer.hold)."""
        self.server.hold(predicate)

    def release(self) -> None:
        """Let every parked request be answered, and hold no more."""
        self.server.release()

    def wait_for(self, condition: Callable[[Stats], bool], timeout: float = 60.0) -> Stats:
        """Block until the counters satisfy ``condition`` (woken by each request, not polled)."""
        return self.server.wait_for(condition, timeout)

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
            if self._enter is not None:
                self._enter()
            asyncio.run(self.server.serve(self._port, self._on_ready, self._host))
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
    integers = ("seed", "rpm_limit", "tpm_limit")
    parser.add_argument("--api-key", help="refuse (401) every request that does not carry this key")
    for name in (f.name for f in fields(FaultConfig) if f.name not in ("latency_dist", "api_key")):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int if name in integers else float)
    parser.add_argument("--latency-dist", choices=("lognormal", "exponential"))
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
