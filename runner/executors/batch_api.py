"""The providers' Batch APIs through litellm: upload, create, retrieve, list, download, cancel.

Every call goes through ``runner.provider.failures.mapped`` (failures classified once, messages
redacted) with ``max_retries=0``: a create that is retried blindly could pay twice, so the executor
decides what to do after a failure (look the batch up by its metadata first). The key is the
provider's environment variable, as for online calls; it travels in the call's auth header, never
in an uploaded file.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import litellm
import orjson

from runner.call.retry import RetryPolicy
from runner.errors import FatalProviderError
from runner.executors.batch_lines import line_of
from runner.executors.batch_seam import Remote, Tag
from runner.provider.failures import Disposition, ProviderFailure, mapped

T = TypeVar("T")
# Reads (list, download) are safe to repeat: a transient 500 or 429 is retried with the one back-off,
# as a failed status check is polled again; creating and cancelling are never retried blindly.
READS = RetryPolicy(max_attempts=6, base_wait=1.0, max_wait=30.0)

__all__ = ["BatchApi", "Remote", "remote_of", "stop_if_hopeless"]


def remote_of(batch: Any) -> Remote:
    """From litellm's (the openai SDK's) Batch object."""
    counts = getattr(batch, "request_counts", None)
    errors = getattr(getattr(batch, "errors", None), "data", None) or []
    return Remote(
        id=batch.id,
        status=str(batch.status),
        counts={k: int(getattr(counts, k, 0) or 0) for k in ("total", "completed", "failed")},
        output_file_id=getattr(batch, "output_file_id", None),
        error_file_id=getattr(batch, "error_file_id", None),
        created_at=getattr(batch, "created_at", None),
        expires_at=getattr(batch, "expires_at", None),
        metadata=dict(getattr(batch, "metadata", None) or {}),
        error_codes=tuple(str(getattr(e, "code", "")) for e in errors),
        error_message="; ".join(str(getattr(e, "message", "")) for e in errors),
    )


@dataclass(frozen=True)
class BatchApi:
    """One provider's Batch API in OpenAI's format, at ``api_base`` if given (a ``BatchService``)."""

    provider: str = "openai"
    api_base: str | None = None
    api_key: str | None = None  # only the placeholder for a keyless --api-base; else the environment's
    timeout: float = 600.0
    reads: RetryPolicy = READS

    async def _read(self, call: Callable[[], Awaitable[T]]) -> T:
        """``call()`` (a list, a download), retried while it fails transiently; its last failure if it never works."""

        async def once() -> T:
            with mapped():
                return await call()

        return await self.reads.value(once)

    def _args(self) -> dict[str, Any]:
        # A connection per call, closed after it: litellm 1.110 makes a new client (and pool) for every
        # file or batch call and never closes it, so a kept-alive connection would leak a socket.
        args: dict[str, Any] = {"custom_llm_provider": self.provider, "max_retries": 0, "timeout": self.timeout,
                                "extra_headers": {"Connection": "close"}}  # fmt: skip
        if self.api_base:
            args["api_base"] = self.api_base
        if self.api_key:
            args["api_key"] = self.api_key
        return args

    def line(self, custom_id: str, request: dict[str, Any]) -> bytes | None:
        """One line of the input file (the request as online, less the client's own settings)."""
        return line_of(custom_id, request)

    async def submit(self, tag: Tag, lines: list[bytes], window: str, endpoint: str) -> Remote:
        """Upload the lines as one file, then create a batch of it carrying ``tag`` as metadata."""
        file_id = await self.upload(f"runner-{tag.token}-{tag.number:05d}.jsonl", b"".join(lines))
        return await self.create(file_id, tag.metadata, window, endpoint)

    async def find(self, tag: Tag) -> Remote | None:
        """The batch whose metadata names ``tag``'s run and chunk (newest first; stops an hour before the run)."""
        async with contextlib.aclosing(self.listed()) as listed:
            async for remote in listed:
                meta = remote.metadata
                if meta.get("runner_run") == tag.token and meta.get("runner_chunk") == str(tag.number):
                    return remote
                if remote.created_at is not None and remote.created_at < tag.started_at - 3600:
                    break
        return None

    async def download(self, remote: Remote) -> list[bytes]:
        """The output file's bytes, then the error file's."""
        return [await self.content(file_id) for file_id in (remote.output_file_id, remote.error_file_id) if file_id]

    def lines(self, content: bytes, tag: Tag, ids: list[str]) -> Iterator[dict[str, Any]]:
        """A downloaded file's lines (already in OpenAI's shape, named by the rows' ids)."""
        return (orjson.loads(raw) for raw in content.splitlines() if raw.strip())

    async def upload(self, name: str, content: bytes) -> str:
        """Upload a JSONL file of requests; its file id."""
        with mapped():
            uploaded = await litellm.acreate_file(
                file=(name, content, "application/jsonl"), purpose="batch", **self._args()
            )
        return str(uploaded.id)

    async def create(
        self, file_id: str, metadata: dict[str, str], window: str = "24h", endpoint: str = "/v1/chat/completions"
    ) -> Remote:
        """Create a batch of the uploaded file's requests, all to ``endpoint`` (one endpoint per batch)."""
        with mapped():
            batch = await litellm.acreate_batch(
                completion_window=window,
                endpoint=endpoint,
                input_file_id=file_id,
                metadata=metadata,
                **self._args(),
            )
        return remote_of(batch)

    async def retrieve(self, batch_id: str) -> Remote:
        """The batch as it is now."""
        with mapped():
            # litellm's own logging would download a finished batch's whole output to price it, on every look.
            quiet = {"batch_ignore_default_logging": True}
            batch = await litellm.aretrieve_batch(batch_id=batch_id, litellm_metadata=quiet, **self._args())
        return remote_of(batch)

    async def listed(self, page: int = 100) -> AsyncGenerator[Remote, None]:
        """The provider's batches, newest first, page by page."""
        after: str | None = None
        while True:
            listing = await self._read(
                functools.partial(litellm.alist_batches, after=after, limit=page, **self._args())
            )
            items = [remote_of(b) for b in getattr(listing, "data", None) or []]
            for item in items:
                yield item
            if not items or not getattr(listing, "has_more", False):
                return
            after = items[-1].id

    async def content(self, file_id: str) -> bytes:
        """A file's bytes (a batch's output or error file)."""
        got = await self._read(lambda: litellm.afile_content(file_id=file_id, **self._args()))
        return bytes(got.content)

    async def cancel(self, batch_id: str) -> Remote:
        """Ask the provider to cancel the batch (it stops at some point and keeps what it finished)."""
        with mapped():
            batch = await litellm.acancel_batch(batch_id=batch_id, **self._args())
        return remote_of(batch)


def stop_if_hopeless(failure: ProviderFailure, failed: int, most: int) -> None:
    """Raise FatalProviderError when a failed submission means the run must stop: a fatal failure (a key, a
    model), or ``most`` failed in a row (``failed`` so far); else the rows are submitted again later."""
    if failure.disposition is Disposition.FATAL:
        raise FatalProviderError(
            f"{failure.code} from the Batch API: {failure.message} — stopped the run; fix this and run the "
            "same command again to resume"
        ) from failure
    if failed >= most:
        raise FatalProviderError(
            f"the Batch API refused {failed} submissions in a row (last: {failure.code}: "
            f"{failure.message}); run the same command again to resume"
        ) from failure
