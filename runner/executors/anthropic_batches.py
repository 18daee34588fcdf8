"""Anthropic's Message Batches through the anthropic SDK, as a ``BatchService`` (litellm 1.110 can't create them).

The SDK is imported on first use. Its client points at ``api_base`` when given and takes the key
from ``ANTHROPIC_API_KEY`` (never written anywhere); ``max_retries=0``: a create retried blindly
could pay twice, so reads alone are retried, with the one back-off. Statuses are put in OpenAI's
vocabulary: in_progress, cancelling, then (ended) cancelled if a cancel was asked, expired if some
requests expired, else completed.

Crash-safety without metadata (``find``): a chunk's intent is journaled, with its time and its
number of requests, before the batch is created, and every request id starts with the run's token
and the chunk (``anthropic_lines.custom_id``). A batch the chunk may have become was created after
the intent (less ``SKEW`` for the clocks) with that many requests. An ended one is it if its
results' ids carry the chunk's prefix; a single one still running is taken as it (its results
confirm it: a stranger's answers are ignored and the rows go again); two or more still running
can't be told apart yet, so the run stops without submitting anything, to be run again once they end.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from runner.call.retry import RetryPolicy
from runner.errors import FatalProviderError
from runner.executors.anthropic_lines import custom_id, params_line, prefix, read_id, result_line
from runner.executors.batch_api import READS
from runner.executors.batch_seam import Remote, Tag
from runner.provider.failures import Disposition, ProviderFailure, classify, from_status
from runner.redact import redact

if TYPE_CHECKING:
    from anthropic import AsyncAnthropic

__all__ = ["AnthropicBatches"]

T = TypeVar("T")
SKEW = 300.0  # seconds: how far the provider's clock and ours may disagree


@dataclass(frozen=True)
class AnthropicBatches:
    """Message Batches at ``api_base`` (default Anthropic's), a ``BatchService``."""

    api_base: str | None = None
    api_key: str | None = None  # only the placeholder for a keyless --api-base; else ANTHROPIC_API_KEY
    timeout: float = 600.0
    reads: RetryPolicy = READS

    @property
    def provider(self) -> str:
        """litellm's name for it."""
        return "anthropic"

    def line(self, custom_id: str, request: dict[str, Any]) -> bytes | None:
        """The request's Messages body (see ``anthropic_lines``); its id is given at ``submit``."""
        return params_line(request)

    async def submit(self, tag: Tag, lines: list[bytes], window: str, endpoint: str) -> Remote:
        """One Message Batch of the lines, request ``i`` named ``custom_id(tag, i)``."""
        requests, betas = [], set()
        for index, raw in enumerate(lines):
            line = orjson.loads(raw)
            requests.append({"custom_id": custom_id(tag, index, line["json"]), "params": line["params"]})
            betas.update(line["betas"])
        headers = {"anthropic-beta": ",".join(sorted(betas))} if betas else None
        with _mapped():
            async with self._client() as client:
                batch = await client.messages.batches.create(requests=requests, extra_headers=headers)  # type: ignore[arg-type]
        return _remote(batch)

    async def find(self, tag: Tag) -> Remote | None:
        """The batch ``tag``'s chunk became, by its time, its size and its results' ids (module docstring)."""
        running: list[Remote] = []
        async with contextlib.aclosing(self.listed()) as listed:
            async for remote in listed:
                if remote.created_at is not None and remote.created_at < tag.since - SKEW:
                    break  # newest first: the rest is older than the intent
                if remote.counts.get("total") != tag.rows:
                    continue
                if remote.output_file_id is None:
                    running.append(remote)
                elif await self._first_id_is(remote, tag):
                    return remote
        if len(running) > 1:
            ids = ", ".join(r.id for r in running)
            raise FatalProviderError(
                f"chunk {tag.number} of this run may be any of the running Message Batches {ids} (a crash came "
                "between creating it and recording it); run the same command again once they have ended: "
                "nothing is submitted twice"
            )
        return running[0] if running else None

    async def retrieve(self, batch_id: str) -> Remote:
        """The batch as it is now."""
        with _mapped():
            async with self._client() as client:
                return _remote(await client.messages.batches.retrieve(batch_id))

    async def listed(self, page: int = 100) -> AsyncGenerator[Remote, None]:
        """The account's batches, newest first, page by page."""
        after: str | None = None
        async with self._client() as client:
            while True:
                args = {"limit": page, **({"after_id": after} if after else {})}
                listing = await self._read(lambda: client.messages.batches.list(**args))  # type: ignore[arg-type]  # noqa: B023
                for batch in listing.data:
                    yield _remote(batch)
                if not listing.data or not listing.has_more or not listing.last_id:
                    return
                after = listing.last_id

    async def download(self, remote: Remote) -> list[bytes]:
        """The batch's results, as the JSONL Anthropic serves (in no particular order)."""
        async with self._client() as client:
            raw = await self._read(lambda: client.messages.batches.with_raw_response.results(remote.id))
            with _mapped():
                return [await raw.read()]

    def lines(self, content: bytes, tag: Tag, ids: list[str]) -> Iterator[dict[str, Any]]:
        """The results as OpenAI's output lines named by the rows' ids; another run's requests are left out."""
        for raw in content.splitlines():
            if not raw.strip():
                continue
            item = orjson.loads(raw)
            named = read_id(tag, str(item.get("custom_id")))
            if named is not None and named[0] < len(ids):
                yield result_line(ids[named[0]], item.get("result") or {}, named[1])

    async def cancel(self, batch_id: str) -> Remote:
        """Ask Anthropic to cancel it (it ends, keeping what it finished)."""
        with _mapped():
            async with self._client() as client:
                return _remote(await client.messages.batches.cancel(batch_id))

    async def _first_id_is(self, remote: Remote, tag: Tag) -> bool:
        """Whether an ended batch's first result is a request of ``tag``'s chunk (only that line is read)."""
        async with self._client() as client:
            raw = await self._read(lambda: client.messages.batches.with_raw_response.results(remote.id))
            with _mapped():
                async for line in raw.iter_lines():
                    if line.strip():
                        return str(orjson.loads(line).get("custom_id", "")).startswith(prefix(tag))
        return False

    def _client(self) -> AsyncAnthropic:
        """A client for one call (closed after it, so no pool outlives the loop that made it)."""
        from anthropic import AsyncAnthropic

        return AsyncAnthropic(api_key=self.api_key, base_url=self.api_base, max_retries=0, timeout=self.timeout)

    async def _read(self, call: Callable[[], Awaitable[T]]) -> T:
        """``call()`` retried while it fails transiently; its last failure if it never works."""

        async def once() -> T:
            with _mapped():
                return await call()

        return await self.reads.value(once)


@contextlib.contextmanager
def _mapped() -> Iterator[None]:
    """The SDK's exceptions as runner's ``ProviderFailure``, classified as online calls are."""
    import anthropic

    try:
        yield
    except ProviderFailure:
        raise
    except anthropic.APIStatusError as exc:
        raise from_status(exc.status_code, redact(str(exc))[:1000], dict(exc.response.headers)) from exc
    except anthropic.APITimeoutError as exc:
        raise ProviderFailure(Disposition.RETRY, "timeout", redact(str(exc))) from exc
    except anthropic.APIConnectionError as exc:
        raise ProviderFailure(Disposition.RETRY, "connection_error", redact(str(exc))) from exc
    except anthropic.AnthropicError as exc:
        raise classify(exc) from exc


def _remote(batch: Any) -> Remote:
    """From the SDK's MessageBatch, in OpenAI's vocabulary; ``output_file_id`` is the batch's own id once ended."""
    counts = batch.request_counts
    failed = int(counts.errored) + int(counts.canceled) + int(counts.expired)
    total = int(counts.processing) + int(counts.succeeded) + failed
    ended = batch.processing_status == "ended"
    if ended:
        status = "cancelled" if batch.cancel_initiated_at else "expired" if counts.expired else "completed"
    else:
        status = "cancelling" if batch.processing_status == "canceling" else "in_progress"
    return Remote(
        id=batch.id,
        status=status,
        counts={"total": total, "completed": int(counts.succeeded), "failed": failed},
        output_file_id=batch.id if ended else None,
        created_at=batch.created_at.timestamp(),
        expires_at=batch.expires_at.timestamp() if batch.expires_at else None,
    )
