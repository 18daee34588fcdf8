"""The job definition, and finding a job by name.

A job is a module in ``jobs/`` that defines ``job = Job(...)``: the model, how one input record
becomes request parameters, how the answer becomes the job's result, and the defaults it runs with.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, SupportsIndex

from runner.errors import JobDefinitionError, RowError, UsageError
from runner.job.endpoints import CHAT, ENDPOINT, URLS, endpoint_url

__all__ = ["BATCH", "Job", "content_of", "first_choice", "list_jobs", "load_job", "reask", "system_and_text"]

BuildRequest = Callable[[Mapping[str, Any]], dict[str, Any]]
ParseResult = Callable[[Mapping[str, Any]], Any]
Reask = Callable[[dict[str, Any], Mapping[str, Any], RowError], "dict[str, Any] | None"]


def reask(request: dict[str, Any], body: Mapping[str, Any], error: RowError) -> dict[str, Any] | None:
    """The default follow-up to a rejected answer: more room if it was cut off, else say what was wrong.

    A tool call is answered with a tool message carrying the error, so the model calls again; plain
    text gets a user message. Returns None when there is nothing sensible to ask.
    """
    choice = first_choice(body)
    message = dict(choice.get("message") or {})
    if choice.get("finish_reason") == "length":
        for key in ("max_completion_tokens", "max_tokens"):
            if request.get(key):
                return {**request, key: int(request[key]) * 2}
        return None
    tool_calls = message.get("tool_calls") or []
    said = {k: v for k, v in message.items() if k in ("role", "content", "tool_calls") and v is not None}
    if tool_calls:
        replies = [{"role": "tool", "tool_call_id": call.get("id"), "content": f"Invalid arguments: {error.message}. "
                    "Call the function again with corrected arguments."} for call in tool_calls]  # fmt: skip
    else:
        replies = [{"role": "user", "content": f"That answer was not valid: {error.message}. "
                    "Answer again, following the instructions exactly."}]  # fmt: skip
    return {**request, "messages": [*request["messages"], said, *replies]}


@dataclass(frozen=True)
class Job:
    """What to send for each record, how to read the answer, and the defaults to run with."""

    name: str
    build_request: BuildRequest
    model: str | None = None
    parse_result: ParseResult | None = None
    id_field: str | None = "id"
    description: str = ""
    concurrency: int = 16
    max_attempts: int = 6
    timeout: float = 60.0
    stream: bool = False  # stream=True with include_usage; the record is the same, plus time to first token
    schema: Any = None  # a pydantic model or JSON schema: sent as response_format, the answer parsed as it
    labels: Mapping[str, Sequence[str]] | None = None  # label -> descriptions and examples, for local/ models
    reasks: int = 0  # follow-ups allowed after the job rejects an answer (InvalidResult)
    reask: Reask = reask  # how to ask again: see ``reask`` above
    rpm: float | None = None  # requests per minute, per model (None: learn from the provider's headers)
    tpm: float | None = None  # tokens per minute, per model
    deployments: str | Mapping[str, Any] | None = None  # a deployments file's path, or its contents (see README)
    source: str = ""  # where the job came from, for messages and the run fingerprint
    endpoint: str = CHAT  # the Batch API endpoint its requests go to (runner.job.endpoints.URLS)

    def __post_init__(self) -> None:
        _check(isinstance(self.name, str) and self.name != "", "name", "a non-empty string")
        _check(callable(self.build_request), "build_request", "a function record -> request parameters")
        _check(self.parse_result is None or callable(self.parse_result), "parse_result", "a function or None")
        _check(
            self.model is None or (isinstance(self.model, str) and self.model != ""), "model", "a litellm model string"
        )
        _check(_whole(self.concurrency, 1), "concurrency", "a whole number >= 1")
        _check(_whole(self.max_attempts, 1), "max_attempts", "a whole number >= 1")
        _check(_whole(self.reasks, 0) and self.reasks <= 5, "reasks", "a whole number from 0 to 5")
        _check(callable(self.reask), "reask", "a function (request, body, error) -> request or None")
        _check(isinstance(self.timeout, int | float) and self.timeout > 0, "timeout", "a number of seconds > 0")
        for name in ("rpm", "tpm"):
            value = getattr(self, name)
            per_minute = isinstance(value, int | float) and not isinstance(value, bool) and value >= 1
            _check(value is None or per_minute, name, "a number per minute of at least 1, or None")
        _check(
            self.deployments is None or isinstance(self.deployments, str | Mapping),
            "deployments",
            "a path to a deployments file, a mapping with model_list, or None",
        )
        _check(endpoint_url(self.endpoint) == self.endpoint, "endpoint", f"one of {', '.join(URLS)}")
        if self.endpoint != CHAT:  # streaming, re-asks and schemas are chat messages
            for name in ("stream", "reasks", "schema", "labels"):
                _check(not getattr(self, name), name, f"left unset on a {self.endpoint} job (chat only)")

    def __reduce_ex__(self, protocol: SupportsIndex) -> str | tuple[Any, ...]:
        """Pickled for another process (a Ray worker): a job loaded from a file travels as that file's path
        and is loaded again there (its functions live in a module no other process can import by name);
        the built-in batch job by name; a job made in Python (a notebook) by value."""
        if self.source == BATCH_SOURCE:
            return (_builtin, (self.name,))
        path = Path(self.source)
        if self.source and path.suffix in _FILE_SUFFIXES and path.is_file():
            return (_load_file, (str(path.resolve()),))
        return super().__reduce_ex__(protocol)


_FILE_SUFFIXES = (".py", ".toml", ".yaml", ".yml")
BATCH_SOURCE = "runner.job.definition:BATCH"


def _builtin(name: str) -> Job:
    return BATCH


def _load_file(path: str) -> Job:
    return load_job(path, Path("."))


def _whole(value: object, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _check(ok: bool, field: str, expected: str) -> None:
    if not ok:
        raise JobDefinitionError(f"job field {field!r} must be {expected}")


def first_choice(body: Mapping[str, Any]) -> dict[str, Any]:
    """The first choice of a chat.completion body ({} when there is none)."""
    choices = body.get("choices") or [{}]
    return choices[0] or {}


def content_of(body: Mapping[str, Any]) -> str:
    """The text of the first choice of a chat.completion body ('' when there is none)."""
    return (first_choice(body).get("message") or {}).get("content") or ""


def system_and_text(record: Mapping[str, Any], system: str, field: str = "text") -> list[dict[str, str]]:
    """Messages for the common job shape: a system prompt, then the record's text as the user turn."""
    text = record.get(field)
    if not isinstance(text, str) or not text.strip():
        raise RowError("invalid_record", f"the record needs a non-empty {field!r} string")
    return [{"role": "system", "content": system}, {"role": "user", "content": text.strip()}]


