"""Setting the provider layer up, explicitly, from the entry points (cli, tests, benchmarks).

``configure()`` must run before anything imports litellm: it keeps litellm offline (no price-list
fetch at import, its bundled map is used; no tokenizer look-ups; no loading of a stray ``.env``).
``add_model_hook(prefix, hook)`` lets a front end plug in a provider of its own for model names
with that prefix (the offline ``local/`` models), installed on a model's first use; the provider
layer itself never imports them. Neither imports litellm.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from runner.job.definition import Job

__all__ = ["OFFLINE", "ModelHook", "add_model_hook", "configure", "configured", "hooks", "prepare_model"]

ModelHook = Callable[["Job", str], None]
OFFLINE = {"LITELLM_OFFLINE_MODE": "true", "LITELLM_MODE": "PRODUCTION"}  # what configure() puts in the environment
_hooks: dict[str, ModelHook] = {}


def configure() -> None:
    """Put litellm in offline mode; raises RuntimeError if it was imported before without it."""
    if "litellm" in sys.modules and not configured():
        raise RuntimeError("litellm was imported before runner.provider.setup.configure(): it may have gone online")
    os.environ.update(OFFLINE)


def configured() -> bool:
    """Whether litellm will start offline."""
    return all(os.environ.get(k) == v for k, v in OFFLINE.items())


def add_model_hook(prefix: str, hook: ModelHook) -> None:
    """Call ``hook(job, model)`` before the first request to any model named ``prefix...``."""
    _hooks[prefix] = hook


def hooks() -> dict[str, ModelHook]:
    """The model hooks added so far (a worker process adds the same ones)."""
    return dict(_hooks)


def prepare_model(job: Job, model: str) -> None:
    """Run the hook of ``model``'s prefix, if one was added (a UsageError there stops the run at start-up)."""
    for prefix, hook in _hooks.items():
        if model.startswith(prefix):
            hook(job, model)
