"""The test server's Files and Batch API (``/v1/files``, ``/v1/batches``), in OpenAI's format: the routes
and each batch's work.

Mounted by ``tests/doubles/server.py``. Each request line of a batch is answered with the same logic
as ``/v1/chat/completions`` (``batches_wire``: the label, ``[[answer]]``, tool calls,
``[[fail:STATUS(:times=N)]]`` as a failed line; ``times`` counts batch attempts of that message), into
an output file (status 200) and an error file (other statuses, and lines a batch never reached).
Lines to ``/v1/embeddings`` are answered as that endpoint answers them (an embedding list). State
lives as long as the server does (``batches_state``, with the faults ``configure`` sets), so it
survives runner restarts.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from aiohttp import web

from tests.doubles.batches_state import TERMINAL, Batch, BatchConfig, BatchLedger, BatchStats
from tests.doubles.batches_wire import (
    answer_line,
    error,
    file_object,
    new_id,
    output_record,
    tokens,
    unreached_record,
)

__all__ = ["BatchConfig", "BatchStats", "FakeBatches"]


class FakeBatches(BatchLedger):
    """Files and batches for one FakeServer; handlers run on its loop, tests read from any thread."""

    def routes(self) -> list[web.RouteDef]:
        """The routes to mount."""
        return [  # OpenAI's, and Azure OpenAI's (under /openai, with an api-version query), also at an api_base of …/v1
            route
            for root in ("/v1", "/openai", "/v1/openai")
            for route in (
                web.post(f"{root}/files", self._upload),
                web.get(f"{root}/files/{{id}}", self._file),
                web.get(f"{root}/files/{{id}}/content", self._content),
                web.post(f"{root}/batches", self._create),
                web.get(f"{root}/batches", self._list),
                web.get(f"{root}/batches/{{id}}", self._retrieve),
                web.post(f"{root}/batches/{{id}}/cancel", self._cancel),
            )
        ]

    # -- files -------------------------------------------------------------------------

    async def _upload(self, request: web.Request) -> web.Response:
        form = await request.post()
        upload, purpose = form.get("file"), str(form.get("purpose") or "")
        if not isinstance(upload, web.FileField):
            return error(400, "missing 'file'")
        content = upload.file.read()
        file_id = new_id("file-")
        with self._lock:
            self.files[file_id] = (purpose, upload.filename, content)
            self._changed.notify_all()
        return web.json_response(file_object(file_id, purpose, upload.filename, len(content)))

    def _stored(self, request: web.Request) -> tuple[str, tuple[str, str, bytes] | None]:
        file_id = request.match_info["id"]
        with self._lock:
            return file_id, self.files.get(file_id)

    async def _file(self, request: web.Request) -> web.Response:
        file_id, stored = self._stored(request)
        if stored is None:
            return error(404, f"No such File object: {file_id}")
        return web.json_response(file_object(file_id, stored[0], stored[1], len(stored[2])))

    async def _content(self, request: web.Request) -> web.Response:
        if self._flaky():
            return error(500, "The server had an error while processing your request.")
        file_id, stored = self._stored(request)
        if stored is None:
            return error(404, f"No such File object: {file_id}")
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
            return error(400, f"No such File object: {body.get('input_file_id')}")
        lines = [json.loads(line) for line in stored[2].splitlines() if line.strip()]
        total = sum(tokens(line.get("body") or {}) for line in lines)
        now = int(time.time())
        obj: dict[str, Any] = {
            "id": new_id("batch_"), "object": "batch", "endpoint": body.get("endpoint"), "errors": None,
            "input_file_id": body["input_file_id"], "completion_window": body.get("completion_window", "24h"),
            "status": "in_progress", "output_file_id": None, "error_file_id": None, "created_at": now,
            "in_progress_at": now, "expires_at": now + 86400, "finalizing_at": None, "completed_at": None,
            "failed_at": None, "expired_at": None, "cancelling_at": None, "cancelled_at": None,
            "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
            "metadata": body.get("metadata"),
        }  # fmt: skip
        batch = Batch(obj, lines, total)
        config = self.config
        with self._lock:
            enqueued = sum(b.tokens for b in self._batches.values() if b.obj["status"] not in TERMINAL)
            self._batches[obj["id"]] = batch
            limit = config.enqueued_token_limit
            if config.fail_batch or (limit is not None and enqueued + total > limit):
                self._fail(batch, limit, enqueued)
            self._changed.notify_all()
        if obj["status"] == "in_progress":
            task = asyncio.get_running_loop().create_task(self._work(batch, config))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if config.hold_create:
            await self._park()
        return web.json_response(obj)

    def _fail(self, batch: Batch, limit: int | None, enqueued: int) -> None:
        if self.config.fail_batch:
            failure = {"code": "invalid_request", "message": "The batch input file is invalid (injected fault).",
                       "param": None, "line": None}  # fmt: skip
        else:
            self._refused += 1
            message = (
                f"Enqueued token limit reached for gpt-4o-mini in organization org-fake. Limit: {limit} "
                "enqueued tokens. Please try again once some in_progress batches have been completed."
            )
            failure = {"code": "token_limit_exceeded", "message": message, "param": None, "line": None}
        batch.obj.update(status="failed", failed_at=int(time.time()), errors={"object": "list", "data": [failure]})
        batch.done.set()

    async def _work(self, batch: Batch, config: BatchConfig) -> None:
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
            status, response = answer_line(line, self._count)
            (output if status == 200 else errors).append(output_record(line, status, response))
        why = "cancelled" if cancelled else "expired"
        errors += [unreached_record(line, why) for line in batch.lines[answered:]]
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

    async def _retrieve(self, request: web.Request) -> web.Response:
        with self._lock:
            batch = self._batches.get(request.match_info["id"])
            return web.json_response(batch.obj) if batch else error(404, "No such batch")

    async def _list(self, request: web.Request) -> web.Response:
        if self._flaky():
            return error(500, "The server had an error while processing your request.")
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
                return error(404, "No such batch")
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
                return error(400, f"Batch is already in terminal status '{batch.obj['status']}'")
        if too_late:
            await batch.finished.wait()
            return error(400, f"Batch is already in terminal status '{batch.obj['status']}'")
        return web.json_response(batch.obj)


async def _first(*waits: Any) -> None:
    """Wait until the first of ``waits`` is done, and cancel the rest."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
