"""Reading a finished batch back: its output and error files, line by line, into records and leftovers.

Each answered line whose row is still waiting is settled by the job exactly as an online answer
(``Caller.settle``, ``meta.via: "batch"``) and handed to the outbox at once; a line for a row no one
waits for any more (answered online already, or journaled by an earlier run) is only counted, since
it was paid for. Failed lines and rows the batch never reached are returned for the executor's
policy (online, or a new batch).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import orjson

from runner.call.caller import Caller
from runner.clock import iso_now
from runner.errors import FatalProviderError
from runner.executors.base import Outbox
from runner.executors.batch_api import BatchApi, Remote
from runner.executors.batch_lines import answer_of, failure_of
from runner.provider.failures import Disposition, ProviderFailure
from runner.rows import Row

__all__ = ["Collected", "download", "read_output"]

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


async def download(api: BatchApi, remote: Remote) -> list[bytes] | None:
    """A finished batch's output and error files, both before anything is settled; None if a download still
    failed after its retries (the batch is read again, whole, at the next look: settling the output and then
    failing on the errors would leave those rows nowhere)."""
    try:
        return [await api.content(file_id) for file_id in (remote.output_file_id, remote.error_file_id) if file_id]
    except ProviderFailure as failure:
        if failure.disposition is Disposition.FATAL:
            raise FatalProviderError(f"{failure.code} from the Batch API: {failure.message}") from failure
        logger.warning("could not download batch %s's output (%s); trying again", remote.id, failure.message)
        return None


async def read_output(
    files: list[bytes], remote: Remote, model: str, rows: dict[str, Row], caller: Caller, outbox: Outbox
) -> Collected:
    """Settle ``remote``'s answers for ``rows`` (popped as they are claimed) and sort out the rest."""
    out = Collected()
    for content in files:
        for raw in content.splitlines():
            line = orjson.loads(raw)
            answer = answer_of(line, model)
            row = rows.pop(str(line.get("custom_id")), None)
            if row is None:
                if answer is not None:
                    out.duplicates += 1
                    out.duplicate_cost += answer.cost_usd or 0.0
                continue
            if answer is None:
                code, message = failure_of(line)
                (out.leftover if code in UNREACHED else out.failed).append(row)
                logger.debug("%s ✗ in batch %s: %s %s", row.custom_id, remote.id, code, message)
                continue
            meta = {"via": "batch", "batch_id": remote.id, "attempts": 1, "cost_usd": answer.cost_usd,
                    "finished_at": iso_now()}  # fmt: skip
            outbox.record(await caller.settle(row, answer, meta))
            out.spent += answer.cost_usd or 0.0
    out.leftover.extend(rows.values())  # rows the batch said nothing about
    rows.clear()
    return out
