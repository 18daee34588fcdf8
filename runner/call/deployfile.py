"""Reading a deployments file (``--deployments FILE`` or ``Job(deployments=...)``), checked at start-up.

The shape is litellm's proxy config, so a file written for the proxy works unchanged::

    model_list:
      - model_name: fast                  # the model group: what --model / the job names
        litellm_params:
          model: openai/gpt-4o-mini       # what litellm calls
          api_base: https://east.example/v1
          api_key: os.environ/EAST_KEY    # or inline (kept out of every output)
          rpm: 600                        # optional: this deployment's own limits
          tpm: 200000
        model_info: {id: east}            # optional: the name records and the manifest use
    fallbacks: [{fast: [slow]}]           # optional: another group when a group has none left
    router_settings: {routing_strategy: simple-shuffle}   # or least-busy

Everything wrong is a UsageError naming the file, the entry and what to write instead. No litellm
import here: a bad file fails in a fraction of a second.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.errors import UsageError
from runner.redact import add_secret

__all__ = ["STRATEGIES", "Deployment", "DeploymentFile", "deployments_for", "load_deployments", "parse_deployments"]

STRATEGIES = ("simple-shuffle", "least-busy")
_ENV = "os.environ/"
# Router settings litellm's own calls should not see: they are routing hints, not call arguments.
_ROUTING_ONLY = ("rpm", "tpm", "weight", "max_parallel_requests", "order")


# Call arguments of a deployment that say who pays, or how long to wait, not what answers: never part of a
# cache key (a new key or a longer time-out must not buy every answer again).
_NOT_WHAT_ANSWERS = frozenset({"api_key", "azure_ad_token", "aws_access_key_id", "aws_secret_access_key",
                               "aws_session_token", "vertex_credentials", "organization",
                               "timeout", "stream_timeout", "max_retries"})  # fmt: skip


@dataclass(frozen=True)
class Deployment:
    """One place a model group can be called: its name, its group, and the call arguments (key included)."""

    id: str
    group: str
    params: Mapping[str, Any] = field(repr=False)  # litellm call arguments, the key included: never printed
    rpm: float | None = None
    tpm: float | None = None

    @property
    def label(self) -> str:
        """What it calls, with no key: ``openai/gpt-4o-mini @ east.example``."""
        base = str(self.params.get("api_base") or "")
        host = re.sub(r"^[a-z]+://([^/@]*@)?", "", base).split("/")[0]
        return f"{self.params['model']} @ {host}" if host else str(self.params["model"])


@dataclass(frozen=True)
class DeploymentFile:
    """Every deployment, by group, the fallback order and the routing strategy."""

    deployments: tuple[Deployment, ...]
    fallbacks: Mapping[str, tuple[str, ...]]
    strategy: str = "simple-shuffle"
    source: str = ""

    def group(self, name: str) -> tuple[Deployment, ...]:
        """The deployments of model group ``name`` (empty if there is no such group)."""
        return tuple(d for d in self.deployments if d.group == name)

    @property
    def groups(self) -> tuple[str, ...]:
        """The model group names, in file order."""
        return tuple(dict.fromkeys(d.group for d in self.deployments))

    def serving(self, request: dict[str, Any]) -> dict[str, Any]:
        """``request`` as what decides its answer: its model is a group name, so the deployments that may answer
        it (model, endpoint and call arguments, never a key or a time-out) stand in for it. Re-pointing a group
        at another model then never reuses the old model's answers."""
        if request["model"] not in self.groups:
            return request
        chain = [request["model"], *self.fallbacks.get(request["model"], ())]
        members = [d for group in chain for d in self.group(group)]
        served = [{k: v for k, v in d.params.items() if k not in _NOT_WHAT_ANSWERS} for d in members]
        return {**request, "model": served}

    def check_model(self, model: str | None) -> None:
        """A UsageError unless ``model`` is one of the file's model groups."""
        if model is not None and model not in self.groups:
            raise UsageError(
                f"model {model!r} is not a model_name in {self.source}; it has {', '.join(self.groups)}: "
                "pass one of them with --model, or add a model_list entry for it"
            )


def deployments_for(flag: Path | None, job_name: str, in_job: str | Mapping[str, Any] | None) -> DeploymentFile | None:
    """The run's deployments: ``--deployments FILE``, else the job's ``deployments=`` (a path or the
    same mapping), else None (one model, called directly)."""
    if flag is not None:
        return load_deployments(flag)
    if isinstance(in_job, Mapping):
        return parse_deployments(in_job, f"job {job_name!r}, field 'deployments'")
    return load_deployments(Path(in_job)) if in_job else None