def _batch_request(record: Mapping[str, Any]) -> dict[str, Any]:
    method, url, body = record.get("method", "POST"), record.get("url"), record.get("body")
    endpoint = endpoint_url(url)
    if str(method).upper() != "POST" or endpoint is None:
        raise RowError("unsupported_url", f"runner takes POST to {', '.join(URLS)}; got {method} {url}")
    if not isinstance(body, dict):
        raise RowError("invalid_record", "'body' must be an object (the request's parameters)")
    # A chat line's request is its body alone, as before other endpoints were taken (same fingerprint).
    return dict(body) if endpoint == CHAT else {**body, ENDPOINT: endpoint}


BATCH = Job(
    name="batch",
    build_request=_batch_request,
    id_field="custom_id",
    description="raw OpenAI Batch input lines (custom_id, method, url, body) for chat, embeddings, responses, "
    "completions; the body's model unless --model",
    source=BATCH_SOURCE,
)


def load_job(name: str, jobs_dir: Path) -> Job:
    """The job called ``name``: built in (``batch``), a file path, or ``<jobs_dir>/<name>.py`` (or a template
    file, ``.toml``, ``.yaml``, ``.yml``: ``runner.job.template``)."""
    if name == BATCH.name:
        return BATCH
    from runner.job.template import SUFFIXES, load_template

    if name.endswith((".py", *SUFFIXES)):
        path = Path(name)
    else:
        found = [p for p in (jobs_dir / f"{name}{s}" for s in (".py", *SUFFIXES)) if p.is_file()]
        if len(found) > 1:
            raise JobDefinitionError(f"job {name!r} is defined twice ({', '.join(map(str, found))}); keep one of them")
        path = found[0] if found else jobs_dir / f"{name}.py"
    if not path.is_file():
        known = ", ".join(sorted({p.stem for p in _job_files(jobs_dir)} | {"batch"}))
        raise UsageError(f"unknown job {name!r}: no file {path}; known jobs: {known} (see `runner jobs`)")
    return _import_job(path) if path.suffix == ".py" else load_template(path)


def _job_files(jobs_dir: Path) -> list[Path]:
    """Job modules and template files (TOML, YAML) in ``jobs_dir``, by name."""
    from runner.job.template import SUFFIXES

    files = [p for p in jobs_dir.glob("*") if p.suffix in (".py", *SUFFIXES) and not p.stem.startswith("_")]
    return sorted(p for p in files if p.is_file())


def _import_job(path: Path) -> Job:
    module_name = f"runner_job_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise JobDefinitionError(f"{path}: cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except JobDefinitionError as exc:
        raise JobDefinitionError(f"{path}: {exc}") from exc
    except Exception as exc:
        raise JobDefinitionError(f"{path}: failed to import: {type(exc).__name__}: {exc}") from exc
    job = getattr(module, "job", None)
    if not isinstance(job, Job):
        raise JobDefinitionError(f"{path}: must define `job = Job(...)` (from runner import Job)")
    return job if job.source else replace(job, source=str(path))


def list_jobs(jobs_dir: Path) -> list[Job | JobDefinitionError]:
    """Every job that ``runner run`` can find, or the error that stops one from loading."""
    from runner.job.template import load_template

    found: list[Job | JobDefinitionError] = [BATCH]
    for path in _job_files(jobs_dir):
        try:
            found.append(_import_job(path) if path.suffix == ".py" else load_template(path))
        except JobDefinitionError as exc:
            found.append(exc)
    return found
