"""A Batch API run started again: which batches it already made, and which rows wait on them.

A crash between creating a batch and recording its id must never pay twice: a chunk's ``intent``
is on disk (with its ids and its time) before the batch is created, and every batch carries the
run's token and its chunk number (as metadata for OpenAI, in its request ids for Anthropic), so on
the next start an intent with no recorded batch is looked for by the provider's service
(``BatchService.find``): found, it is recorded; not found, the chunk is void and its rows are free
to go again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from runner.errors import FatalProviderError
from runner.executors.batch_ledger import Ledger
from runner.executors.batch_seam import BatchService, Remote, Tag
from runner.permits.budget import Budget
from runner.provider.failures import ProviderFailure

__all__ = ["look_for", "reconcile"]

logger = logging.getLogger(__name__)


async def reconcile(
    ledger: Ledger, api_for: Callable[[str], BatchService], budget: Budget | None
) -> tuple[dict[str, int], dict[int, float]]:
    """Intents resolved (found, or void); then every row that a live batch will answer (custom id -> chunk),
    and what those batches hold against --max-cost (chunk -> worst case, held whatever the cap)."""
    for chunk in [c for c in ledger.chunks.values() if c.batch_id is None and c.status != "void"]:
        remote = await look_for(api_for(chunk.model), ledger.tag(chunk))
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


async def look_for(api: BatchService, tag: Tag, failed: ProviderFailure | None = None) -> Remote | None:
    """The batch ``tag``'s chunk became (None: it never was), after its create ``failed`` or a crash. A provider
    that can't say (unreachable, its list failing) stops the run: submitting the rows again could pay twice,
    and the chunk's intent stays in the ledger for the next start to look for it again."""
    try:
        return await api.find(tag)
    except ProviderFailure as lost:
        why = f"creating it failed ({failed.code}: {failed.message}), then " if failed else ""
        raise FatalProviderError(
            f"chunk {tag.number}'s batch at {api.provider}: {why}looking for it failed ({lost.code}: {lost.message}); "
            "nothing more was submitted; run the same command again once the Batch API answers: it looks for "
            "the batch first, so nothing is paid twice"
        ) from lost
