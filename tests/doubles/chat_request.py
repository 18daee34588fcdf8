"""A ``/chat/completions`` request checked as the real API checks it, and the answer planned for it.

``parse_chat_request`` rejects what OpenAI rejects with a 400 (``InvalidRequestError``), reads the
directives, the tools and ``tool_choice``, and the service tier; ``plan_reply`` decides the answer
(a tool call, ``[[answer]]`` or the label), cut to the token limit as the real API cuts it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from tests.doubles.answers import (
    classify,
    content_text,
    count_tokens,
    example_arguments,
    prompt_tokens,
    truncate_to_tokens,
)
from tests.doubles.directives import DirectiveError, Directives, ToolCallSpec, parse_directives


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
