"""Jobs without Python: a TOML or YAML file in ``jobs/`` becomes an ordinary ``Job``.

The file names a model, ``system`` and ``user`` templates whose ``{field}`` placeholders are filled
from the input record, the request's parameters, and what the answer must be: one of ``labels``, or
JSON of a ``schema`` (both checked, and re-asked about as a Python job would). Placeholders are plain
field names only: no attribute access, indexing, conversions or format specs, so a template can read
the record and nothing else. Everything is checked when the file is loaded, and a bad file fails at
start-up naming the file, the key and what to write instead.
"""

from __future__ import annotations

import difflib
import re
import string
import tomllib
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import orjson

from runner.errors import InvalidResult, JobDefinitionError, RowError
from runner.job.definition import Job, content_of

__all__ = ["SUFFIXES", "Template", "load_template"]

SUFFIXES = (".toml", ".yaml", ".yml")
KEYS = ("model", "description", "system", "user", "temperature", "max_tokens", "labels", "schema", "id_field",
        "concurrency", "max_attempts", "timeout", "rpm", "tpm", "reasks", "stream")  # fmt: skip
_JOB_KEYS = ("id_field", "concurrency", "max_attempts", "timeout", "rpm", "tpm", "reasks", "stream")
_EDGES = "*_`'\".,:;!?()[] \t\n"  # what may surround a bare label: "**Positive.**", "'neutral'"


class Template:
    """A text with ``{field}`` placeholders, parsed once; ``fill`` takes values from a record."""

    def __init__(self, text: str, path: Path, key: str) -> None:
        self.pieces: list[tuple[str, str | None]] = []
        where = f"{path}: key {key!r}"
        try:
            parsed = list(string.Formatter().parse(text))
        except ValueError as exc:
            raise JobDefinitionError(f"{where}: {exc}; write a literal brace as {{{{ or }}}}") from None
        for literal, field, spec, conversion in parsed:
            if field is None:
                self.pieces.append((literal, None))
                continue
            plain = field != "" and not field.isdigit() and not any(c in field for c in ".[]")
            if not plain or spec or conversion:
                shown = "{" + field + ("!" + conversion if conversion else "") + (":" + spec if spec else "") + "}"
                raise JobDefinitionError(
                    f"{where}: placeholder {shown} is not allowed; use a plain field name such as {{text}} "
                    "(no attributes, indexes, conversions or format specs), and {{ }} for literal braces"
                )
            self.pieces.append((literal, field))
        self.fields = tuple(f for _, f in self.pieces if f is not None)
        self.where = f"key {key!r} of {path.name}"

    def fill(self, record: Mapping[str, Any]) -> str:
        """The text with each placeholder replaced by the record's value (JSON for non-strings)."""
        out: list[str] = []
        for literal, field in self.pieces:
            out.append(literal)
            if field is None:
                continue
            if field not in record:
                raise RowError("missing_field", f"the record has no field {field!r} ({self.where} uses it)")
            value = record[field]
            if value is None:
                raise RowError("missing_field", f"the record's field {field!r} is null ({self.where} uses it)")
            out.append(value if isinstance(value, str) else orjson.dumps(value).decode())
        return "".join(out)


