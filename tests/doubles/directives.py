"""Directives in the LAST user message let a test target one row exactly (first of each sort wins):

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
a directive get deterministic arguments built from the tool's JSON schema (see answers.example_value).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

STREAM_FAULTS: Final = ("break", "truncate", "malformed", "end", "stall")
FAIL_KINDS: Final = ("429", "500", "502", "503", "400", "401", "403", "404", "timeout", "drop", *STREAM_FAULTS)


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
