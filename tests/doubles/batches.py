"""The test server's Files and Batch API (``/v1/files``, ``/v1/batches``), in OpenAI's format.

Mounted by ``tests/doubles/server.py``. Each request line of a batch is answered with the same logic
as ``/v1/chat/completions`` (the label, ``[[answer]]``, tool calls, ``[[fail:STATUS(:times=N)]]``
as a failed line; ``times`` counts batch attempts of that message), into an output file (status
200) and an error file (other statuses, and lines a batch never reached). State lives as long as
the server does, so it survives runner restarts.

Faults, set with ``FakeBatches.configure`` (``BatchConfig``):

    delay_s               a batch finishes this long after it is created (0: at once)
    held                  batches wait for ``release()`` before finishing (tests wait on events)
    expire_after          only the first N lines are answered, then the batch expires
    fail_batch            every new batch fails as a whole (status failed, no output)
    enqueued_token_limit  tokens of this server's unfinished batches; a batch that would pass it is
                          failed at once with ``token_limit_exceeded``, as OpenAI does
    cancel_too_late       a cancel is accepted but the batch finishes anyway, answering every line
    hold_create           a batch is created, then the answer to the create call waits for ``release()``
                          (a client killed meanwhile never learns the batch's id)
    hold_content_after    file downloads after the first N wait for ``release()`` (a client killed
                          while downloading)
    finish_before_cancel  a cancel arrives just as the batch finishes: the batch completes, answering
                          every line, and the cancel is refused ("already in terminal status 'completed'")
    flaky_reads           the first N list and download calls are answered 500 (transient errors)
    slow_cancel           a cancel is accepted (status cancelling) but the batch stays cancelling until
                          ``release()``, then is cancelled with every line answered (it had done them all)

Lines to ``/v1/embeddings`` are answered as that endpoint answers them (an embedding list).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from tests.doubles.server import FakeServer

__all__ = ["BatchConfig", "BatchStats", "FakeBatches"]

TERMINAL = ("completed", "failed", "expired", "cancelled")


@dataclass(frozen=True)
class BatchConfig:
    """How new batches behave (see the module docstring)."""

    delay_s: float = 0.0
    held: bool = False
    expire_after: int | None = None
    fail_batch: bool = False
    enqueued_token_limit: int | None = None
    cancel_too_late: bool = False
    hold_create: bool = False
    hold_content_after: int | None = None
    finish_before_cancel: bool = False
    flaky_reads: int = 0
    slow_cancel: bool = False


@dataclass(frozen=True)
class BatchStats:
    """What the Batch API saw."""

    files: int
    batches: int
    lines: int  # request lines answered (output or error), over all batches
    by_key: dict[str, int] = field(repr=False)  # batch attempts per last-user-message text
    statuses: dict[str, str]  # batch id -> status
    refused: int  # batches failed for the enqueued-token limit
    cancelled: int
    parked: int = 0  # create or download answers waiting for release()
    downloads: int = 0


@dataclass
class _Batch:
    obj: dict[str, Any]
    lines: list[dict[str, Any]]
    tokens: int
    done: asyncio.Event = field(default_factory=asyncio.Event)  # cancelled (or finished)
    go: asyncio.Event = field(default_factory=asyncio.Event)  # a held batch may finish
    finished: asyncio.Event = field(default_factory=asyncio.Event)  # its output is written


def _id(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(12)}"


class FakeBatches:
    """Files and batches for one FakeServer; handlers run on its loop, tests read from any thread."""

    def __init__(self, server: FakeServer) -> None:
        self.server = server
        self.config = BatchConfig()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self.files: dict[str, tuple[str, str, bytes]] = {}  # id -> (purpose, filename, content)
        self._batches: dict[str, _Batch] = {}
        self._by_key: Counter[str] = Counter()
        self._lines = self._refused = self._cancelled = self._parked = self._downloads = self._reads = 0
        self._answers: asyncio.Event | None = None  # parks held create/download answers
        self._tasks: set[asyncio.Task[None]] = set()

    def routes(self) -> list[web.RouteDef]:
        """The routes to mount."""
        return [
            web.post("/v1/files", self._upload),
            web.get("/v1/files/{id}", self._file),
            web.get("/v1/files/{id}/content", self._content),
            web.post("/v1/batches", self._create),
            web.get("/v1/batches", self._list),
            web.get("/v1/batches/{id}", self._retrieve),
            web.post("/v1/batches/{id}/cancel", self._cancel),
        ]

    # -- test-facing, from any thread ----------------------------------------------------

    def configure(self, **changes: Any) -> None:
        """Change how new batches behave (BatchConfig fields)."""
        with self._lock:
            self.config = replace(self.config, **changes)
        if changes.get("held") is False:
            self.release()

    def release(self, batches: int | None = None) -> None:
        """Let every held batch finish and every parked answer go, and hold no more; with ``batches``,
        only let that many of the oldest held batches finish (and keep holding)."""
        with self._lock:
            held = [
                b
                for b in self._batches.values()
                if b.obj["status"] in ("in_progress", "cancelling") and not b.go.is_set()
            ]
            if batches is None:
                self.config = replace(self.config, held=False, hold_create=False, hold_content_after=None)
            gates, loop = [b.go for b in held[:batches]], self.server._loop
        if batches is None:
            gates += [g for g in (self._answers,) if g is not None]
            self._answers = None
        for gate in gates:
            if gate is not None and loop is not None:
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(gate.set)

    def reset(self) -> None:
        """Forget files, batches and counters (the server's reset)."""
        self.release()
        with self._lock:
            self.config = BatchConfig()
            self.files.clear()
            self._batches.clear()
            self._by_key.clear()
            self._lines = self._refused = self._cancelled = self._parked = self._downloads = self._reads = 0

    def stats(self) -> BatchStats:
        """A snapshot of the counters."""
        with self._lock:
            return self._stats_locked()

    def wait_for(self, condition: Callable[[BatchStats], bool], timeout: float = 60.0) -> BatchStats:
        """Block until ``condition`` holds, woken by every change."""
        with self._changed:
            if not self._changed.wait_for(lambda: condition(self._stats_locked()), timeout):
                raise TimeoutError(f"the fake Batch API never reached the condition: {self._stats_locked()}")
            return self._stats_locked()

    def uploaded(self) -> list[bytes]:
        """The content of every file uploaded for a batch."""
        with self._lock:
            return [content for purpose, _, content in self.files.values() if purpose == "batch"]

    def _stats_locked(self) -> BatchStats:
        statuses = {k: b.obj["status"] for k, b in self._batches.items()}
        files = len(self.files)
        return BatchStats(files, len(self._batches), self._lines, dict(self._by_key), statuses, self._refused,
                          self._cancelled, self._parked, self._downloads)  # fmt: skip

    async def _park(self) -> None:
        """Wait for ``release()``, counted in ``parked``."""
        if self._answers is None:
            self._answers = asyncio.Event()
        gate = self._answers
        with self._lock:
            self._parked += 1
            self._changed.notify_all()
        try:
            await gate.wait()
        finally:
            with self._lock:
                self._parked -= 1
                self._changed.notify_all()

    def _changed_now(self) -> None:
        with self._lock:
            self._changed.notify_all()

    # -- files -------------------------------------------------------------------------

    async def _upload(self, request: web.Request) -> web.Response:
        form = await request.post()
        upload, purpose = form.get("file"), str(form.get("purpose") or "")
        if not isinstance(upload, web.FileField):
            return _error(400, "missing 'file'")
        content = upload.file.read()
        file_id = _id("file-")
        with self._lock:
            self.files[file_id] = (purpose, upload.filename, content)
            self._changed.notify_all()
        return web.json_response(_file_object(file_id, purpose, upload.filename, len(content)))

    def _stored(self, request: web.Request) -> tuple[str, tuple[str, str, bytes] | None]:
        file_id = request.match_info["id"]
        with self._lock:
            return file_id, self.files.get(file_id)

    async def _file(self, request: web.Request) -> web.Response:
        file_id, stored = self._stored(request)
        if stored is None:
            return _error(404, f"No such File object: {file_id}")
        return web.json_response(_file_object(file_id, stored[0], stored[1], len(stored[2])))

    def _flaky(self) -> bool:
        """Whether this read is one of the ``flaky_reads`` first ones (answered 500)."""
        with self._lock:
            self._reads += 1
            return self._reads <= self.config.flaky_reads

    async def _content(self, request: web.Request) -> web.Response:
        if self._flaky():
            return _error(500, "The server had an error while processing your request.")
        file_id, stored = self._stored(request)
        if stored is None:
            return _error(404, f"No such File object: {file_id}")
        with self._lock:
            self._downloads += 1
            after = self.config.hold_content_after
            park = after is not None and self._downloads > after
        if park:
            await self._park()
        return web.Response(body=stored[2], content_type="application/octet-stream")

    # -- batches -----------------------------------------------------------------------

    async def _create(self, request: web.Request) -> web.Response:
        body = await request.json()
        with self._lock:
            stored = self.files.get(body.get("input_file_id", ""))
        if stored is None:
            return _error(400, f"No such File object: {body.get('input_file_id')}")
        lines = [json.loads(line) for line in stored[2].splitlines() if line.strip()]
        tokens = sum(_tokens(line.get("body") or {}) for line in lines)
        now = int(time.time())
        obj: dict[str, Any] = {
            "id": _id("batch_"), "object": "batch", "endpoint": body.get("endpoint"), "errors": None,
            "input_file_id": body["input_file_id"], "completion_window": body.get("completion_window", "24h"),
            "status": "in_progress", "output_file_id": None, "error_file_id": None, "created_at": now,
            "in_progress_at": now, "expires_at": now + 86400, "finalizing_at": None, "completed_at": None,
            "failed_at": None, "expired_at": None, "cancelling_at": None, "cancelled_at": None,
            "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
            "metadata": body.get("metadata"),
        }  # fmt: skip
        batch = _Batch(obj, lines, tokens)
        config = self.config
        with self._lock:
            enqueued = sum(b.tokens for b in self._batches.values() if b.obj["status"] not in TERMINAL)
            self._batches[obj["id"]] = batch
            limit = config.enqueued_token_limit
            if config.fail_batch or (limit is not None and enqueued + tokens > limit):
                self._fail(batch, limit, enqueued)
            self._changed.notify_all()
        if obj["status"] == "in_progress":
            task = asyncio.get_running_loop().create_task(self._work(batch, config))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if config.hold_create:
            await self._park()
        return web.json_response(obj)

    def _fail(self, batch: _Batch, limit: int | None, enqueued: int) -> None:
        if self.config.fail_batch:
            error = {"code": "invalid_request", "message": "The batch input file is invalid (injected fault).",
                     "param": None, "line": None}  # fmt: skip
        else:
            self._refused += 1
            message = (
                f"Enqueued token limit reached for gpt-4o-mini in organization org-fake. Limit: {limit} "
                "enqueued tokens. Please try again once some in_progress batches have been completed."
            )
            error = {"code": "token_limit_exceeded", "message": message, "param": None, "line": None}
        batch.obj.update(status="failed", failed_at=int(time.time()), errors={"object": "list", "data": [error]})
        batch.done.set()

    async def _work(self, batch: _Batch, config: BatchConfig) -> None:
        if self.config.held:
            await _first(batch.go.wait(), batch.done.wait())
        elif config.delay_s:
            await _first(asyncio.sleep(config.delay_s), batch.done.wait())
        cancelled = batch.obj["status"] == "cancelling"
        answered = 0 if cancelled and not self.config.slow_cancel else len(batch.lines)
        expire_after = self.config.expire_after  # as set when the batch finishes
        if not cancelled and expire_after is not None:
            answered = min(answered, expire_after)
        output: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        for line in batch.lines[:answered]:
            status, response = self._answer(line)
            record = {"id": _id("batch_req_"), "custom_id": line.get("custom_id"),
                      "response": {"status_code": status, "request_id": _id("req_"), "body": response},
                      "error": None}  # fmt: skip
            (output if status == 200 else errors).append(record)
        why = "cancelled" if cancelled else "expired"
        for line in batch.lines[answered:]:
            message = f"This request could not be executed before the batch was {why}."
            errors.append({"id": _id("batch_req_"), "custom_id": line.get("custom_id"), "response": None,
                           "error": {"code": f"batch_{why}", "message": message}})  # fmt: skip
        now = int(time.time())
        with self._lock:
            self._lines += answered
            obj = batch.obj
            obj["request_counts"] = {"total": len(batch.lines), "completed": len(output),
                                     "failed": len(batch.lines) - len(output)}  # fmt: skip
            obj["output_file_id"] = self._save(output, obj["id"], "output")
            obj["error_file_id"] = self._save(errors, obj["id"], "errors")
            if cancelled:
                obj.update(status="cancelled", cancelled_at=now)
            elif answered < len(batch.lines):
                obj.update(status="expired", expired_at=now)
            else:
                obj.update(status="completed", finalizing_at=now, completed_at=now)
            batch.done.set()
            batch.finished.set()
            self._changed.notify_all()

    def _embed(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """One /v1/embeddings line, answered as that endpoint answers it."""
        from tests.doubles.chat_request import InvalidRequestError
        from tests.doubles.endpoints import _request, embeddings_body
        from tests.doubles.wire import error_body

        try:
            parsed, chat = _request(json.dumps(body).encode(), {}, "input")
            answer, _ = embeddings_body(parsed, chat)
        except InvalidRequestError as exc:
            return 400, error_body(400, str(body.get("model")), str(exc), exc.param)
        with self._lock:
            self._by_key[chat.key] += 1
        return 200, {**answer, "id": _id("emb-")}

    def _answer(self, line: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """One request line, answered as /v1/chat/completions would answer it."""
        from tests.doubles.answers import usage
        from tests.doubles.chat_request import InvalidRequestError, parse_chat_request, plan_reply
        from tests.doubles.wire import SYSTEM_FINGERPRINT, completion_body, error_body

        body = line.get("body") or {}
        if line.get("url") == "/v1/embeddings":
            return self._embed(body)
        try:
            chat = parse_chat_request(json.dumps(body).encode(), {})
        except InvalidRequestError as exc:
            return 400, error_body(400, str(body.get("model")), str(exc), exc.param)
        with self._lock:
            self._by_key[chat.key] += 1
            attempt = self._by_key[chat.key]
        fault = chat.directives.fault
        if fault is not None and fault.kind.isdigit() and (fault.times is None or attempt <= fault.times):
            return int(fault.kind), error_body(int(fault.kind), chat.info.model)
        reply = plan_reply(chat)
        head = {"id": _id("chatcmpl-"), "created": int(time.time()), "model": chat.info.model,
                "system_fingerprint": SYSTEM_FINGERPRINT}  # fmt: skip
        return 200, completion_body(head, reply, usage(chat.prompt_estimate, reply.completion_tokens), _id("call_"))

    def _save(self, records: list[dict[str, Any]], batch_id: str, what: str) -> str | None:
        if not records:
            return None
        file_id = _id("file-")
        content = b"".join(json.dumps(r).encode() + b"\n" for r in records)
        self.files[file_id] = ("batch_output", f"{batch_id}_{what}.jsonl", content)
        return file_id

    async def _retrieve(self, request: web.Request) -> web.Response:
        with self._lock:
            batch = self._batches.get(request.match_info["id"])
            return web.json_response(batch.obj) if batch else _error(404, "No such batch")

    async def _list(self, request: web.Request) -> web.Response:
        if self._flaky():
            return _error(500, "The server had an error while processing your request.")
        limit = int(request.query.get("limit", "20"))
        after = request.query.get("after")
        with self._lock:
            objs = [b.obj for b in reversed(self._batches.values())]  # newest first, as OpenAI lists them
        if after:
            ids = [o["id"] for o in objs]
            objs = objs[ids.index(after) + 1 :] if after in ids else []
        page = objs[:limit]
        return web.json_response({"object": "list", "data": page, "has_more": len(objs) > limit,
                                  "first_id": page[0]["id"] if page else None,
                                  "last_id": page[-1]["id"] if page else None})  # fmt: skip

    async def _cancel(self, request: web.Request) -> web.Response:
        with self._lock:
            batch = self._batches.get(request.match_info["id"])
            if batch is None:
                return _error(404, "No such batch")
            too_late = self.config.finish_before_cancel and batch.obj["status"] == "in_progress"
            if too_late:
                batch.go.set()  # it finishes now, answering every line, before the cancel is looked at
            elif batch.obj["status"] == "in_progress":
                if not self.config.cancel_too_late:
                    batch.obj.update(status="cancelling", cancelling_at=int(time.time()))
                self._cancelled += 1
                if not self.config.slow_cancel:
                    batch.done.set()  # a held or delayed batch stops waiting and writes what it has
                self._changed.notify_all()
            elif batch.obj["status"] in TERMINAL:
                return _error(400, f"Batch is already in terminal status '{batch.obj['status']}'")
        if too_late:
            await batch.finished.wait()
            return _error(400, f"Batch is already in terminal status '{batch.obj['status']}'")
        return web.json_response(batch.obj)


async def _first(*waits: Any) -> None:
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


def _tokens(body: dict[str, Any]) -> int:
    """About what OpenAI counts against the enqueued-token limit: the prompt and max_tokens."""
    from tests.doubles.answers import prompt_tokens

    messages = body.get("messages") or []
    return prompt_tokens(messages) + int(body.get("max_tokens") or body.get("max_completion_tokens") or 0)


def _file_object(file_id: str, purpose: str, filename: str, size: int) -> dict[str, Any]:
    return {"id": file_id, "object": "file", "bytes": size, "created_at": int(time.time()), "filename": filename,
            "purpose": purpose, "status": "processed", "expires_at": None, "status_details": None}  # fmt: skip


def _error(status: int, message: str) -> web.Response:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}}
    return web.json_response(body, status=status)