def load_template(path: Path) -> Job:
    """The job a TOML or YAML file describes; JobDefinitionError naming the file and key if it is wrong."""
    spec = _read(path)
    unknown = [k for k in spec if k not in KEYS]
    if unknown:
        key = unknown[0]
        near = difflib.get_close_matches(key, KEYS, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise JobDefinitionError(f"{path}: unknown key {key!r}{hint}; the keys are: {', '.join(KEYS)}")
    user, system = spec.get("user"), spec.get("system")
    if not isinstance(user, str) or not user.strip():
        raise JobDefinitionError(
            f"{path}: key 'user' must be the user message's template, e.g. user = \"{{text}}\"{_quote_it(user)}"
        )
    if system is not None and not isinstance(system, str):
        raise JobDefinitionError(
            f"{path}: key 'system' must be a string (the system prompt's template){_quote_it(system)}"
        )
    templates = [Template(spec["user"], path, "user")]
    if system:
        templates.insert(0, Template(system, path, "system"))
    params = _params(path, spec)
    labels, schema = spec.get("labels"), spec.get("schema")
    if labels is not None and schema is not None:
        raise JobDefinitionError(f"{path}: give either 'labels' or 'schema', not both")
    phrases = _labels(path, labels) if labels is not None else None
    fields: dict[str, Any] = {k: spec[k] for k in _JOB_KEYS if k in spec}
    fields.setdefault("reasks", 1)  # a rejected label or schema is asked about once, by default
    if phrases is not None:
        fields["labels"] = phrases
        fields["parse_result"] = partial(parse_label, tuple(phrases))
    if schema is not None:
        fields["schema"] = _schema(path, schema)
    model = spec.get("model")
    description = spec.get("description", "")
    for key, kind, what in (("description", str, "a string"), ("id_field", str, "the name of the records' id field"),
                            ("model", str, "a litellm model string"), ("stream", bool, "true or false")):  # fmt: skip
        if key in spec and not isinstance(spec[key], kind) and not (key == "model" and spec[key] is None):
            odd = _quote_it(spec[key]) if kind is str else ""
            raise JobDefinitionError(f"{path}: key {key!r} must be {what}, got {spec[key]!r}{odd}")
    try:
        return Job(name=path.stem, model=model, build_request=partial(_build, templates, params),
                   description=description, source=str(path), **fields)  # fmt: skip
    except JobDefinitionError as exc:
        raise JobDefinitionError(f"{path}: {exc}".replace("job field", "key")) from None
    except TypeError as exc:  # a value of the wrong kind met a comparison in Job's checks
        raise JobDefinitionError(f"{path}: {exc}") from None


def _read(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise JobDefinitionError(f"{path}: can't be read as UTF-8 text ({exc})") from None
    if path.suffix == ".toml":
        try:
            data: Any = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise JobDefinitionError(f"{path}: not valid TOML: {exc}") from None
    else:
        import yaml  # only for YAML jobs

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise JobDefinitionError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise JobDefinitionError(f"{path}: must be a table of keys (model, system, user, ...), got {kind}")
    return data


def _params(path: Path, spec: Mapping[str, Any]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    temperature = spec.get("temperature")
    if temperature is not None:
        if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not 0 <= temperature <= 2:
            raise JobDefinitionError(f"{path}: key 'temperature' must be a number from 0 to 2, got {temperature!r}")
        params["temperature"] = temperature
    max_tokens = spec.get("max_tokens")
    if max_tokens is not None:
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise JobDefinitionError(f"{path}: key 'max_tokens' must be a whole number >= 1, got {max_tokens!r}")
        params["max_tokens"] = max_tokens
    return params


def _labels(path: Path, labels: Any) -> dict[str, list[str]]:
    """Label -> descriptions/phrases (a plain list gives each label its own name as its one phrase)."""
    fix = 'labels = ["a", "b"], or a table of label -> list of descriptions and example texts'
    named = labels if isinstance(labels, list) else list(labels) if isinstance(labels, dict) else []
    if odd := _not_text(named):
        raise JobDefinitionError(f"{path}: key 'labels': {odd}; quote each label so it stays text, "
                                 f'e.g. labels: ["yes", "no"]')  # fmt: skip
    if isinstance(labels, list):
        labels = {label: [label] for label in labels} if all(isinstance(x, str) for x in labels) else None
    if not isinstance(labels, dict) or len(labels) < 2:
        raise JobDefinitionError(f"{path}: key 'labels' must name at least two labels: {fix}")
    for label, phrases in labels.items():
        if isinstance(phrases, list) and (odd := _not_text(phrases)):
            raise JobDefinitionError(f"{path}: key 'labels', label {label!r}: {odd}; quote each one so it stays "
                                     f'text, e.g. {label}: ["yes", "5 stars"]')  # fmt: skip
        ok = isinstance(phrases, list) and phrases and all(isinstance(p, str) and p.strip() for p in phrases)
        if not label.strip() or not ok:
            said = f"{path}: key 'labels', label {label!r}: needs a non-empty list of strings ({fix})"
            raise JobDefinitionError(said)
    return {str(k): list(v) for k, v in labels.items()}


def _not_text(values: Sequence[Any]) -> str:
    """What YAML made of the values that should be text ("1, 2 parsed as numbers"), or "" if all are text.
    YAML reads yes/no/on/off/true/false as booleans, and 5, 1.5 or 2024-05-13 as numbers and dates."""
    odd = [x for x in values if not isinstance(x, str)]
    if not odd:
        return ""
    kind = ("booleans (YAML reads yes, no, on, off, true and false as booleans)"
            if all(isinstance(x, bool) for x in odd) else "numbers or other values, not text")  # fmt: skip
    return ", ".join(str(x).lower() if isinstance(x, bool) else str(x) for x in odd) + f" parsed as {kind}"


def _quote_it(value: Any) -> str:
    """For a value that should be text: what YAML made of a bare scalar, and the fix ("" for anything else)."""
    scalar = value is not None and not isinstance(value, str | Mapping | list)
    return f" ({_not_text([value])}: quote it)" if scalar else ""


def _schema(path: Path, schema: Any) -> dict[str, Any]:
    import jsonschema

    if isinstance(schema, str):
        try:
            schema = orjson.loads(schema)
        except orjson.JSONDecodeError as exc:
            raise JobDefinitionError(f"{path}: key 'schema' is a string but not JSON ({exc})") from None
    if not isinstance(schema, dict):
        raise JobDefinitionError(f"{path}: key 'schema' must be a JSON schema: a table, or a string of JSON")
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = ".".join(map(str, exc.absolute_path)) or "its top level"
        raise JobDefinitionError(f"{path}: key 'schema' is not a valid JSON schema at {where}: {exc.message}") from None
    return schema


def _build(templates: Sequence[Template], params: Mapping[str, Any], record: Mapping[str, Any]) -> dict[str, Any]:
    """The request for one record: the filled templates as messages, and the file's parameters."""
    roles = ("system", "user") if len(templates) == 2 else ("user",)
    messages = [{"role": role, "content": t.fill(record)} for role, t in zip(roles, templates, strict=True)]
    return {"messages": messages, **params}


def parse_label(labels: Sequence[str], body: Mapping[str, Any]) -> str:
    """The one label the answer is (any case, bare or in light markup), else the one it names as a word."""
    answer = content_of(body)
    bare = answer.strip(_EDGES).casefold()
    for label in labels:
        if bare == label.casefold():
            return label
    named = [label for label in labels if re.search(rf"(?<!\w){re.escape(label.casefold())}(?!\w)", answer.casefold())]
    if len(named) == 1:
        return named[0]
    shown = answer if len(answer) <= 80 else answer[:77] + "..."
    raise InvalidResult(f"expected exactly one of {', '.join(labels)}; the model answered {shown!r}")
