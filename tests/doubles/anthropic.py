"""The test server's Anthropic API: ``/v1/messages`` and Message Batches, in Anthropic's wire format:
the routes and each batch's work.

Mounted by ``tests/doubles/server.py`` at the server's root (litellm and the anthropic SDK both add
``/v1/...`` to an ``api_base`` of ``http://127.0.0.1:PORT``). A Messages body is answered with the
chat fake's own logic, framed as an Anthropic message (``anthropic_wire``); ``times`` counts attempts
of a message per lane (online, batch). Batches follow
the documented API: ``POST /v1/messages/batches`` (``requests: [{custom_id, params}]``), ``GET``
one, ``GET`` the list (newest first, ``after_id``/``before_id``/``limit``, ``has_more``,
``first_id``/``last_id``), ``GET .../results`` (JSONL, not in input order), ``POST .../cancel``;
``processing_status`` in_progress | canceling | ended and ``request_counts`` {processing,
succeeded, errored, canceled, expired}; ``results_url`` once ended. Every request is checked for
Anthropic's rules (a ``custom_id`` of ``^[a-zA-Z0-9_-]{1,64}$``, unique in its batch; ``model``,
``max_tokens`` and ``messages`` in every body; a key in ``x-api-key`` or ``Authorization``).
The faults ``configure`` sets, and the state, are in ``anthropic_state``.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from aiohttp import web

from tests.doubles.anthropic_state import AnthropicConfig, AnthropicLedger, AnthropicStats, Batch
from tests.doubles.anthropic_wire import CUSTOM_ID, answer, authorized, error, new_id, stamp

__all__ = ["AnthropicConfig", "AnthropicStats", "FakeAnthropic"]


class FakeAnthropic(AnthropicLedger):
    """Messages and Message Batches for one FakeServer; handlers run on its loop, tests read from any thread."""

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

    async def _messages(self, request: web.Request) -> web.Response:
        if not authorized(request):
            return error(401, "x-api-key header is required")
        body = await request.json()
        with self._lock:
            self._online += 1
            self.bodies.append(body)
            self._changed.notify_all()
        status, message = answer(body, "online", self._attempt)
        return web.json_response(message, status=status)

    # -- batches -----------------------------------------------------------------------

    async def _create(self, request: web.Request) -> web.Response:
        if not authorized(request):
            return error(401, "x-api-key header is required")
        if self.config.refuse is not None:
            return error(self.config.refuse, "injected refusal")
        body = await request.json()
        requests = body.get("requests")
        if not isinstance(requests, list) or not requests:
            return error(400, "requests: must be a non-empty list")
        ids = [r.get("custom_id") for r in requests]
        bad = [i for i in ids if not isinstance(i, str) or not CUSTOM_ID.match(i)]
        if bad or len(set(ids)) != len(ids):
            return error(400, f"requests: custom_id must match ^[a-zA-Z0-9_-]{{1,64}}$ and be unique: {bad[:3]}")
        for r in requests:
            params = r.get("params") or {}
            if not all(k in params for k in ("model", "max_tokens", "messages")):
                return error(400, f"requests.{r['custom_id']}.params: model, max_tokens and messages are required")
        now = time.time()
        counts = {"processing": len(requests), "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        obj: dict[str, Any] = {"id": new_id("msgbatch_"), "type": "message_batch", "processing_status": "in_progress",
                               "request_counts": counts, "ended_at": None, "created_at": stamp(now),
                               "expires_at": stamp(now + 86400), "archived_at": None, "cancel_initiated_at": None,
                               "results_url": None}  # fmt: skip
        batch, config = Batch(obj, requests), self.config
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

    async def _work(self, batch: Batch, config: AnthropicConfig, origin: str) -> None:
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
            status, message = answer(r["params"], "batch", self._attempt)
            if status == 200:
                results.append({"custom_id": r["custom_id"], "result": {"type": "succeeded", "message": message}})
                counts["succeeded"] += 1
            else:
                results.append({"custom_id": r["custom_id"], "result": {"type": "errored", "error": message}})
                counts["errored"] += 1
        results.reverse()  # not in input order, as Anthropic says
        with self._lock:
            self._lines += answered
            batch.results = results
            batch.obj.update(processing_status="ended", request_counts=counts, ended_at=stamp(time.time()),
                             results_url=f"{origin}/v1/messages/batches/{batch.obj['id']}/results")  # fmt: skip
            self._changed.notify_all()

    def _get(self, request: web.Request) -> Batch | None:
        with self._lock:
            return self._batches.get(request.match_info["id"])

    async def _retrieve(self, request: web.Request) -> web.Response:
        batch = self._get(request)
        return web.json_response(batch.obj) if batch else error(404, "batch not found")

    async def _list(self, request: web.Request) -> web.Response:
        if self.config.refuse is not None:
            return error(self.config.refuse, "injected refusal")
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
            return error(404, "batch not found")
        if batch.obj["processing_status"] != "ended":
            return error(400, "batch is still processing; results are available once it has ended")
        await self._serve_results(batch.obj["id"])
        body = b"".join(json.dumps(r).encode() + b"\n" for r in batch.results)
        return web.Response(body=body, content_type="application/binary")

    async def _cancel(self, request: web.Request) -> web.Response:
        batch = self._get(request)
        if batch is None:
            return error(404, "batch not found")
        with self._lock:
            if batch.obj["processing_status"] == "in_progress":
                batch.obj.update(processing_status="canceling", cancel_initiated_at=stamp(time.time()))
                self._cancelled += 1
                loop = self.server._loop
                if loop is not None:
                    loop.call_soon_threadsafe(batch.stop.set)
                self._changed.notify_all()
            return web.json_response(batch.obj)
