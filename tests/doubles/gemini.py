"""The test server's Gemini API (Developer API, v1beta): ``:generateContent`` and Batch Mode, in Google's wire
format: the routes, each batch's work and the files.

Mounted by ``tests/doubles/server.py`` under ``/v1beta`` (``api_base`` ``http://127.0.0.1:PORT/v1beta``:
litellm's online ``gemini/`` call posts to ``{api_base}/models/{model}:generateContent``). A
GenerateContentRequest is answered with the chat fake's own logic, framed as a
GenerateContentResponse (``gemini_wire``); ``times`` counts attempts of a message per lane (online, batch).
Batch Mode as the google-genai SDK (3.6.1) speaks it: ``POST .../models/{model}:batchGenerateContent``
with ``{"batch": {"displayName", "inputConfig": {"requests": {"requests": [{"request", "metadata"}]}}}}``
answered by a long-running operation ``{"name": "batches/…", "metadata": <the batch>}`` (``state``
``BATCH_STATE_*``, ``batchStats`` with int64 counts as strings, ``createTime``), ``GET /batches/{id}``
(``done`` and ``response.inlinedResponses.inlinedResponses[]`` once ended, each ``response`` or
``error`` with its ``metadata``, in input order; the batch's ``output`` holds the same),
``GET /batches`` (``operations``, ``pageSize``/``pageToken``/``nextPageToken``, newest first),
``POST /batches/{id}:cancel``; a file's requests instead: a resumable upload to ``/upload/v1beta/files``
(``X-Goog-Upload-Command`` start, then ``upload, finalize`` at the ``X-Goog-Upload-URL`` it gave),
``inputConfig.fileName``, and the results as a file (``responsesFile``, JSONL of ``key`` with
``response`` or ``error``) read at ``GET /v1beta/files/{id}:download?alt=media``. The key must come
in ``x-goog-api-key``; one in the URL is refused. The faults ``configure`` sets, and the state, are in
``gemini_state``.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from typing import Any

from aiohttp import web

from tests.doubles.gemini_state import Batch, GeminiConfig, GeminiLedger, GeminiStats
from tests.doubles.gemini_wire import BATCH_TYPE, CODES, answer, error, stamp

__all__ = ["FakeGemini", "GeminiConfig", "GeminiStats"]


class FakeGemini(GeminiLedger):
    """generateContent and Batch Mode for one FakeServer; handlers run on its loop, tests read from any thread."""

    def routes(self) -> list[web.RouteDef]:
        """The routes to mount."""
        return [
            web.post("/v1beta/models/{action}", self._model_action),
            web.get("/v1beta/batches", self._list),
            web.get("/v1beta/batches/{id}", self._retrieve),
            web.post("/v1beta/batches/{action}", self._cancel),
            web.post("/upload/v1beta/files", self._upload),
            web.get("/v1beta/files/{action}", self._download),
        ]

    async def _model_action(self, request: web.Request) -> web.Response:
        if "key" in request.query or "x-goog-api-key" not in request.headers:
            return error(401, "the API key must come in the x-goog-api-key header")
        model, _, verb = request.match_info["action"].partition(":")
        body = await request.json()
        if verb == "batchGenerateContent":
            return await self._create(model, body, str(request.url.origin()))
        if verb != "generateContent":
            return error(404, f"no method {verb}")
        with self._lock:
            self._online += 1
            self.bodies.append(body)
            self._changed.notify_all()
        status, response = answer(model, body, "online", self._attempt)
        return web.json_response(response) if status == 200 else error(status, response["message"])

    # -- batches -----------------------------------------------------------------------

    async def _create(self, model: str, body: dict[str, Any], origin: str) -> web.Response:
        batch = body.get("batch") or {}
        source = batch.get("inputConfig") or {}
        inline = (source.get("requests") or {}).get("requests")
        if (file := source.get("fileName")) is not None:
            if file not in self.files:
                return error(404, f"{file} not found")
            lines = [json.loads(raw) for raw in self.files[file].splitlines() if raw.strip()]
            inline = [{"request": line["request"], "metadata": {"key": line["key"]}} for line in lines]
        if not batch.get("displayName"):
            return error(400, "batch.display_name is required")
        if (
            not isinstance(inline, list)
            or not inline
            or not all("contents" in (r.get("request") or {}) for r in inline)
        ):
            return error(400, "batch.input_config.requests.requests: each needs a request with contents")
        now, name = time.time(), f"batches/{secrets.token_hex(10)}"
        meta = {"@type": BATCH_TYPE, "model": f"models/{model}", "displayName": batch["displayName"],
                "createTime": stamp(now), "updateTime": stamp(now), "state": "BATCH_STATE_PENDING", "name": name,
                "batchStats": {"requestCount": str(len(inline)), "pendingRequestCount": str(len(inline))}}  # fmt: skip
        made, config = Batch({"name": name, "metadata": meta}, inline, file is not None), self.config
        with self._lock:
            self._batches[name] = made
            self.bodies.extend(r["request"] for r in inline)
            self.display_names.append(batch["displayName"])
            self.keys.extend(str((r.get("metadata") or {}).get("key")) for r in inline)
            self._changed.notify_all()
        task = asyncio.get_running_loop().create_task(self._work(made, config, model))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if config.hold_create:
            await self._park()
        return web.json_response(made.op)

    async def _work(self, batch: Batch, config: GeminiConfig, model: str) -> None:
        with self._lock:
            batch.op["metadata"]["state"] = "BATCH_STATE_RUNNING"
        if config.held:
            tasks = [asyncio.ensure_future(w) for w in (batch.stop.wait(), batch.go.wait())]
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in tasks:
                t.cancel()
        cancelled = batch.stop.is_set()
        expire_after = self.config.expire_after  # as set when the batch ends
        answered = 0 if cancelled else len(batch.requests)
        if not cancelled and expire_after is not None:
            answered = min(answered, expire_after)
        results, ok = [], 0
        for r in batch.requests[:answered]:
            status, response = answer(model, r["request"], "batch", self._attempt)
            item: dict[str, Any] = {"metadata": r.get("metadata") or {}}
            if status == 200:
                item["response"], ok = response, ok + 1
            else:
                item["error"] = {"code": CODES.get(status, (13, ""))[0], "message": response["message"]}
            results.append(item)
        state = "CANCELLED" if cancelled else "EXPIRED" if answered < len(batch.requests) else "SUCCEEDED"
        output: dict[str, Any] = {"inlinedResponses": {"inlinedResponses": results}}
        if batch.from_file:
            out = f"files/{batch.op['name'].split('/')[1]}-results"
            lines = [
                {"key": r["metadata"].get("key"), **{k: v for k, v in r.items() if k != "metadata"}} for r in results
            ]
            self.files[out] = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
            output = {"responsesFile": out}
        with self._lock:
            self._lines += answered
            meta = batch.op["metadata"]
            meta.update(state=f"BATCH_STATE_{state}", updateTime=stamp(time.time()), endTime=stamp(time.time()),
                        output=output, batchStats={"requestCount": str(len(batch.requests)),
                        "successfulRequestCount": str(ok), "failedRequestCount": str(answered - ok),
                        "pendingRequestCount": "0"})  # fmt: skip
            batch.op.update(done=True, response={"@type": BATCH_TYPE.replace("Batch", "BatchOutput"), **output})
            self._changed.notify_all()

    def _get(self, name: str) -> Batch | None:
        with self._lock:
            return self._batches.get(name)

    async def _retrieve(self, request: web.Request) -> web.Response:
        if "x-goog-api-key" not in request.headers:
            return error(401, "the API key must come in the x-goog-api-key header")
        batch = self._get(f"batches/{request.match_info['id']}")
        if batch is None:
            return error(404, "batch not found")
        if batch.op.get("done"):  # its responses come with it
            await self._serve_results(batch.op["name"])
        return web.json_response(batch.op)

    async def _list(self, request: web.Request) -> web.Response:
        size, start = int(request.query.get("pageSize", "10")), int(request.query.get("pageToken") or 0)
        with self._lock:
            ops = [b.op for b in reversed(self._batches.values())]  # newest first
        page = ops[start : start + size]
        more = {"nextPageToken": str(start + size)} if start + size < len(ops) else {}
        return web.json_response({"operations": page, **more})

    async def _cancel(self, request: web.Request) -> web.Response:
        batch_id, _, verb = request.match_info["action"].partition(":")
        batch = self._get(f"batches/{batch_id}")
        if batch is None or verb != "cancel":
            return error(404, "batch not found")
        with self._lock:
            if batch.op["metadata"]["state"] in ("BATCH_STATE_PENDING", "BATCH_STATE_RUNNING"):
                self._cancelled += 1
                loop = self.server._loop
                if loop is not None:
                    loop.call_soon_threadsafe(batch.stop.set)
                self._changed.notify_all()
                return web.json_response({})
        return error(400, f"batch is already in state {batch.op['metadata']['state']}")

    # -- files -------------------------------------------------------------------------

    async def _upload(self, request: web.Request) -> web.Response:
        if "x-goog-api-key" not in request.headers:
            return error(401, "the API key must come in the x-goog-api-key header")
        command = request.headers.get("X-Goog-Upload-Command", "")
        if command == "start":
            meta = (await request.json()).get("file") or {}
            if request.headers.get("X-Goog-Upload-Protocol") != "resumable":
                return error(400, "X-Goog-Upload-Protocol: resumable is required")
            upload = secrets.token_hex(8)
            self._sessions[upload] = str(meta.get("displayName") or upload)
            url = f"{request.url.origin()}/upload/v1beta/files?upload_id={upload}&upload_protocol=resumable"
            return web.json_response({}, headers={"X-Goog-Upload-URL": url, "X-Goog-Upload-Status": "active"})
        upload = request.query.get("upload_id", "")
        if (
            command != "upload, finalize"
            or upload not in self._sessions
            or request.headers.get("X-Goog-Upload-Offset") != "0"
        ):
            return error(400, "expected one 'upload, finalize' at offset 0 for a started upload")
        name = f"files/{secrets.token_hex(6)}"
        self.files[name] = await request.read()
        body = {"file": {"name": name, "displayName": self._sessions.pop(upload), "mimeType": "application/jsonl",
                         "sizeBytes": str(len(self.files[name])), "state": "ACTIVE"}}  # fmt: skip
        return web.json_response(body, headers={"X-Goog-Upload-Status": "final"})

    async def _download(self, request: web.Request) -> web.Response:
        file_id, _, verb = request.match_info["action"].partition(":")
        found = self.files.get(f"files/{file_id}")
        if verb != "download" or request.query.get("alt") != "media" or found is None:
            return error(404, "file not found")
        if file_id.endswith("-results"):  # an ended batch's responses file
            await self._serve_results(f"batches/{file_id.removesuffix('-results')}")
        return web.Response(body=found, content_type="application/octet-stream")
