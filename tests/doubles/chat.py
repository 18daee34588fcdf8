"""``/v1/chat/completions``: a request admitted, held, delayed or failed as its directives and the config say.

The answer is a ``chat.completion`` or its stream; the faults are error statuses (with Retry-After),
a quota 429 with x-ratelimit-* headers, a stall, a dropped connection, a broken or cut-off stream
or body, a 401 for a wrong key and a 429 "Resource Unavailable" for the flex tier.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from tests.doubles.answers import usage
from tests.doubles.chat_request import ChatRequest, InvalidRequestError, Reply, parse_chat_request, plan_reply
from tests.doubles.directives import STREAM_FAULTS, Fault
from tests.doubles.quota import QuotaDecision, decimal_seconds
from tests.doubles.state import ServerState
from tests.doubles.wire import SYSTEM_FINGERPRINT, completion_body, error_body, stream_chunks


def _bearer(request: web.Request) -> str | None:
    """The key in an ``Authorization: Bearer`` header (OpenAI's way), or None."""
    found = request.headers.get("Authorization", "")
    return found.removeprefix("Bearer ") if found.startswith("Bearer ") else None


def _hex(n: int) -> str:
    return secrets.token_hex(n)


def _seconds(value: float) -> str:
    return str(int(value)) if value == int(value) else str(value)


class ChatEndpoint(ServerState):
    """The chat handler and the responses it (and the other OpenAI endpoints) answer with."""

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        try:
            chat = parse_chat_request(await request.read(), request.headers)
        except InvalidRequestError as exc:
            self._count_rejected()
            return web.json_response(error_body(400, "", str(exc), exc.param), status=400)
        key = self._config.api_key
        if key is not None and key not in (_bearer(request), request.headers.get("api-key")):  # OpenAI's, Azure's
            return self._wrong_key(chat)
        reply = plan_reply(chat)
        limit = chat.token_limit
        charge = chat.prompt_estimate + (limit if limit is not None else reply.completion_tokens)
        plan = self._admit(chat, charge, request.remote)
        rate_headers = plan.quota.headers if plan.quota is not None else {}
        if plan.quota is not None and plan.quota.refused is not None:
            return self._quota_error(plan.quota, chat.info.model)
        if chat.tier == "flex" and self._flex_unavailable():
            return self._tier_unavailable(chat)
        await self._park_if_held(chat.key)
        await self._sleep(plan.latency_s)
        fault = plan.fault
        if fault is not None and fault.kind == "timeout":
            await self._sleep(fault.sleep)
            fault = None  # a client that waited this long gets a normal answer
        if fault is None or fault.kind in STREAM_FAULTS:
            return await self._answer(request, chat, reply, started, rate_headers, fault)
        if fault.kind == "drop":
            if request.transport is not None:
                request.transport.close()
            # aiohttp's write to the closed transport fails and it quietly abandons the connection.
            return web.Response()
        return self._error(fault, chat.info.model, rate_headers)

    def _flex_unavailable(self) -> bool:
        with self._lock:
            return self._rng.random() < self._config.p_flex_unavailable

    def _tier_unavailable(self, chat: ChatRequest) -> web.Response:
        """OpenAI's answer when the flex tier has no capacity: a 429 that is not a rate limit."""
        with self._lock:
            self._total += 1
            self._by_status["429"] += 1
            self._by_status["flex_unavailable"] += 1
            self._by_key[chat.key] += 1
            self._changed.notify_all()
        body = {"error": {"message": "Resource Unavailable: the flex tier has no capacity right now; try again "
                          "later or use the default tier.", "type": "resource_unavailable", "param": None,
                          "code": "resource_unavailable"}}  # fmt: skip
        return web.json_response(body, status=429, headers={"x-request-id": f"req_{_hex(16)}"})

    def _wrong_key(self, chat: ChatRequest) -> web.Response:
        """A 401 for a key other than ``api_key``, counted as an attempt of its message, like any refusal."""
        with self._lock:
            self._total += 1
            self._by_status["401"] += 1
            self._by_key[chat.key] += 1
            self._changed.notify_all()
        headers = {"x-request-id": f"req_{_hex(16)}"}
        return web.json_response(error_body(401, chat.info.model), status=401, headers=headers)

    def _error(self, fault: Fault, model: str, rate_headers: Mapping[str, str]) -> web.Response:
        status = int(fault.kind)
        headers = {"x-request-id": f"req_{_hex(16)}", **rate_headers}
        if fault.retry_after is not None:
            headers["Retry-After"] = _seconds(fault.retry_after)
        if fault.retry_after_ms is not None:
            headers["retry-after-ms"] = str(fault.retry_after_ms)
        return web.json_response(error_body(status, model), status=status, headers=headers)

    def _quota_error(self, quota: QuotaDecision, model: str) -> web.Response:
        headers = {"x-request-id": f"req_{_hex(16)}", **quota.headers}
        if quota.retry_after_ms is not None:
            headers["Retry-After"] = decimal_seconds(quota.retry_after_ms)
            headers["retry-after-ms"] = str(quota.retry_after_ms)
        body = error_body(429, model, quota.message)
        body["error"]["type"] = quota.refused
        return web.json_response(body, status=429, headers=headers)

    async def _answer(
        self,
        request: web.Request,
        chat: ChatRequest,
        reply: Reply,
        started: float,
        rate_headers: Mapping[str, str],
        fault: Fault | None,
    ) -> web.StreamResponse:
        totals = usage(chat.prompt_estimate, reply.completion_tokens)
        with self._lock:
            self._usage[chat.key] = totals
        head = {
            "id": f"chatcmpl-{_hex(12)}",
            "created": int(time.time()),
            "model": chat.info.model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "service_tier": chat.tier,  # the tier that served it, as OpenAI says
        }
        headers = {
            "x-request-id": f"req_{_hex(16)}",
            "openai-processing-ms": str(round((time.monotonic() - started) * 1000)),
            **rate_headers,
        }
        call_id = f"call_{_hex(12)}"
        if chat.info.stream:
            chunks = stream_chunks(head, reply, totals, chat.info.include_usage, chat.directives, call_id)
            return await self._stream(request, headers, chunks, fault)
        body = json.dumps(completion_body(head, reply, totals, call_id)).encode()
        if fault is None:
            return web.Response(body=body, content_type="application/json", headers=headers)
        return await self._broken_body(request, headers, body, fault)

    async def _stream(
        self, request: web.Request, headers: dict[str, str], chunks: list[dict[str, Any]], fault: Fault | None
    ) -> web.StreamResponse:
        events = [b"data: " + json.dumps(body).encode() + b"\n\n" for body in chunks]
        rest: list[bytes] = []
        if fault is not None and fault.kind == "stall":
            events, rest = events[: fault.after], [*events[fault.after :], b"data: [DONE]\n\n"]
        elif fault is not None:
            # truncate stops before the finish chunk whatever `after` says; the others may reach [DONE]'s place.
            finish_at = next(
                i for i, body in enumerate(chunks) if body["choices"] and body["choices"][0]["finish_reason"]
            )
            events = events[: min(fault.after, finish_at if fault.kind == "truncate" else len(events))]
        response = web.StreamResponse(
            headers={**headers, "Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        # A client that hangs up mid-stream is normal here; don't let aiohttp log it as a crash.
        with contextlib.suppress(ConnectionResetError):
            for event in events:
                await response.write(event)
            if rest:
                await self._sleep(fault.sleep if fault is not None else 0.0)
                for event in rest:
                    await response.write(event)
            elif fault is None:
                await response.write(b"data: [DONE]\n\n")
            elif fault.kind == "malformed":
                await response.write(b"data: {not json\n\n")
            elif fault.kind == "break":
                self._hang_up(request)
        return response

    async def _broken_body(
        self, request: web.Request, headers: dict[str, str], body: bytes, fault: Fault
    ) -> web.StreamResponse:
        """A non-streamed answer with a stream fault: its JSON body cut off or replaced."""
        if fault.kind == "malformed":
            return web.Response(body=b"{not json", content_type="application/json", headers=headers)
        if fault.kind == "end":  # a whole answer whose usage the server did not send
            without = {k: v for k, v in json.loads(body).items() if k != "usage"}
            return web.Response(body=json.dumps(without).encode(), content_type="application/json", headers=headers)
        if fault.kind == "truncate":
            return web.Response(body=body[: len(body) // 2], content_type="application/json", headers=headers)
        response = web.StreamResponse(headers={**headers, "Content-Type": "application/json"})
        response.content_length = len(body)
        await response.prepare(request)
        with contextlib.suppress(ConnectionResetError):
            await response.write(body[: len(body) // 2])
            if fault.kind == "stall":
                await self._sleep(fault.sleep)
                await response.write(body[len(body) // 2 :])
            else:
                self._hang_up(request)
        return response

    @staticmethod
    def _hang_up(request: web.Request) -> None:
        # close() flushes what was written, then the peer sees the connection end mid-body.
        if request.transport is not None:
            request.transport.close()
