"""The state of the test server's Anthropic API: how new batches behave, the batches made, what was
received, and the counters tests read and wait on (from any thread, while the handlers run on the
server's loop).

Faults (``configure``, ``AnthropicConfig``; as ``batches_state`` names them): ``held`` (batches end on
``release()``), ``expire_after`` (only the first N requests are answered, the rest expire),
``hold_create`` (the batch is made, the answer to the create call waits for ``release()``), ``delay_s``,
``refuse`` (every create and list call is answered with this HTTP status, nothing made),
``hold_results_after`` (the results of the first N batches are served; any other batch's wait for
``release()``: a client killed while downloading them).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tests.doubles.ledger import Ledger

if TYPE_CHECKING:
    from tests.doubles.server import FakeServer

__all__ = ["AnthropicConfig", "AnthropicLedger", "AnthropicStats", "Batch"]


@dataclass(frozen=True)
class AnthropicConfig:
    """How new batches behave (see the module docstring)."""

    held: bool = False
    expire_after: int | None = None
    hold_create: bool = False
    delay_s: float = 0.0
    refuse: int | None = None
    hold_results_after: int | None = None


@dataclass(frozen=True)
class AnthropicStats:
    """What the Anthropic API saw."""

    online: int  # /v1/messages calls
    batches: int
    lines: int  # batch requests answered (succeeded or errored), over all batches
    statuses: dict[str, str]  # batch id -> processing_status
    parked: int  # create and results answers waiting for release()
    cancelled: int
    by_key: dict[str, int] = field(repr=False)  # attempts per last-user-message text, both lanes


@dataclass
class Batch:
    """One Message Batch: its object as served, its requests, its results once ended, and its events."""

    obj: dict[str, Any]
    requests: list[dict[str, Any]]
    results: list[dict[str, Any]] = field(default_factory=list)
    go: asyncio.Event = field(default_factory=asyncio.Event)  # held: may end
    stop: asyncio.Event = field(default_factory=asyncio.Event)  # cancelled


class AnthropicLedger(Ledger[AnthropicConfig, AnthropicStats, Batch]):
    """Batches, what was received and the counters for one FakeServer, and the test-facing calls on them."""

    API = "Anthropic API"

    def __init__(self, server: FakeServer) -> None:
        super().__init__(server)
        self._online = 0
        self.bodies: list[dict[str, Any]] = []  # every /v1/messages body and batch request's params, as received
        self.headers: list[dict[str, str]] = []  # the headers of every create call
        self.custom_ids: list[str] = []  # every batch request's id

    @staticmethod
    def fresh_config() -> AnthropicConfig:
        return AnthropicConfig()

    def _forget_locked(self) -> None:
        self._online = 0
        self.bodies.clear()
        self.headers.clear()
        self.custom_ids.clear()

    def _stats_locked(self) -> AnthropicStats:
        statuses = {k: b.obj["processing_status"] for k, b in self._batches.items()}
        return AnthropicStats(self._online, len(self._batches), self._lines, statuses, self._parked, self._cancelled,
                              dict(self._by_key))  # fmt: skip
