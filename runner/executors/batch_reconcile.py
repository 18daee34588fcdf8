"""A Batch API run started again: which batches it already made, and which rows wait on them.

A crash between creating a batch and recording its id must never pay twice: a chunk's ``intent``
is on disk (with its ids) before the batch is created, and every batch carries the run's token and
its chunk number as metadata, so on the next start an intent with no recorded batch is looked up
in the provider's list (``find``): found, it is recorded; not found, the chunk is void and its rows
are free to go again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from runner.executors.batch_api import BatchApi, Remote
from runner.executors.batch_ledger import Chunk, Ledger
from runner.permits.budget import Budget

__all__ = ["find", "reconcile"]

logger = logging.getLogger(__name__)


async def find(api: BatchApi, ledger: Ledger, chunk: Chunk) -> Remote | None:
    """This run's batch for ``chunk`` in the provider's list (newest first; stops at the run's start)."""
    async for remote in api.listed():
        meta = remote.metadata
        if meta.get("runner_run") == ledger.token and meta.get("runner_chunk") == str(chunk.number):
            return remote
        if remote.created_at is not None and remote.created_at < ledger.started_at - 3600:
            break
    return None


async def reconcile(
    ledger: Ledger, api_for: Callable[[str], BatchApi], budget: Budget | None
) -> tuple[dict[str, int], dict[int, float]]:
    """Intents resolved (found, or void); then every row that a live batch will answer (custom id -> chunk),
    and what those batches hold against --max-cost (chunk -> worst case, held whatever the cap)."""
    for chunk in [c for c in ledger.chunks.values() if c.batch_id is None and c.status != "void"]:
        remote = await find(api_for(chunk.model), ledger, chunk)
        if remote is None:
            await asyncio.to_thread(ledger.void, chunk, "never created")
        else:
            logger.info("batch %s of chunk %d was created before the last run stopped", remote.id, chunk.number)
            await asyncio.to_thread(ledger.created, chunk, remote.id, remote.status, remote.created_at,
                                    remote.expires_at)  # fmt: skip
    owner: dict[str, int] = {}
    reserved: dict[int, float] = {}
    for number in sorted(ledger.chunks):
        chunk = ledger.chunks[number]
        if chunk.batch_id is None or chunk.status == "void":
            continue
        for custom_id in await asyncio.to_thread(ledger.ids, number):
            owner[custom_id] = number
        if budget is not None and not chunk.collected:  # already submitted: held, never refused
            budget.hold(chunk.worst_usd)
            reserved[number] = chunk.worst_usd
    return owner, reserved
