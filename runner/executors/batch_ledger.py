"""The durable record of a run's remote batches: ``batches/ledger.jsonl`` and one ids file per chunk.

A chunk is a set of rows submitted as one remote batch. Its life in the ledger, each line appended
and fsynced before runner relies on it:

    run       the run's token (named in every batch's metadata) and when the first batch went out
    intent    chunk N is about to be created: its ids are already in ``batches/chunk-N.ids``
    created   chunk N is remote batch B (written right after the provider said so)
    status    what the provider last said of B (status, counts), for ``runner status``
    void      chunk N never became a batch (a crash before creating it, a refusal): its rows are free
    settling  B's output is being turned into records (a crash from here on may leave some journaled)
    collected B's output and errors were read; its rows have records or went elsewhere

A crash between creating a batch and writing ``created`` leaves an ``intent``: on the next start
the executor asks the provider's service to find the batch chunk N became (``BatchService.find``:
by its metadata for OpenAI, by its time, size and request ids for Anthropic) before it submits
anything, so nothing is paid for twice. A torn last line is ignored.
This module reads and writes files only (``runner status`` reads it without litellm).
"""

from __future__ import annotations

import os
import secrets
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from runner.clock import iso_now
from runner.executors.batch_seam import Tag

__all__ = ["LEDGER", "Chunk", "Ledger", "by_provider", "read_chunks", "remote_batches", "summary_of"]

FOLDER = "batches"
LEDGER = "ledger.jsonl"
TERMINAL = ("completed", "failed", "expired", "cancelled")


@dataclass
class Chunk:
    """One chunk as the ledger knows it."""

    number: int
    model: str
    rows: int
    worst_usd: float = 0.0
    batch_id: str | None = None
    status: str = "intent"  # intent, then the provider's status; void if it never became a batch
    counts: dict[str, int] = field(default_factory=dict)
    created_at: float | None = None
    expires_at: float | None = None
    collected: bool = False
    settling: bool = False  # its output was being (or was) turned into records: some may be in the journal
    duplicates: int = 0  # answers its output held for rows already answered by another lane (paid for)
    duplicate_cost: float = 0.0
    at: float = 0.0  # when its intent was written
    provider: str = ""  # litellm's name for the model's provider (a ledger from before it was kept: "")

    @property
    def open(self) -> bool:
        """Submitted and not yet read back: its rows wait on it."""
        return self.batch_id is not None and not self.collected and self.status != "void"

    def view(self, now: float) -> dict[str, Any]:
        """What ``runner status`` and the manifest show of it."""
        age = round(now - self.created_at) if self.created_at else None
        return {"chunk": self.number, "batch_id": self.batch_id, "model": self.model, "provider": self.provider,
                "status": self.status, "rows": self.rows, "counts": self.counts, "age_s": age,
                "expires_at": self.expires_at, "collected": self.collected}  # fmt: skip


def _fold(lines: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[int, Chunk]]:
    head: dict[str, Any] = {}
    chunks: dict[int, Chunk] = {}
    for line in lines:
        event, n = line.get("event"), line.get("chunk")
        if event == "run":
            head = line
        elif event == "intent" and isinstance(n, int):
            chunks[n] = Chunk(n, str(line.get("model")), int(line.get("rows") or 0), float(line.get("worst_usd") or 0),
                              at=float(line.get("at") or 0), provider=str(line.get("provider") or ""))  # fmt: skip
        elif isinstance(n, int) and (chunk := chunks.get(n)) is not None:
            if event == "created":
                chunk.batch_id, chunk.status = line.get("batch_id"), line.get("status") or "in_progress"
                chunk.created_at, chunk.expires_at = line.get("created_at"), line.get("expires_at")
            elif event == "status":
                chunk.status, chunk.counts = str(line.get("status")), line.get("counts") or {}
            elif event == "void":
                chunk.status = "void"
            elif event == "settling":
                chunk.settling = True
            elif event == "collected":
                chunk.collected = True
                chunk.duplicates = int(line.get("duplicates") or 0)
                chunk.duplicate_cost = float(line.get("duplicate_cost") or 0.0)
    return head, chunks


def _read(path: Path) -> list[dict[str, Any]]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    lines = []
    for raw in data.splitlines():
        try:
            lines.append(orjson.loads(raw))
        except orjson.JSONDecodeError:
            continue  # a torn last line: the step it describes is redone or reconciled
    return lines


def read_chunks(run_dir: Path) -> list[Chunk]:
    """The run's chunks as the ledger last recorded them ([] for a run that never used --batch-api)."""
    return list(_fold(_read(run_dir / FOLDER / LEDGER))[1].values())


def summary_of(
    ledger: Ledger, waiting: int, counts: Mapping[str, int], deadline_s: float | None, now: float
) -> dict[str, Any]:
    """The manifest's ``batches`` section: the remote batches and what became of their rows."""
    chunks = [c for c in ledger.chunks.values() if c.batch_id]
    deadline = ledger.started_at + deadline_s if deadline_s else None
    return {
        "submitted": len(chunks),
        "by_status": dict(Counter(c.status for c in chunks)),
        "by_provider": by_provider(chunks),
        "rows_waiting": waiting,
        "open": [c.view(now) for c in chunks if c.open],
        "deadline_at": iso_now(deadline) if deadline else None,
        "resubmitted": counts.get("resubmitted", 0),
        "rescued_online": counts.get("rescued_online", 0),
        "refused_enqueued_tokens": counts.get("refused", 0),
        # Over every invocation of the run (the ledger keeps them): answers paid for that came too late.
        "duplicates_ignored": sum(c.duplicates for c in chunks),
        "duplicates_cost_usd": round(sum(c.duplicate_cost for c in chunks), 8),
    }