def load_deployments(path: Path) -> DeploymentFile:
    """The deployments file at ``path``, checked; a UsageError says what to fix."""
    import yaml  # YAML is a superset of JSON: one parser reads both

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"can't read the deployments file {path} ({exc.strerror}); check --deployments") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UsageError(f"deployments file {path} is not valid YAML or JSON: {exc}".replace("\n", " ")) from None
    return parse_deployments(data, str(path))


def parse_deployments(data: Any, source: str = "the job's deployments") -> DeploymentFile:
    """A deployments config already read (a dict like the file), checked."""

    def fail(where: str, what: str) -> UsageError:
        return UsageError(f"{source}: {where}: {what}")

    if not isinstance(data, Mapping) or not isinstance(data.get("model_list"), list) or not data["model_list"]:
        raise fail("top level", "needs 'model_list:', a list of {model_name, litellm_params} entries")
    deployments: list[Deployment] = []
    for i, entry in enumerate(data["model_list"]):
        deployments.append(_deployment(entry, f"model_list[{i}]", deployments, fail))
    settings = data.get("router_settings") or {}
    if not isinstance(settings, Mapping):
        raise fail("router_settings", "must be a mapping")
    strategy = settings.get("routing_strategy", "simple-shuffle")
    if strategy not in STRATEGIES:
        raise fail("router_settings.routing_strategy", f"must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    groups = {d.group for d in deployments}
    fallbacks = _fallbacks(data.get("fallbacks", settings.get("fallbacks")) or [], groups, fail)
    return DeploymentFile(tuple(deployments), fallbacks, strategy, source)


def _deployment(entry: Any, where: str, earlier: list[Deployment], fail: Any) -> Deployment:
    if not isinstance(entry, Mapping):
        raise fail(where, "must be a mapping with model_name and litellm_params")
    group = entry.get("model_name")
    if not isinstance(group, str) or not group:
        raise fail(where, "needs 'model_name:', the name --model or the job uses for this group")
    params = entry.get("litellm_params")
    if not isinstance(params, Mapping) or not isinstance(params.get("model"), str) or not params["model"]:
        raise fail(where, "needs 'litellm_params:' with 'model:', a litellm model string such as openai/gpt-4o-mini")
    info = entry.get("model_info") or {}
    name = info.get("id") if isinstance(info, Mapping) else None
    name = name or entry.get("name") or f"{group}#{sum(d.group == group for d in earlier) + 1}"
    if not isinstance(name, str) or not re.fullmatch(r"[\w.@:#/-]{1,100}", name):
        raise fail(where, f"model_info.id must be a short name (letters, digits, . _ - # / : @), got {name!r}")
    if any(d.id == name for d in earlier):
        raise fail(where, f"the name {name!r} is used twice; give each entry its own model_info.id")
    call = {k: _value(v, f"{where}.litellm_params.{k}", fail) for k, v in params.items() if k not in _ROUTING_ONLY}
    if isinstance(call.get("api_key"), str):
        add_secret(call["api_key"])
    limits = {k: params.get(k, entry.get(k)) for k in ("rpm", "tpm")}
    for kind, value in limits.items():
        ok = value is None or (isinstance(value, int | float) and not isinstance(value, bool) and value >= 1)
        if not ok:
            raise fail(where, f"{kind} must be a number per minute of at least 1, got {value!r}")
    return Deployment(name, group, call, limits["rpm"], limits["tpm"])


def _value(value: Any, where: str, fail: Any) -> Any:
    """``os.environ/NAME`` read from the environment, as litellm's proxy does; anything else as written."""
    if not isinstance(value, str) or not value.startswith(_ENV):
        return value
    name = value.removeprefix(_ENV)
    if name not in os.environ:
        raise fail(where, f"names {value}, but {name} is not set: export {name}=... or write the value inline")
    return os.environ[name]


def _fallbacks(raw: Any, groups: set[str], fail: Any) -> dict[str, tuple[str, ...]]:
    """litellm's shape, a list of {group: [fallback groups]}; every name must be a group of the file."""
    if not isinstance(raw, list):
        raise fail("fallbacks", "must be a list like [{fast: [slow]}]")
    found: dict[str, tuple[str, ...]] = {}
    for item in raw:
        if not isinstance(item, Mapping):
            raise fail("fallbacks", f"each item must be a mapping like {{fast: [slow]}}, got {item!r}")
        for group, targets in item.items():
            targets = [targets] if isinstance(targets, str) else targets
            if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
                raise fail(f"fallbacks.{group}", "must be a list of model_name values")
            unknown = [g for g in [group, *targets] if g not in groups]
            if unknown:
                raise fail(f"fallbacks.{group}", f"{', '.join(unknown)} is not a model_name in model_list")
            found[group] = tuple(t for t in targets if t != group)
    return found
