"""The state of the test server's Files and Batch API: how new batches behave, the files and batches
made, and the counters tests read and wait on (from any thread, while the handlers run on the server's loop).

Faults, set with ``FakeBatches.configure`` (``BatchConfig``):

    delay_s               a batch finishes this long after it is created (0: at once)
    held                  batches wait for ``release()`` before finishing (tests wait on events)
    expire_after          only the first N lines are answered, then the batch expires
    fail_batch            every new batch fails as a whole (status failed, no output)
    enqueued_token_limit  tokens of this server's unfinished batches; a batch that would pass it is
                          failed at once with ``token_limit_exceeded``, as OpenAI does
    cancel_too_late       a cancel is accepted but the batch finishes anyway, answering every line
    hold_create           a batch is created, then the answer to the create call waits for ``release()``
                          (a client killed meanwhile never learns the batch's id)
    hold_content_after    file downloads after the first N wait for ``release()`` (a client killed
                          while downloading)
    finish_before_cancel  a cancel arrives just as the batch finishes: the batch completes, answering
                          every line, and the cancel is refused ("already in terminal status 'completed'")
    flaky_reads           the first N list and download calls are answered 500 (transient errors)
    slow_cancel           a cancel is accepted (status cancelling) but the batch stays cancelling until
                          ``release()``, then is cancelled with every line answered (it had done them all)
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tests.doubles.batches_wire import new_id
from tests.doubles.ledger import Ledger

if TYPE_CHECKING:
    from tests.doubles.server import FakeServer

__all__ = ["TERMINAL", "Batch", "BatchConfig", "BatchLedger", "BatchStats"]

TERMINAL = ("completed", "failed", "expired", "cancelled")


@dataclass(frozen=True)
class BatchConfig:
    """How new batches behave (see the module docstring)."""

    delay_s: float = 0.0
    held: bool = False
    expire_after: int | None = None
    fail_batch: bool = False
    enqueued_token_limit: int | None = None
    cancel_too_late: bool = False
    hold_create: bool = False
    hold_content_after: int | None = None
    finish_before_cancel: bool = False
    flaky_reads: int = 0
    slow_cancel: bool = False


@dataclass(frozen=True)
class BatchStats:
    """What the Batch API saw."""

    files: int
    batches: int
    lines: int  # request lines answered (output or error), over all batches
    by_key: dict[str, int] = field(repr=False)  # batch attempts per last-user-message text
    statuses: dict[str, str]  # batch id -> status
    refused: int  # batches failed for the enqueued-token limit
    cancelled: int
    parked: int = 0  # create or download answers waiting for release()
    downloads: int = 0


@dataclass
class Batch:
    """One batch: its Batch object as served, its request lines, and the events its work waits on."""

    obj: dict[str, Any]
    lines: list[dict[str, Any]]
    tokens: int
    done: asyncio.Event = field(default_factory=asyncio.Event)  # cancelled (or finished)
    go: asyncio.Event = field(default_factory=asyncio.Event)  # a held batch may finish
    finished: asyncio.Event = field(default_factory=asyncio.Event)  # its output is written


class BatchLedger(Ledger[BatchConfig, BatchStats, Batch]):
    """Files, batches and counters for one FakeServer, and the test-facing calls on them."""

    HOLDS = ("held", "hold_create", "hold_content_after")

    def __init__(self, server: FakeServer) -> None:
        super().__init__(server)
        self.files: dict[str, tuple[str, str, bytes]] = {}  # id -> (purpose, filename, content)
        self._refused = self._downloads = self._reads = 0

    @staticmethod
    def fresh_config() -> BatchConfig:
        return BatchConfig()

    # -- test-facing, from any thread ----------------------------------------------------

    def configure(self, **changes: Any) -> None:
        """Change how new batches behave (BatchConfig fields); ``held=False`` releases too."""
        super().configure(**changes)
        if changes.get("held") is False:
            self.release()

    def release(self, batches: int | None = None) -> None:
        """Let every held batch finish and every parked answer go, and hold no more; with ``batches``,
        only let that many of the oldest held batches finish (and keep holding)."""
        if batches is None:
            super().release()
            return
        with self._lock:
            held = [b for b in self._batches.values() if b.obj["status"] in ("in_progress", "cancelling")
                    and not b.go.is_set()]  # fmt: skip
            self._open(b.go for b in held[:batches])

    def _forget_locked(self) -> None:
        self.files.clear()
        self._refused = self._downloads = self._reads = 0

    def uploaded(self) -> list[bytes]:
        """The content of every file uploaded for a batch."""
        with self._lock:
            return [content for purpose, _, content in self.files.values() if purpose == "batch"]

    def _stats_locked(self) -> BatchStats:
        statuses = {k: b.obj["status"] for k, b in self._batches.items()}
        files = len(self.files)
        return BatchStats(files, len(self._batches), self._lines, dict(self._by_key), statuses, self._refused,
                          self._cancelled, self._parked, self._downloads)  # fmt: skip

    # -- for the handlers, on the server's loop ------------------------------------------

    def _count(self, key: str) -> int:
        """One more batch attempt of the message ``key``; how many there have been."""
        with self._lock:
            self._by_key[key] += 1
            return self._by_key[key]

    def _flaky(self) -> bool:
        """Whether this read is one of the ``flaky_reads`` first ones (answered 500)."""
        with self._lock:
            self._reads += 1
            return self._reads <= self.config.flaky_reads

    def _save(self, records: list[dict[str, Any]], batch_id: str, what: str) -> str | None:
        """Store a batch's output or error file (under the lock); its id, or None with no records."""
        if not records:
            return None
        file_id = new_id("file-")
        content = b"".join(json.dumps(r).encode() + b"\n" for r in records)
        self.files[file_id] = ("batch_output", f"{batch_id}_{what}.jsonl", content)
        return file_id
