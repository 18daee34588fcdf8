"""The test server's Gemini API (Developer API, v1beta): ``:generateContent`` and Batch Mode, in Google's wire format.

Mounted by ``tests/doubles/server.py`` under ``/v1beta`` (``api_base`` ``http://127.0.0.1:PORT/v1beta``:
litellm's online ``gemini/`` call posts to ``{api_base}/models/{model}:generateContent``). A
GenerateContentRequest is answered with the chat fake's own logic (the label, ``[[answer]]``, a
forced tool's call as a ``functionCall`` part, ``[[fail:STATUS(:times=N)]]``), framed as a
GenerateContentResponse; ``times`` counts attempts of a message per lane (online, batch).
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
in ``x-goog-api-key``; one in the URL is refused.

Faults (``configure``): ``held`` (batches end on ``release()``), ``expire_after`` (only the first N
requests are answered, the batch ends EXPIRED and says nothing of the rest), ``hold_create`` (the batch
is made, the answer to the create call waits for ``release()``), ``hold_results_after`` (the output
of the first N ended batches is served; a read of any other ended batch, which carries its responses,
or of its results file waits for ``release()``: a client killed while downloading them).
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
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from tests.doubles.server import FakeServer

__all__ = ["FakeGemini", "GeminiConfig", "GeminiStats"]

# HTTP status -> (google.rpc.Code, its name)
CODES = {400: (3, "INVALID_ARGUMENT"), 401: (16, "UNAUTHENTICATED"), 403: (7, "PERMISSION_DENIED"),
         404: (5, "NOT_FOUND"), 429: (8, "RESOURCE_EXHAUSTED"), 500: (13, "INTERNAL"), 503: (14, "UNAVAILABLE"),
         504: (4, "DEADLINE_EXCEEDED")}  # fmt: skip
BATCH_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1beta.GenerateContentBatch"


@dataclass(frozen=True)
class GeminiConfig:
    """How new batches behave (see the module docstring)."""

    held: bool = False
    expire_after: int | None = None
    hold_create: bool = False
    hold_results_after: int | None = None


@dataclass(frozen=True)
class GeminiStats:
    """What the Gemini API saw."""

    online: int  # :generateContent calls
    batches: int
    lines: int  # batch requests answered (response or error), over all batches
    states: dict[str, str]  # batch name -> state
    parked: int  # create and output answers waiting for release()
    cancelled: int
    by_key: dict[str, int] = field(repr=False)  # attempts per last-user-message text, both lanes


@dataclass
class _Batch:
    op: dict[str, Any]
    requests: list[dict[str, Any]]
    from_file: bool = False
    go: asyncio.Event = field(default_factory=asyncio.Event)  # held: may end
    stop: asyncio.Event = field(default_factory=asyncio.Event)  # cancelled


def _stamp(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


def _error(status: int, message: str) -> web.Response:
    _, name = CODES.get(status, (13, "INTERNAL"))
    return web.json_response({"error": {"code": status, "message": message, "status": name}}, status=status)


def _text(parts: Any) -> str:
    return "".join(p.get("text", "") for p in parts or [] if isinstance(p, dict))


class FakeGemini:
    """generateContent and Batch Mode for one FakeServer; handlers run on its loop, tests read from any thread."""

    def __init__(self, server: FakeServer) -> None:
        self.server = server
        self.config = GeminiConfig()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._batches: dict[str, _Batch] = {}
        self._by_key: Counter[str] = Counter()
        self._online = self._lines = self._parked = self._cancelled = 0
        self._answers: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._served: set[str] = set()  # ended batches whose output was served (hold_results_after)
        self.bodies: list[dict[str, Any]] = []  # every generateContent body and batch request, as received
        self.display_names: list[str] = []
        self.keys: list[str] = []  # every batch request's metadata.key
        self.files: dict[str, bytes] = {}  # uploaded and result files by name
        self._sessions: dict[str, str] = {}  # upload id -> the file's display name

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

    # -- test-facing, from any thread ----------------------------------------------------

    def configure(self, **changes: Any) -> None:
        """Change how new batches behave (GeminiConfig fields)."""
        with self._lock:
            self.config = replace(self.config, **changes)

    def release(self) -> None:
        """Let every held batch end and every parked answer go, and hold no more."""
        with self._lock:
            self.config = replace(self.config, held=False, hold_create=False, hold_results_after=None)
            gates = [b.go for b in self._batches.values()] + ([self._answers] if self._answers else [])
            self._answers = None
            loop = self.server._loop
        for gate in gates:
            if loop is not None:
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(gate.set)

    def reset(self) -> None:
        """Forget batches and counters."""
        self.release()
        with self._lock:
            self.config = GeminiConfig()
            self._batches.clear()
            self._served.clear()
            self._by_key.clear()
            self._online = self._lines = self._parked = self._cancelled = 0
            self.bodies.clear()
            self.display_names.clear()
            self.keys.clear()
            self.files.clear()
            self._sessions.clear()

    def stats(self) -> GeminiStats:
        """A snapshot of the counters."""
        with self._lock:
            return self._stats_locked()

    def wait_for(self, condition: Callable[[GeminiStats], bool], timeout: float = 60.0) -> GeminiStats:
        """Block until ``condition`` holds, woken by every change."""
        with self._changed:
            if not self._changed.wait_for(lambda: condition(self._stats_locked()), timeout):
                raise TimeoutError(f"the fake Gemini API never reached the condition: {self._stats_locked()}")
            return self._stats_locked()

    def _stats_locked(self) -> GeminiStats:
        states = {k: b.op["metadata"]["state"] for k, b in self._batches.items()}
        return GeminiStats(self._online, len(self._batches), self._lines, states, self._parked, self._cancelled,
                           dict(self._by_key))  # fmt: skip

    # -- answering one GenerateContentRequest ----------------------------------------------

    def _answer(self, model: str, body: dict[str, Any], lane: str) -> tuple[int, dict[str, Any]]:
        """(200, GenerateContentResponse) or (HTTP status, message) for ``body``."""
        from tests.doubles.chat_request import InvalidRequestError, parse_chat_request, plan_reply

        if not body.get("contents"):
            return 400, {"message": "contents: must not be empty"}
        system = body.get("system_instruction") or body.get("systemInstruction") or {}
        messages = ([{"role": "system", "content": _text(system.get("parts"))}] if system else []) + [
            {"role": "assistant" if c.get("role") == "model" else "user", "content": _text(c.get("parts"))}
            for c in body["contents"]
        ]
        config = body.get("generationConfig") or body.get("generation_config") or {}
        chat_body: dict[str, Any] = {"model": model, "messages": messages}
        if (limit := config.get("max_output_tokens") or config.get("maxOutputTokens")) is not None:
            chat_body["max_tokens"] = limit
        declarations = [d for t in body.get("tools") or [] for d in t.get("function_declarations") or
                        t.get("functionDeclarations") or []]  # fmt: skip
        if declarations:
            chat_body["tools"] = [{"type": "function", "function": {"name": d["name"], "parameters":
                                   d.get("parameters") or {}}} for d in declarations]  # fmt: skip
            calling = (body.get("toolConfig") or {}).get("functionCallingConfig") or {}
            allowed = calling.get("allowed_function_names") or calling.get("allowedFunctionNames") or []
            if calling.get("mode") == "ANY" and len(allowed) == 1:
                chat_body["tool_choice"] = {"type": "function", "function": {"name": allowed[0]}}
        try:
            chat = parse_chat_request(json.dumps(chat_body).encode(), {})
        except InvalidRequestError as exc:
            return 400, {"message": str(exc)}
        with self._lock:
            self._by_key[chat.key] += 1
            self._by_key[f"{lane}:{chat.key}"] += 1
            attempt = self._by_key[f"{lane}:{chat.key}"]
        fault = chat.directives.fault
        if fault is not None and fault.kind.isdigit() and (fault.times is None or attempt <= fault.times):
            return int(fault.kind), {"message": f"injected fault {fault.kind}"}
        reply = plan_reply(chat)
        parts: list[dict[str, Any]] = [{"text": reply.content or ""}]
        if reply.tool_call is not None:
            parts = [{"functionCall": {"name": reply.tool_call.name, "args": json.loads(reply.tool_call.arguments)}}]
        prompt, output = chat.prompt_estimate, reply.completion_tokens
        return 200, {"candidates": [{"content": {"role": "model", "parts": parts}, "index": 0,
                                     "finishReason": "MAX_TOKENS" if reply.finish_reason == "length" else "STOP"}],
                     "usageMetadata": {"promptTokenCount": prompt, "candidatesTokenCount": output,
                                       "totalTokenCount": prompt + output},
                     "modelVersion": model, "responseId": secrets.token_hex(8)}  # fmt: skip

    async def _model_action(self, request: web.Request) -> web.Response:
        if "key" in request.query or "x-goog-api-key" not in request.headers:
            return _error(401, "the API key must come in the x-goog-api-key header")
        model, _, verb = request.match_info["action"].partition(":")
        body = await request.json()
        if verb == "batchGenerateContent":
            return await self._create(model, body, str(request.url.origin()))
        if verb != "generateContent":
            return _error(404, f"no method {verb}")
        with self._lock:
            self._online += 1
            self.bodies.append(body)
            self._changed.notify_all()
        status, answer = self._answer(model, body, "online")
        return web.json_response(answer) if status == 200 else _error(status, answer["message"])

    # -- batches -----------------------------------------------------------------------

    async def _create(self, model: str, body: dict[str, Any], origin: str) -> web.Response:
        batch = body.get("batch") or {}
        source = batch.get("inputConfig") or {}
        inline = (source.get("requests") or {}).get("requests")
        if (file := source.get("fileName")) is not None:
            if file not in self.files:
                return _error(404, f"{file} not found")
            lines = [json.loads(raw) for raw in self.files[file].splitlines() if raw.strip()]
            inline = [{"request": line["request"], "metadata": {"key": line["key"]}} for line in lines]
        if not batch.get("displayName"):
            return _error(400, "batch.display_name is required")
        if (
            not isinstance(inline, list)
            or not inline
            or not all("contents" in (r.get("request") or {}) for r in inline)
        ):
            return _error(400, "batch.input_config.requests.requests: each needs a request with contents")
        now, name = time.time(), f"batches/{secrets.token_hex(10)}"
        meta = {"@type": BATCH_TYPE, "model": f"models/{model}", "displayName": batch["displayName"],
                "createTime": _stamp(now), "updateTime": _stamp(now), "state": "BATCH_STATE_PENDING", "name": name,
                "batchStats": {"requestCount": str(len(inline)), "pendingRequestCount": str(len(inline))}}  # fmt: skip
        made, config = _Batch({"name": name, "metadata": meta}, inline, file is not None), self.config
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

    async def _park(self) -> None:
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

    async def _work(self, batch: _Batch, config: GeminiConfig, model: str) -> None:
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
            status, answer = self._answer(model, r["request"], "batch")
            item: dict[str, Any] = {"metadata": r.get("metadata") or {}}
            if status == 200:
                item["response"], ok = answer, ok + 1
            else:
                item["error"] = {"code": CODES.get(status, (13, ""))[0], "message": answer["message"]}
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
            meta.update(state=f"BATCH_STATE_{state}", updateTime=_stamp(time.time()), endTime=_stamp(time.time()),
                        output=output, batchStats={"requestCount": str(len(batch.requests)),
                        "successfulRequestCount": str(ok), "failedRequestCount": str(answered - ok),
                        "pendingRequestCount": "0"})  # fmt: skip
            batch.op.update(done=True, response={"@type": BATCH_TYPE.replace("Batch", "BatchOutput"), **output})
            self._changed.notify_all()

    def _get(self, name: str) -> _Batch | None:
        with self._lock:
            return self._batches.get(name)

    async def _retrieve(self, request: web.Request) -> web.Response:
        if "x-goog-api-key" not in request.headers:
            return _error(401, "the API key must come in the x-goog-api-key header")
        batch = self._get(f"batches/{request.match_info['id']}")
        if batch is None:
            return _error(404, "batch not found")
        if batch.op.get("done"):  # its responses come with it
            await self._serve_output(batch.op["name"])
        return web.json_response(batch.op)

    async def _serve_output(self, name: str) -> None:
        """Park before serving an ended batch's output if ``hold_results_after`` says so."""
        after = self.config.hold_results_after
        if after is not None and name not in self._served and len(self._served) >= after:
            await self._park()
        self._served.add(name)

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
            return _error(404, "batch not found")
        with self._lock:
            if batch.op["metadata"]["state"] in ("BATCH_STATE_PENDING", "BATCH_STATE_RUNNING"):
                self._cancelled += 1
                loop = self.server._loop
                if loop is not None:
                    loop.call_soon_threadsafe(batch.stop.set)
                self._changed.notify_all()
                return web.json_response({})
        return _error(400, f"batch is already in state {batch.op['metadata']['state']}")

    async def _upload(self, request: web.Request) -> web.Response:
        if "x-goog-api-key" not in request.headers:
            return _error(401, "the API key must come in the x-goog-api-key header")
        command = request.headers.get("X-Goog-Upload-Command", "")
        if command == "start":
            meta = (await request.json()).get("file") or {}
            if request.headers.get("X-Goog-Upload-Protocol") != "resumable":
                return _error(400, "X-Goog-Upload-Protocol: resumable is required")
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
            return _error(400, "expected one 'upload, finalize' at offset 0 for a started upload")
        name = f"files/{secrets.token_hex(6)}"
        self.files[name] = await request.read()
        body = {"file": {"name": name, "displayName": self._sessions.pop(upload), "mimeType": "application/jsonl",
                         "sizeBytes": str(len(self.files[name])), "state": "ACTIVE"}}  # fmt: skip
        return web.json_response(body, headers={"X-Goog-Upload-Status": "final"})

    async def _download(self, request: web.Request) -> web.Response:
        file_id, _, verb = request.match_info["action"].partition(":")
        found = self.files.get(f"files/{file_id}")
        if verb != "download" or request.query.get("alt") != "media" or found is None:
            return _error(404, "file not found")
        if file_id.endswith("-results"):  # an ended batch's responses file
            await self._serve_output(f"batches/{file_id.removesuffix('-results')}")
        return web.Response(body=found, content_type="application/octet-stream")
