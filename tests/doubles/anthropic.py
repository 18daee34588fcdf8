"""The test server's Anthropic API: ``/v1/messages`` and Message Batches, in Anthropic's wire format.

Mounted by ``tests/doubles/server.py`` at the server's root (litellm and the anthropic SDK both add
``/v1/...`` to an ``api_base`` of ``http://127.0.0.1:PORT``). A Messages body is answered with the
chat fake's own logic (the label, ``[[answer]]``, a forced tool's call, ``[[fail:STATUS(:times=N)]]``, 503
meaning Anthropic's 529 ``overloaded_error``), framed as an
Anthropic message; ``times`` counts attempts of a message per lane (online, batch). Batches follow
the documented API: ``POST /v1/messages/batches`` (``requests: [{custom_id, params}]``), ``GET``
one, ``GET`` the list (newest first, ``after_id``/``before_id``/``limit``, ``has_more``,
``first_id``/``last_id``), ``GET .../results`` (JSONL, not in input order), ``POST .../cancel``;
``processing_status`` in_progress | canceling | ended and ``request_counts`` {processing,
succeeded, errored, canceled, expired}; ``results_url`` once ended. Every request is checked for
Anthropic's rules (a ``custom_id`` of ``^[a-zA-Z0-9_-]{1,64}$``, unique in its batch; ``model``,
``max_tokens`` and ``messages`` in every body; a key in ``x-api-key`` or ``Authorization``).

Faults (``configure``, as tests/doubles/batches.py names them): ``held`` (batches end on ``release()``),
``expire_after`` (only the first N requests are answered, the rest expire), ``hold_create`` (the
batch is made, the answer to the create call waits for ``release()``), ``delay_s``, ``refuse`` (every
create and list call is answered with this HTTP status, nothing made), ``hold_results_after`` (the
results of the first N batches are served; any other batch's wait for ``release()``: a client killed
while downloading them).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
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

__all__ = ["AnthropicConfig", "AnthropicStats", "FakeAnthropic"]

CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
# HTTP status -> Anthropic's error type
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
               529: "overloaded_error"}  # fmt: skip


@dataclass(frozen=True)
class AnthropicConfig:
    """How new batches behave (see the module docstring)."""

    held: bool = False
    expire_after: int | None = None
    hold_create: bool = False
    delay_s: float = 0.0
    refuse: int | None = None
    hold_results_after: int | None = None


@dataclass(frozen=True)
class AnthropicStats:
    """What the Anthropic API saw."""

    online: int  # /v1/messages calls
    batches: int
    lines: int  # batch requests answered (succeeded or errored), over all batches
    statuses: dict[str, str]  # batch id -> processing_status
    parked: int  # create and results answers waiting for release()
    cancelled: int
    by_key: dict[str, int] = field(repr=False)  # attempts per last-user-message text, both lanes


@dataclass
class _Batch:
    obj: dict[str, Any]
    requests: list[dict[str, Any]]
    results: list[dict[str, Any]] = field(default_factory=list)
    go: asyncio.Event = field(default_factory=asyncio.Event)  # held: may end
    stop: asyncio.Event = field(default_factory=asyncio.Event)  # cancelled


def _id(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(12)}"


def _stamp(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


def _error(status: int, message: str) -> web.Response:
    body = {"type": "error", "error": {"type": ERROR_TYPES.get(status, "api_error"), "message": message}}
    return web.json_response(body, status=status)


class FakeAnthropic:
    """Messages and Message Batches for one FakeServer; handlers run on its loop, tests read from any thread."""

    def __init__(self, server: FakeServer) -> None:
        self.server = server
        self.config = AnthropicConfig()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._batches: dict[str, _Batch] = {}
        self._by_key: Counter[str] = Counter()  # attempts per lane and key: "online:..." / "batch:..."
        self._online = self._lines = self._parked = self._cancelled = 0
        self._answers: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._served: set[str] = set()  # batches whose results were served (hold_results_after)
        self.bodies: list[dict[str, Any]] = []  # every /v1/messages body and batch request's params, as received
        self.headers: list[dict[str, str]] = []  # the headers of every create call
        self.custom_ids: list[str] = []  # every batch request's id

    def routes(self) -> list[web.RouteDef]:
        """The routes to mount."""
        return [
            web.post("/v1/messages", self._messages),
            web.post("/v1/messages/batches", self._create),
            web.get("/v1/messages/batches", self._list),
            web.get("/v1/messages/batches/{id}", self._retrieve),
            web.get("/v1/messages/batches/{id}/results", self._results),
            web.post("/v1/messages/batches/{id}/cancel", self._cancel),
        ]

    # -- test-facing, from any thread ----------------------------------------------------

    def configure(self, **changes: Any) -> None:
        """Change how new batches behave (AnthropicConfig fields)."""
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
            self.config = AnthropicConfig()
            self._batches.clear()
            self._served.clear()
            self._by_key.clear()
            self._online = self._lines = self._parked = self._cancelled = 0
            self.bodies.clear()
            self.headers.clear()
            self.custom_ids.clear()

    def stats(self) -> AnthropicStats:
        """A snapshot of the counters."""
        with self._lock:
            return self._stats_locked()

    def wait_for(self, condition: Callable[[AnthropicStats], bool], timeout: float = 60.0) -> AnthropicStats:
        """Block until ``condition`` holds, woken by every change."""
        with self._changed:
            if not self._changed.wait_for(lambda: condition(self._stats_locked()), timeout):
                raise TimeoutError(f"the fake Anthropic API never reached the condition: {self._stats_locked()}")
            return self._stats_locked()

    def _stats_locked(self) -> AnthropicStats:
        statuses = {k: b.obj["processing_status"] for k, b in self._batches.items()}
        return AnthropicStats(self._online, len(self._batches), self._lines, statuses, self._parked, self._cancelled,
                              dict(self._by_key))  # fmt: skip

    # -- answering one Messages body -------------------------------------------------------

    def _answer(self, body: dict[str, Any], lane: str) -> tuple[int, dict[str, Any]]:
        """``body`` answered as Anthropic would: (200, message) or (status, error body)."""
        from tests.doubles.chat_request import InvalidRequestError, parse_chat_request, plan_reply

        for name in ("model", "max_tokens", "messages"):
            if name not in body:
                return 400, _error_body(400, f"{name}: Field required")
        system = body.get("system")
        if isinstance(system, list):
            system = "".join(block.get("text", "") for block in system)
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": m.get("role"), "content": _text(m.get("content"))} for m in body["messages"]
        ]
        chat_body: dict[str, Any] = {"model": body["model"], "messages": messages, "max_tokens": body["max_tokens"]}
        if body.get("tools"):  # Anthropic's tools and tool_choice as the chat fake reads them
            chat_body["tools"] = [{"type": "function", "function": {"name": t["name"], "parameters":
                                   t.get("input_schema") or {}}} for t in body["tools"]]  # fmt: skip
            choice = body.get("tool_choice") or {}
            if choice.get("type") == "tool":
                chat_body["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
        try:
            chat = parse_chat_request(json.dumps(chat_body).encode(), {})
        except InvalidRequestError as exc:
            return 400, _error_body(400, str(exc))
        with self._lock:
            self._by_key[chat.key] += 1
            self._by_key[f"{lane}:{chat.key}"] += 1
            attempt = self._by_key[f"{lane}:{chat.key}"]
        fault = chat.directives.fault
        if fault is not None and fault.kind.isdigit() and (fault.times is None or attempt <= fault.times):
            status = 529 if fault.kind == "503" else int(fault.kind)  # Anthropic says "overloaded" with a 529
            return status, _error_body(status, f"injected fault {status}")
        reply = plan_reply(chat)
        stop = {"length": "max_tokens", "tool_calls": "tool_use"}.get(reply.finish_reason, "end_turn")
        content: list[dict[str, Any]] = [{"type": "text", "text": reply.content or ""}]
        if reply.tool_call is not None:
            content = [{"type": "tool_use", "id": _id("toolu_"), "name": reply.tool_call.name,
                        "input": json.loads(reply.tool_call.arguments)}]  # fmt: skip
        message = {"id": _id("msg_"), "type": "message", "role": "assistant", "model": body["model"],
                   "content": content, "stop_reason": stop,
                   "stop_sequence": None,
                   "usage": {"input_tokens": chat.prompt_estimate, "output_tokens": reply.completion_tokens,
                             "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}}  # fmt: skip
        return 200, message

    async def _messages(self, request: web.Request) -> web.Response:
        if not _authorized(request):
            return _error(401, "x-api-key header is required")
        body = await request.json()
        with self._lock:
            self._online += 1
            self.bodies.append(body)
            self._changed.notify_all()
        status, answer = self._answer(body, "online")
        return web.json_response(answer, status=status)

    # -- batches -----------------------------------------------------------------------

    async def _create(self, request: web.Request) -> web.Response:
        if not _authorized(request):
            return _error(401, "x-api-key header is required")
        if self.config.refuse is not None:
            return _error(self.config.refuse, "injected refusal")
        body = await request.json()
        requests = body.get("requests")
        if not isinstance(requests, list) or not requests:
            return _error(400, "requests: must be a non-empty list")
        ids = [r.get("custom_id") for r in requests]
        bad = [i for i in ids if not isinstance(i, str) or not CUSTOM_ID.match(i)]
        if bad or len(set(ids)) != len(ids):
            return _error(400, f"requests: custom_id must match ^[a-zA-Z0-9_-]{{1,64}}$ and be unique: {bad[:3]}")
        for r in requests:
            params = r.get("params") or {}
            if not all(k in params for k in ("model", "max_tokens", "messages")):
                return _error(400, f"requests.{r['custom_id']}.params: model, max_tokens and messages are required")
        now = time.time()
        counts = {"processing": len(requests), "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        obj: dict[str, Any] = {"id": _id("msgbatch_"), "type": "message_batch", "processing_status": "in_progress",
                               "request_counts": counts, "ended_at": None, "created_at": _stamp(now),
                               "expires_at": _stamp(now + 86400), "archived_at": None, "cancel_initiated_at": None,
                               "results_url": None}  # fmt: skip
        batch, config = _Batch(obj, requests), self.config
        with self._lock:
            self._batches[obj["id"]] = batch
            self.bodies.extend(r["params"] for r in requests)
            self.headers.append(dict(request.headers))
            self.custom_ids.extend(ids)
            self._changed.notify_all()
        task = asyncio.get_running_loop().create_task(self._work(batch, config, str(request.url.origin())))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if config.hold_create:
            await self._park()
        return web.json_response(obj)

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

    async def _work(self, batch: _Batch, config: AnthropicConfig, origin: str) -> None:
        if config.held or config.delay_s:
            until = batch.go.wait() if config.held else asyncio.sleep(config.delay_s)
            tasks = [asyncio.ensure_future(w) for w in (batch.stop.wait(), until)]
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in tasks:
                t.cancel()
        cancelled = batch.stop.is_set()
        expire_after = self.config.expire_after  # as set when the batch ends
        answered = 0 if cancelled else len(batch.requests)
        if not cancelled and expire_after is not None:
            answered = min(answered, expire_after)
        counts = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        results = []
        for i, r in enumerate(batch.requests):
            if i >= answered:
                kind = "canceled" if cancelled else "expired"
                results.append({"custom_id": r["custom_id"], "result": {"type": kind}})
                counts[kind] += 1
                continue
            status, answer = self._answer(r["params"], "batch")
            if status == 200:
                results.append({"custom_id": r["custom_id"], "result": {"type": "succeeded", "message": answer}})
                counts["succeeded"] += 1
            else:
                results.append({"custom_id": r["custom_id"], "result": {"type": "errored", "error": answer}})
                counts["errored"] += 1
        results.reverse()  # not in input order, as Anthropic says
        with self._lock:
            self._lines += answered
            batch.results = results
            batch.obj.update(processing_status="ended", request_counts=counts, ended_at=_stamp(time.time()),
                             results_url=f"{origin}/v1/messages/batches/{batch.obj['id']}/results")  # fmt: skip
            self._changed.notify_all()

    def _get(self, request: web.Request) -> _Batch | None:
        with self._lock:
            return self._batches.get(request.match_info["id"])

    async def _retrieve(self, request: web.Request) -> web.Response:
        batch = self._get(request)
        return web.json_response(batch.obj) if batch else _error(404, "batch not found")

    async def _list(self, request: web.Request) -> web.Response:
        if self.config.refuse is not None:
            return _error(self.config.refuse, "injected refusal")
        limit = int(request.query.get("limit", "20"))
        with self._lock:
            objs = [b.obj for b in reversed(self._batches.values())]  # newest first
        ids = [o["id"] for o in objs]
        if after := request.query.get("after_id"):
            objs = objs[ids.index(after) + 1 :] if after in ids else []
        elif before := request.query.get("before_id"):
            objs = objs[: ids.index(before)] if before in ids else []
        page = objs[:limit]
        return web.json_response({"data": page, "has_more": len(objs) > limit,
                                  "first_id": page[0]["id"] if page else None,
                                  "last_id": page[-1]["id"] if page else None})  # fmt: skip

    async def _results(self, request: web.Request) -> web.Response:
        batch = self._get(request)
        if batch is None:
            return _error(404, "batch not found")
        if batch.obj["processing_status"] != "ended":
            return _error(400, "batch is still processing; results are available once it has ended")
        after, name = self.config.hold_results_after, batch.obj["id"]
        if after is not None and name not in self._served and len(self._served) >= after:
            await self._park()
        self._served.add(name)
        body = b"".join(json.dumps(r).encode() + b"\n" for r in batch.results)
        return web.Response(body=body, content_type="application/binary")

    async def _cancel(self, request: web.Request) -> web.Response:
        batch = self._get(request)
        if batch is None:
            return _error(404, "batch not found")
        with self._lock:
            if batch.obj["processing_status"] == "in_progress":
                batch.obj.update(processing_status="canceling", cancel_initiated_at=_stamp(time.time()))
                self._cancelled += 1
                loop = self.server._loop
                if loop is not None:
                    loop.call_soon_threadsafe(batch.stop.set)
                self._changed.notify_all()
            return web.json_response(batch.obj)


def _authorized(request: web.Request) -> bool:
    """A key came, as litellm sends it (``x-api-key``) or as the SDK does (``Authorization: Bearer``)."""
    return "x-api-key" in request.headers or request.headers.get("Authorization", "").startswith("Bearer ")


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(block.get("text", "") for block in content or [] if isinstance(block, dict))


def _error_body(status: int, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": ERROR_TYPES.get(status, "api_error"), "message": message}}
