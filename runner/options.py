"""``RunOptions``: everything ``runner run`` is told, parsed once into one typed, frozen value.

The command line parses its flags into a ``RunOptions`` (``RunOptions.from_namespace``) and nothing
past it sees an ``argparse.Namespace``; from the options, ``runner.launch`` builds the run's one call
plan and its executor. A field's default is the flag's default (a test keeps the two the same).
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = ["RunOptions"]


@dataclass(frozen=True)
class RunOptions:
    """The options of one ``runner run`` (see ``runner run --help`` for each)."""

    job: str
    input: Path | None = None
    run_id: str | None = None
    runs_dir: Path = Path("runs")
    jobs_dir: Path = Path("jobs")
    model: str | None = None
    concurrency: int | None = None
    max_attempts: int | None = None
    timeout: float | None = None
    stream: bool = False
    rpm: float | None = None
    tpm: float | None = None
    api_base: str | None = None
    deployments: Path | None = None
    unreachable_after: float = 60.0
    grace: float = 30.0
    workers: int | None = None
    ray_address: str | None = None
    retry_failed: bool = False
    max_cost: float | None = None
    dry_run: bool = False
    no_cache: bool = False
    cache_dir: Path | None = None
    cache_max_size: int | None = None
    no_dedup: bool = False
    allow_changes: bool = False
    progress_interval: float = 10.0
    metrics_interval: float = 5.0
    otel: bool = False
    service_tier: str | None = None
    flex_deadline: float | None = None
    batch_api: bool = False
    no_wait: bool = False
    batch_deadline: float | None = None
    batch_poll: float = 60.0
    batch_size: int | None = None
    log_format: str = "text"
    sender: Literal["auto", "litellm"] = "auto"

    @classmethod
    def from_namespace(cls, args: argparse.Namespace) -> RunOptions:
        """The options of a parsed ``runner run`` command line."""
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})

    @property
    def ray(self) -> bool:
        """Whether the rows go to Ray workers (``--workers N`` with N > 1, or ``--ray-address``)."""
        return (self.workers or 1) > 1 or bool(self.ray_address)
