"""Gemini's Batch Mode (Developer API) over its REST endpoints with aiohttp, as a ``BatchService``.

    POST {base}/models/{model}:batchGenerateContent   create (inline requests), answers a long-running operation
    GET  {base}/batches/{id}                          the operation; ``metadata`` is the batch, ``response`` its output
    GET  {base}/batches?pageSize=&pageToken=          the account's batches (``operations``, ``nextPageToken``)
    POST {base}/batches/{id}:cancel                   ask it to stop
    POST {origin}/upload{path}/files                  a resumable upload (start, then upload and finalize)
    GET  {base}/{file}:download?alt=media             a result file (``responsesFile``)

``base`` is ``--api-base`` as litellm's online ``gemini/`` call takes it (it posts to
``{base}/models/{model}:generateContent``), Google's ``.../v1beta`` by default. The key is
``GOOGLE_API_KEY`` (else ``GEMINI_API_KEY``, litellm's order), sent in the ``x-goog-api-key`` header, never in a URL.
Requests go inline up to 20 MB a create call, else as a JSONL file (``{"key", "request"}`` a line)
uploaded first, whose results come back as a file too. The google-genai SDK is not used: every
release that creates Developer-API batches requires tenacity<9.2.0, and runner pins 9.2.1; these
are a few small calls, paths and headers as the SDK (3.6.1) sends them. Creating and cancelling are never
retried blindly (a create retried could pay twice); reads are retried with the one back-off.

States in OpenAI's vocabulary: ``BATCH_STATE_PENDING``/``RUNNING`` in_progress, ``SUCCEEDED``
completed, ``FAILED`` failed, ``CANCELLED`` cancelled, ``EXPIRED`` expired (the SDK's ``JOB_STATE_*``
names are read too). Crash safety: the batch's ``displayName`` is ``runner-<run token>-<chunk>``, so
``find`` is an exact match in the list; each request's ``metadata.key`` names its run, chunk and place
(``batch_ids``), so a result is matched back to its row whatever the order.
"""

from __future__ import annotations

import contextlib
import re
import urllib.parse
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiohttp
import orjson

from runner.call.retry import RetryPolicy
from runner.executors.batch_api import READS
from runner.executors.batch_ids import custom_id, read_id
from runner.executors.batch_seam import Remote, Tag
from runner.executors.gemini_lines import request_line, result_line
from runner.provider.failures import Disposition, ProviderFailure, from_status
from runner.redact import redact

__all__ = ["DEFAULT_BASE", "GeminiBatches", "display_name"]

DEFAULT_BASE = "https://generativelanguage.googleapis.com/v1beta"
INLINE = 20_000_000  # bytes: the most a create call may carry inline
WINDOW_S = 48 * 3600.0  # a batch still pending or running after 48 hours expires
COUNTS = {"total": "requestCount", "completed": "successfulRequestCount", "failed": "failedRequestCount"}
STATUS = {"SUCCEEDED": "completed", "FAILED": "failed", "CANCELLED": "cancelled", "EXPIRED": "expired"}


def display_name(tag: Tag) -> str:
    """The batch's ``displayName``: the run's token and the chunk (and the run directory, for a person)."""
    return f"runner-{tag.token}-{tag.number:05d}" + (f" {tag.run_name}" if tag.run_name else "")


