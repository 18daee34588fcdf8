"""The seam between the batch executor and one provider's Batch API, as plain data and one protocol.

    BatchService                what the executor calls, whatever the provider
        BatchApi                OpenAI's format through litellm (openai, azure, hosted_vllm, litellm_proxy)
        AnthropicBatches        Anthropic's Message Batches through the anthropic SDK

A service turns a request into a line of its own format (``line``), a chunk of lines into a remote
batch (``submit``), and a finished batch (``download``) back into OpenAI-shaped output lines named
by the rows' own ids (``lines``): the executor, the ledger and the collector never see a
provider's format.
``find`` is the crash-safety half: the batch a chunk became, when runner died before recording it.
Nothing here imports litellm or an SDK (``runner status`` reads a ledger with it).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["BatchService", "Remote", "Tag"]


@dataclass(frozen=True)
class Remote:
    """A remote batch as the provider describes it, as plain data (OpenAI's vocabulary of statuses)."""

    id: str
    status: str
    counts: dict[str, int]
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: float | None = None
    expires_at: float | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    error_codes: tuple[str, ...] = ()
    error_message: str = ""

    def progress(self, now: float) -> str:
        """How far it got, for the log: ``in_progress, 3 of 10 done, 0 failed, 23.5h left in its window``."""
        done, total, failed = (self.counts.get(k, 0) for k in ("completed", "total", "failed"))
        left = (self.expires_at or 0) - now
        window = f", {left / 3600:.1f}h left in its window" if self.expires_at and left > 0 else ""
        return f"{self.status}, {done} of {total} done, {failed} failed{window}"


@dataclass(frozen=True)
class Tag:
    """Which run and chunk a batch holds: what lets a batch be found again after a crash."""

    token: str  # the run's token (the ledger's)
    number: int  # the chunk
    rows: int  # requests in it
    since: float  # when its intent was written: the batch, if it was made, was made after it
    started_at: float  # the run's first submission
    run_name: str = ""  # the run directory's name, for a person reading the provider's console

    @property
    def metadata(self) -> dict[str, str]:
        """As OpenAI's batch metadata."""
        return {"runner_run": self.token, "runner_chunk": str(self.number), "runner_dir": self.run_name}


class BatchService(Protocol):
    """One provider's Batch API (see the module docstring); every failure is a ``ProviderFailure``."""

    @property
    def provider(self) -> str:
        """litellm's name for the provider (``openai``, ``anthropic``)."""
        ...

    def line(self, custom_id: str, request: dict[str, Any]) -> bytes | None:
        """``request`` as one line of a batch (None: it can't go in one; it goes online)."""
        ...

    async def submit(self, tag: Tag, lines: list[bytes], window: str, endpoint: str) -> Remote:
        """Make the lines one remote batch (never retried blindly: it could pay twice)."""
        ...

    async def find(self, tag: Tag) -> Remote | None:
        """The batch ``tag``'s chunk became, if it was created (None: it never was)."""
        ...

    async def retrieve(self, batch_id: str) -> Remote:
        """The batch as it is now."""
        ...

    async def download(self, remote: Remote) -> list[bytes]:
        """A finished batch's output, as downloaded (read whole before any row is settled)."""
        ...

    def lines(self, content: bytes, tag: Tag, ids: list[str]) -> Iterator[dict[str, Any]]:
        """Downloaded output as lines in OpenAI's output shape, ``custom_id`` the row's own (``ids``: the chunk's)."""
        ...

    async def cancel(self, batch_id: str) -> Remote:
        """Ask the provider to cancel it (it stops at some point and keeps what it finished)."""
        ...
