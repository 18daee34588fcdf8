"""Reading a finished batch back: its output and error files, line by line, into records and leftovers.

Each answered line whose row is still waiting is settled by the job exactly as an online answer
(``Caller.settle``, ``meta.via: "batch"``) and handed to the outbox at once; a line for a row no one
waits for any more (answered online already, or journaled by an earlier run) is only counted, since
it was paid for, unless that row's record came from this very batch (an earlier invocation killed
while it settled this output journaled part of it: ``settled_before``; those answers were paid once).
Failed lines and rows the batch never reached are returned for the executor's policy (online, or a
new batch), but for a failure the service already classified as the row's own (``error.disposition
== "row"``: Anthropic's ``invalid_request_error``), which is the row's error record at once, as an
online call's 400 would be.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from runner.call.caller import Caller
from runner.clock import iso_now
from runner.errors import FatalProviderError
from runner.executors.base import Outbox
from runner.executors.batch_ledger import Chunk, Ledger
from runner.executors.batch_lines import answer_of, failure_of
from runner.executors.batch_seam import BatchService, Remote, Tag
from runner.provider.failures import Disposition, ProviderFailure
from runner.records import ERRORS, RESULTS, custom_id_at_start, error_record
from runner.rows import Row

__all__ = ["Collected", "download", "journaled_by", "read_output", "settled_before"]

logger = logging.getLogger(__name__)
UNREACHED = ("batch_expired", "batch_cancelled")  # the codes of lines a batch never got to


@dataclass
class Collected:
    """What a batch's output came to, besides the records already handed over."""

    spent: float = 0.0  # what the settled answers cost
    failed: list[Row] = field(default_factory=list)  # lines the provider answered with an error
    leftover: list[Row] = field(default_factory=list)  # rows the batch never reached (or said nothing of)
    duplicates: int = 0  # answers for rows no one waited for any more
    duplicate_cost: float = 0.0


async def download(api: BatchService, remote: Remote) -> list[bytes] | None:
    """A finished batch's output (OpenAI: its output and error files; Anthropic: its results), all of it before
    anything is settled; None if a download still failed after its retries (the batch is read again, whole, at
    the next look: settling the output and then failing on the errors would leave those rows nowhere)."""
    try:
        return await api.download(remote)
    except ProviderFailure as failure:
        if failure.disposition is Disposition.FATAL:
            raise FatalProviderError(f"{failure.code} from the Batch API: {failure.message}") from failure
        logger.warning("could not download batch %s's output (%s); trying again", remote.id, failure.message)
        return None


async def settled_before(ledger: Ledger, chunk: Chunk, remote: Remote) -> set[str]:
    """The rows whose records ``chunk``'s batch already gave (an earlier invocation began settling its output, and
    was killed, or its records were not all journaled yet); then the ledger says this one begins."""
    own = await asyncio.to_thread(journaled_by, ledger.folder.parent, remote.id) if chunk.settling else set()
    await asyncio.to_thread(ledger.settling, chunk)
    return own


def journaled_by(run_dir: Path, batch_id: str) -> set[str]:
    """The custom ids of the journal's records that batch ``batch_id`` answered (``meta.batch_id``)."""
    needle = b'"batch_id":' + orjson.dumps(batch_id)
    found: set[str] = set()
    for name in (RESULTS, ERRORS):
        path = run_dir / name
        if not path.exists():
            continue
        with path.open("rb") as f:
            for raw in f:
                if needle in raw and raw.endswith(b"\n"):  # (a torn last line is not journaled)
                    found.add(custom_id_at_start(raw) or str(orjson.loads(raw).get("custom_id")))
    return found


async def read_output(
    api: BatchService, files: list[bytes], remote: Remote, tag: Tag, ids: list[str], model: str,
    rows: dict[str, Row], caller: Caller, outbox: Outbox, own: set[str] | frozenset[str] = frozenset(),
) -> Collected:  # fmt: skip
    """Settle ``remote``'s answers for ``rows`` (popped as they are claimed) and sort out the rest; ``own``: rows
    this batch answered before (``settled_before``), neither settled again nor counted as duplicates."""
    out = Collected()
    for line in (line for content in files for line in api.lines(content, tag, ids)):
        answer = answer_of(line, model)
        row = rows.pop(str(line.get("custom_id")), None)
        if row is None:
            if answer is not None and str(line.get("custom_id")) not in own:
                out.duplicates += 1
                out.duplicate_cost += answer.cost_usd or 0.0
            continue
        meta: dict[str, object] = {"via": "batch", "batch_id": remote.id, "attempts": 1}
        if answer is None:
            code, message = failure_of(line)
            logger.debug("%s ✗ in batch %s: %s %s", row.custom_id, remote.id, code, message)
            if (line.get("error") or {}).get("disposition") == "row":
                status = (line.get("response") or {}).get("status_code")
                meta = {"line": row.line, **meta, "finished_at": iso_now()}
                outbox.record(error_record(row.custom_id, code, message, meta, status))
                continue
            (out.leftover if code in UNREACHED else out.failed).append(row)
            continue
        outbox.record(await caller.settle(row, answer, {**meta, "cost_usd": answer.cost_usd, "finished_at": iso_now()}))
        out.spent += answer.cost_usd or 0.0
    out.leftover.extend(rows.values())  # rows the batch said nothing about
    rows.clear()
    return out
