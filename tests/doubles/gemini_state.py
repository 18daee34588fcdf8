"""The state of the test server's Gemini API: how new batches behave, the batches and files made, what
was received, and the counters tests read and wait on (from any thread, while the handlers run on the
server's loop).

Faults (``configure``, ``GeminiConfig``): ``held`` (batches end on ``release()``), ``expire_after`` (only
the first N requests are answered, the batch ends EXPIRED and says nothing of the rest), ``hold_create``
(the batch is made, the answer to the create call waits for ``release()``), ``hold_results_after`` (the
output of the first N ended batches is served; a read of any other ended batch, which carries its
responses, or of its results file waits for ``release()``: a client killed while downloading them).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tests.doubles.ledger import Ledger

if TYPE_CHECKING:
    from tests.doubles.server import FakeServer

__all__ = ["Batch", "GeminiConfig", "GeminiLedger", "GeminiStats"]


@dataclass(frozen=True)
class GeminiConfig:
    """How new batches behave (see the module docstring)."""

    held: bool = False
    expire_after: int | None = None
    hold_create: bool = False
    hold_results_after: int | None = None


@dataclass(frozen=True)
class GeminiStats:
    """What the Gemini API saw."""

    online: int  # :generateContent calls
    batches: int
    lines: int  # batch requests answered (response or error), over all batches
    states: dict[str, str]  # batch name -> state
    parked: int  # create and output answers waiting for release()
    cancelled: int
    by_key: dict[str, int] = field(repr=False)  # attempts per last-user-message text, both lanes


@dataclass
class Batch:
    """One batch: its long-running operation as served, its requests, where they came from, its events."""

    op: dict[str, Any]
    requests: list[dict[str, Any]]
    from_file: bool = False
    go: asyncio.Event = field(default_factory=asyncio.Event)  # held: may end
    stop: asyncio.Event = field(default_factory=asyncio.Event)  # cancelled


class GeminiLedger(Ledger[GeminiConfig, GeminiStats, Batch]):
    """Batches, files, what was received and the counters for one FakeServer, and the test-facing calls."""

    API = "Gemini API"

    def __init__(self, server: FakeServer) -> None:
        super().__init__(server)
        self._online = 0
        self.bodies: list[dict[str, Any]] = []  # every generateContent body and batch request, as received
        self.display_names: list[str] = []
        self.keys: list[str] = []  # every batch request's metadata.key
        self.files: dict[str, bytes] = {}  # uploaded and result files by name
        self._sessions: dict[str, str] = {}  # upload id -> the file's display name

    @staticmethod
    def fresh_config() -> GeminiConfig:
        return GeminiConfig()

    def _forget_locked(self) -> None:
        self._online = 0
        self.bodies.clear()
        self.display_names.clear()
        self.keys.clear()
        self.files.clear()
        self._sessions.clear()

    def _stats_locked(self) -> GeminiStats:
        states = {k: b.op["metadata"]["state"] for k, b in self._batches.items()}
        return GeminiStats(self._online, len(self._batches), self._lines, states, self._parked, self._cancelled,
                           dict(self._by_key))  # fmt: skip