def by_provider(chunks: list[Chunk]) -> dict[str, dict[str, Any]]:
    """Each provider's batches (a run may batch several): how many, their rows, their statuses."""
    found: dict[str, dict[str, Any]] = {}
    for chunk in sorted(chunks, key=lambda c: c.provider):
        mine = found.setdefault(chunk.provider or "unknown", {"batches": 0, "rows": 0, "by_status": {}})
        mine["batches"] += 1
        mine["rows"] += chunk.rows
        mine["by_status"][chunk.status] = mine["by_status"].get(chunk.status, 0) + 1
    return found


def remote_batches(run_dir: Path, now: float | None = None) -> list[dict[str, Any]]:
    """The run's batches whose output was not read yet, as ``runner status`` shows them (oldest first)."""
    now = time.time() if now is None else now
    return [chunk.view(now) for chunk in read_chunks(run_dir) if chunk.open]


class Ledger:
    """Appends to the ledger (each line fsynced before it returns) and knows every chunk's state."""

    def __init__(self, run_dir: Path) -> None:
        self.folder = run_dir / FOLDER
        self.folder.mkdir(parents=True, exist_ok=True)
        head, self.chunks = _fold(_read(self.folder / LEDGER))
        self._fd = os.open(self.folder / LEDGER, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if not head:
            head = {"event": "run", "token": secrets.token_hex(8), "started_at": time.time()}
            self._append(head)
        self.token: str = head["token"]
        self.started_at: float = float(head["started_at"])

    def close(self) -> None:
        """Close the file (every line is already on disk)."""
        os.close(self._fd)

    def _append(self, line: dict[str, Any]) -> None:
        os.write(self._fd, orjson.dumps(line) + b"\n")
        os.fsync(self._fd)

    def ids_path(self, number: int) -> Path:
        """Where chunk ``number``'s custom ids are kept, one a line."""
        return self.folder / f"chunk-{number:05d}.ids"

    def ids(self, number: int) -> list[str]:
        """Chunk ``number``'s custom ids."""
        return [s.decode() for s in self.ids_path(number).read_bytes().splitlines() if s]

    def intent(self, model: str, ids: list[str], worst_usd: float, provider: str = "") -> Chunk:
        """A new chunk of ``provider``'s ``model`` about to be created: its ids on disk first, then the intent line."""
        number = max(self.chunks, default=0) + 1
        with self.ids_path(number).open("wb") as f:
            f.write(b"".join(i.encode() + b"\n" for i in ids))
            f.flush()
            os.fsync(f.fileno())
        at = time.time()
        self._append({"event": "intent", "chunk": number, "model": model, "provider": provider, "rows": len(ids),
                      "worst_usd": worst_usd, "at": at})  # fmt: skip
        chunk = self.chunks[number] = Chunk(number, model, len(ids), worst_usd, at=at, provider=provider)
        return chunk

    def tag(self, chunk: Chunk) -> Tag:
        """What the chunk's batch carries (or is found again by): this run's token and the chunk."""
        return Tag(self.token, chunk.number, chunk.rows, chunk.at, self.started_at, self.folder.parent.name)

    def created(
        self, chunk: Chunk, batch_id: str, status: str, created_at: float | None, expires: float | None
    ) -> None:
        """The provider made chunk ``chunk`` into batch ``batch_id``."""
        self._append({"event": "created", "chunk": chunk.number, "batch_id": batch_id, "status": status,
                      "created_at": created_at, "expires_at": expires})  # fmt: skip
        chunk.batch_id, chunk.status, chunk.created_at, chunk.expires_at = batch_id, status, created_at, expires

    def status(self, chunk: Chunk, status: str, counts: dict[str, int]) -> None:
        """What the provider says of the chunk's batch now (written only when it changed)."""
        if (status, counts) != (chunk.status, chunk.counts):
            self._append({"event": "status", "chunk": chunk.number, "status": status, "counts": counts})
            chunk.status, chunk.counts = status, counts

    def void(self, chunk: Chunk, why: str) -> None:
        """The chunk never became a batch: its rows are free to go elsewhere."""
        self._append({"event": "void", "chunk": chunk.number, "why": why})
        chunk.status = "void"

    def settling(self, chunk: Chunk) -> None:
        """The chunk's output is about to be turned into records (written once)."""
        if not chunk.settling:
            self._append({"event": "settling", "chunk": chunk.number})
            chunk.settling = True

    def collected(self, chunk: Chunk, duplicates: int = 0, duplicate_cost: float = 0.0) -> None:
        """The batch's output was read; ``duplicates`` answers in it (costing ``duplicate_cost``) came too late."""
        self._append({"event": "collected", "chunk": chunk.number, "duplicates": duplicates,
                      "duplicate_cost": duplicate_cost})  # fmt: skip
        chunk.collected, chunk.duplicates, chunk.duplicate_cost = True, duplicates, duplicate_cost
