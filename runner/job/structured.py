"""Structured outputs: a job's result schema sent as ``response_format``, and the answer checked against it.

A schema is a pydantic model class or a JSON schema dict. The parsed object (a pydantic model is
dumped to plain data) becomes the record's ``result``; an answer that is not JSON, or not of the
schema, is an InvalidResult, which the job may re-ask about (``Job.reasks``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import jsonschema
from pydantic import BaseModel, ValidationError

from runner.errors import InvalidResult
from runner.job.definition import content_of, first_choice

__all__ = ["Schema", "json_schema_of", "parse_as", "parse_tool_call", "response_format", "tool"]

Schema = type[BaseModel] | dict[str, Any]


def json_schema_of(schema: Schema) -> dict[str, Any]:
    """The JSON schema of a pydantic model, or the schema itself."""
    return schema.model_json_schema() if isinstance(schema, type) else dict(schema)


def response_format(schema: Schema, name: str = "result") -> dict[str, Any]:
    """OpenAI's ``response_format`` asking for JSON of ``schema``."""
    title = schema.__name__ if isinstance(schema, type) else str(schema.get("title") or name)
    return {"type": "json_schema", "json_schema": {"name": title, "schema": json_schema_of(schema), "strict": False}}


def tool(name: str, description: str, schema: Schema) -> dict[str, Any]:
    """An OpenAI function tool whose parameters are ``schema``."""
    return {"type": "function", "function": {"name": name, "description": description,
                                             "parameters": json_schema_of(schema)}}  # fmt: skip


def parse_as(schema: Schema, body: Mapping[str, Any]) -> Any:
    """The answer's JSON, checked against ``schema``; InvalidResult says what is wrong."""
    text = content_of(body).strip()
    if text.startswith("```"):  # some models fence JSON even when asked not to
        text = text.strip("`").removeprefix("json").strip()
    return _checked(schema, _json(text, body, "the answer"))


def parse_tool_call(schema: Schema, body: Mapping[str, Any], name: str) -> Any:
    """The arguments of the assembled message's call to ``name``, checked against ``schema``."""
    message = first_choice(body).get("message") or {}
    calls = [c for c in message.get("tool_calls") or [] if (c.get("function") or {}).get("name") == name]
    if not calls:
        raise InvalidResult(f"the model did not call {name}")
    return _checked(schema, _json(calls[0]["function"].get("arguments") or "", body, f"the {name} arguments"))


def _json(text: str, body: Mapping[str, Any], what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        choice = first_choice(body)
        cut = " (cut off at max_tokens)" if choice.get("finish_reason") == "length" else ""
        raise InvalidResult(f"{what}: not valid JSON{cut} ({exc.msg} at character {exc.pos})") from None


def _checked(schema: Schema, data: Any) -> Any:
    if isinstance(schema, type):
        try:
            return schema.model_validate(data).model_dump(mode="json")
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'root'}: {e['msg']}" for e in exc.errors())
            raise InvalidResult(f"the answer does not match {schema.__name__}: {problems}") from None
    try:
        jsonschema.validate(data, schema)
    except jsonschema.ValidationError as exc:
        where = ".".join(map(str, exc.absolute_path)) or "root"
        raise InvalidResult(f"the answer does not match the schema at {where}: {exc.message}") from None
    return data