@dataclass(frozen=True)
class GeminiBatches:
    """Gemini's batches at ``api_base`` (default Google's), a ``BatchService``."""

    api_base: str | None = None
    api_key: str | None = None  # else GOOGLE_API_KEY / GEMINI_API_KEY, as litellm reads them
    timeout: float = 600.0
    reads: RetryPolicy = READS
    inline: int = INLINE  # a batch whose requests take more goes as an uploaded file

    @property
    def provider(self) -> str:
        """litellm's name for it."""
        return "gemini"

    def line(self, custom_id: str, request: dict[str, Any]) -> bytes | None:
        """The request's GenerateContentRequest body (see ``gemini_lines``); its key is given at ``submit``."""
        return request_line(request)

    async def submit(self, tag: Tag, lines: list[bytes], window: str, endpoint: str) -> Remote:
        """One batch of the lines (inline, or a file beyond ``inline`` bytes), request ``i`` keyed
        ``custom_id(tag, i)``, named ``display_name(tag)``."""
        parsed = [orjson.loads(raw) for raw in lines]
        requests = [{"request": p["request"], "metadata": {"key": custom_id(tag, i)}} for i, p in enumerate(parsed)]
        source: dict[str, Any] = {"requests": {"requests": requests}}
        if sum(len(raw) for raw in lines) + 100 * len(lines) > self.inline:
            content = b"".join(orjson.dumps({"key": r["metadata"]["key"], "request": r["request"]}) + b"\n"
                               for r in requests)  # fmt: skip
            source = {"fileName": await self.upload(display_name(tag).split(" ")[0] + ".jsonl", content)}
        batch = {"displayName": display_name(tag), "inputConfig": source}
        model = urllib.parse.quote(parsed[0]["model"], safe="-._")
        return _remote(await self._json("POST", f"/models/{model}:batchGenerateContent", {"batch": batch}))

    async def find(self, tag: Tag) -> Remote | None:
        """The batch whose display name is ``tag``'s run and chunk (None: it was never created)."""
        name = display_name(tag).split(" ")[0]
        async with contextlib.aclosing(self.listed()) as listed:
            async for remote in listed:
                if remote.metadata.get("display_name", "").split(" ")[0] == name:
                    return remote
        return None

    async def retrieve(self, batch_id: str) -> Remote:
        """The batch as it is now."""
        return _remote(await self._json("GET", f"/{batch_id}"))

    async def listed(self, page: int = 100) -> AsyncGenerator[Remote, None]:
        """The account's batches, page by page."""
        token = ""
        while True:
            query = urllib.parse.urlencode({"pageSize": page, **({"pageToken": token} if token else {})})
            listing = await self._read("GET", f"/batches?{query}")
            for operation in listing.get("operations") or []:
                yield _remote(operation)
            token = listing.get("nextPageToken") or ""
            if not token or not listing.get("operations"):
                return

    async def download(self, remote: Remote) -> list[bytes]:
        """The results as JSONL (``model``, ``key``, then ``response`` or ``error``), inline or from its file."""
        operation = await self._read("GET", f"/{remote.id}")
        model = str((operation.get("metadata") or {}).get("model") or "").removeprefix("models/")
        output = operation.get("response") or (operation.get("metadata") or {}).get("output") or {}
        if file := output.get("responsesFile"):
            content = await self.reads_bytes(f"{self._base}/{file}:download?alt=media")
            items = [orjson.loads(raw) for raw in content.splitlines() if raw.strip()]
        else:
            items = [{**i, "key": (i.get("metadata") or {}).get("key")} for i in _inlined(output)]
        return [b"".join(orjson.dumps({"model": model, **item}) + b"\n" for item in items)]

    def lines(self, content: bytes, tag: Tag, ids: list[str]) -> Iterator[dict[str, Any]]:
        """The results as OpenAI's output lines named by the rows' ids; another run's requests are left out."""
        for raw in content.splitlines():
            if not raw.strip():
                continue
            item = orjson.loads(raw)
            named = read_id(tag, str(item.get("key")))
            if named is not None and named[0] < len(ids):
                yield result_line(ids[named[0]], str(item.get("model") or ""), item)

    async def cancel(self, batch_id: str) -> Remote:
        """Ask Gemini to cancel it (it stops, keeping what it finished), then the batch as it is."""
        await self._json("POST", f"/{batch_id}:cancel", {})
        return await self.retrieve(batch_id)

    async def upload(self, name: str, content: bytes) -> str:
        """A JSONL file uploaded with Google's resumable protocol (start, then upload and finalize); its name."""
        parsed = urllib.parse.urlsplit(self._base)
        url = f"{parsed.scheme}://{parsed.netloc}/upload{parsed.path}/files"
        start = {"X-Goog-Upload-Protocol": "resumable", "X-Goog-Upload-Command": "start",
                 "X-Goog-Upload-Header-Content-Length": str(len(content)),
                 "X-Goog-Upload-Header-Content-Type": "application/jsonl"}  # fmt: skip
        meta = {"file": {"displayName": name, "mimeType": "application/jsonl"}}
        _, headers = await self._call("POST", url, orjson.dumps(meta), start)
        upload_url = headers.get("X-Goog-Upload-URL")
        if not upload_url:
            raise ProviderFailure(Disposition.RETRY, "upload_failed", "the Files API returned no upload URL")
        finish = {"X-Goog-Upload-Command": "upload, finalize", "X-Goog-Upload-Offset": "0"}
        raw, headers = await self._call("POST", upload_url, content, finish)
        if headers.get("X-Goog-Upload-Status") != "final":
            raise ProviderFailure(Disposition.RETRY, "upload_failed", "the Files API did not finalize the upload")
        return str(orjson.loads(raw)["file"]["name"])

    # -- HTTP ----------------------------------------------------------------------------

    @property
    def _base(self) -> str:
        return (self.api_base or DEFAULT_BASE).rstrip("/")

    def _headers(self) -> dict[str, str]:
        from runner.provider.wire_http import env_key

        key = self.api_key or env_key("gemini")
        if not key:
            raise ProviderFailure(Disposition.FATAL, "authentication_failed",
                                  "no Gemini API key: set GEMINI_API_KEY (or GOOGLE_API_KEY)")  # fmt: skip
        return {"x-goog-api-key": key, "Content-Type": "application/json"}

    async def _bytes(self, method: str, url: str, body: Any = None) -> bytes:
        """One JSON call's answer (see ``_call``)."""
        return (await self._call(method, url, orjson.dumps(body) if body is not None else None))[0]

    async def _call(
        self, method: str, url: str, data: bytes | None = None, extra: dict[str, str] | None = None
    ) -> tuple[bytes, dict[str, str]]:
        """One call; its body and headers, or the failure classified as online calls are (no key in a message)."""
        from runner.provider.wire_http import proxy, session

        timeout = aiohttp.ClientTimeout(total=self.timeout)
        headers = {**self._headers(), **(extra or {})}
        try:
            async with session().request(method, url, data=data, headers=headers, timeout=timeout,
                                         proxy=proxy(url)) as response:  # fmt: skip
                raw = await response.read()
                if response.status >= 400:
                    message = redact(raw.decode("utf-8", "replace"))[:1000]
                    raise from_status(response.status, message, dict(response.headers))
                return raw, dict(response.headers)
        except TimeoutError as exc:
            raise ProviderFailure(Disposition.RETRY, "timeout", f"{method} {url.split('?')[0]} timed out") from exc
        except aiohttp.ClientError as exc:
            raise ProviderFailure(Disposition.RETRY, "connection_error", redact(str(exc))) from exc

    async def _json(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        raw = await self._bytes(method, self._base + path, body)
        return dict(orjson.loads(raw)) if raw.strip() else {}

    async def _read(self, method: str, path: str) -> dict[str, Any]:
        """A read, retried while it fails transiently; its last failure if it never works."""
        return await self.reads.value(lambda: self._json(method, path))

    async def reads_bytes(self, url: str) -> bytes:
        """A download, retried as reads are."""
        return await self.reads.value(lambda: self._bytes("GET", url))


def _inlined(output: dict[str, Any]) -> list[dict[str, Any]]:
    inlined = output.get("inlinedResponses") or {}
    return list(inlined.get("inlinedResponses") or []) if isinstance(inlined, dict) else list(inlined)


def _count(stats: dict[str, Any], name: str) -> int:
    return int(stats.get(name) or 0)  # int64 fields come as strings in JSON


def _time(stamp: Any) -> float | None:
    """An RFC 3339 time (up to nanoseconds, ``Z``) as epoch seconds."""
    if not isinstance(stamp, str) or not stamp:
        return None
    trimmed = re.sub(r"(\.\d{6})\d+", r"\1", stamp).replace("Z", "+00:00")
    with contextlib.suppress(ValueError):
        return datetime.fromisoformat(trimmed).timestamp()
    return None


def _remote(operation: dict[str, Any]) -> Remote:
    """From the long-running operation (its ``metadata`` the batch), in OpenAI's vocabulary."""
    batch = operation.get("metadata") or {}
    state = str(batch.get("state") or "").removeprefix("BATCH_STATE_").removeprefix("JOB_STATE_")
    error = operation.get("error") or {}
    status = "failed" if error else STATUS.get(state, "in_progress")
    stats = batch.get("batchStats") or {}
    created = _time(batch.get("createTime"))
    name = str(operation.get("name") or batch.get("name"))
    return Remote(
        id=name,
        status=status,
        counts={k: _count(stats, v) for k, v in COUNTS.items()},
        output_file_id=name if status in ("completed", "failed", "cancelled", "expired") else None,
        created_at=created,
        expires_at=created + WINDOW_S if created is not None else None,
        metadata={"display_name": str(batch.get("displayName") or "")},
        error_codes=(str(error.get("status") or error.get("code")),) if error else (),
        error_message=redact(str(error.get("message") or "")),
    )
