"""Sending the same requests the short way (runner.provider.wire) and through litellm, and comparing what came back."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import orjson

from runner.call.caller import Caller
from runner.call.retry import RetryPolicy
from runner.errors import FatalProviderError, InvalidResult
from runner.job.definition import Job, first_choice
from runner.permits.limits import Limits
from runner.provider.provider import Complete, aclose
from runner.rows import Row

MODEL = "openai/gpt-4o-mini"
# The providers that go the short way, each answering as litellm's handler for it does (runner/provider/wire.py).
PROVIDERS = ["openai", "hosted_vllm", "litellm_proxy", "azure"]
TOOLS = [{"type": "function", "function": {"name": "label", "parameters": {
    "type": "object", "properties": {"label": {"type": "string"}}, "required": ["label"]}}}]  # fmt: skip
SCHEMA = {"type": "json_schema", "json_schema": {"name": "answer", "strict": True, "schema": {
    "type": "object", "properties": {"label": {"type": "string"}}, "required": ["label"]}}}  # fmt: skip


def user_turn(text: str) -> list[dict[str, str]]:
    """A system prompt, then ``text`` as the user's turn."""
    return [{"role": "system", "content": "Label the ticket."}, {"role": "user", "content": text}]


def on(provider: str, rows: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    """``rows`` for ``MODEL``'s name through litellm's ``provider``."""
    model = f"{provider}/{MODEL.removeprefix('openai/')}"
    return [(name, {**request, "model": model}) for name, request in rows]


FATAL = [
    ("authentication", {"messages": user_turn("x [[fail:401]]")}),
    ("permission", {"messages": user_turn("x [[fail:403]]")}),
    ("not_found", {"messages": user_turn("x [[fail:404]]")}),
]


def _parse(body: Mapping[str, Any]) -> Any:
    """The label, from a tool call's arguments, a JSON answer, or the text."""
    message = first_choice(body).get("message") or {}
    calls = message.get("tool_calls")
    if calls:
        return orjson.loads(calls[0]["function"]["arguments"])["label"]
    text = message.get("content") or ""
    label = orjson.loads(text)["label"] if text.startswith("{") else text
    if label not in ("bug", "feature", "billing", "other"):
        raise InvalidResult(f"not a label: {label!r}")
    return label


JOB = Job(name="wire", build_request=lambda record: dict(record["request"]), parse_result=_parse, model=MODEL)


class Counted:
    """A completion function that counts its calls (to see which way a request went)."""

    def __init__(self, complete: Complete) -> None:
        self.complete, self.calls = complete, 0

    async def __call__(self, **request: Any) -> Any:
        self.calls += 1
        return await self.complete(**request)


def caller_with(api_base: str, complete: Complete, waits: list[float], max_attempts: int = 3) -> Caller:
    """A Caller of ``JOB`` sending through ``complete``, whose retry waits are noted in ``waits`` (not slept)."""

    async def sleep(seconds: float) -> None:
        waits.append(round(seconds, 3))

    policy = RetryPolicy(max_attempts=max_attempts, base_wait=0.01, max_wait=0.05, sleep=sleep, rng=lambda: 0.5)
    return Caller(job=JOB, policy=policy, timeout=1.0, api_base=api_base, complete=complete, limits=Limits(8))


_TIMING = re.compile(r"time taken=[0-9.]+ seconds")
# An answer quoted in an error message (litellm's HTTP handler quotes a body that is not JSON) has its own id and time.
_QUOTED = re.compile(r'chatcmpl-[0-9a-zA-Z]+|"created": [0-9]+')


# litellm's mapping ends an azure connection error's message ("AzureException APIConnectionError - <message>") with
# the traceback being handled when it maps it (``traceback.format_exc()``): frames of litellm's stream wrapper one
# way, of the short way the other. A message cut short (a record keeps its start) may end inside one.
_TRACEBACK = re.compile(r"(APIConnectionError - [^\n]*)\n.*?(?=\n Original exception:|\Z)", re.S)


def _untimed(message: str) -> str:
    return _TRACEBACK.sub(r"\1\n<traceback>", _QUOTED.sub("ID", _TIMING.sub("time taken=T seconds", message)))


def comparable(outcome: Any) -> Any:
    """A record (or a fatal error's text) without what differs between two sends of one request:
    ids, times and the time a time-out took."""
    if isinstance(outcome, str):
        return _untimed(outcome)
    line = orjson.loads(orjson.dumps(outcome.line))
    meta = line["meta"]
    for key in ("latency_s", "finished_at"):
        assert meta.pop(key, None) is not None or not outcome.ok
    response = line.get("response")
    if response is not None:
        assert response.pop("request_id", "") != ""
        body = response["body"]
        assert body.pop("id").startswith("chatcmpl-") and body.pop("created") > 0
        for choice in body["choices"]:
            for call in choice["message"].get("tool_calls") or []:
                assert call.pop("id").startswith("call_")
    if line.get("error"):
        line["error"]["message"] = _untimed(line["error"]["message"])
    return line


async def send_all(caller: Caller, rows: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """Each named request's record (or its fatal error's text), sent one after another."""
    got: dict[str, Any] = {}
    try:
        for n, (name, request) in enumerate(rows, start=1):
            try:
                got[name] = await caller(Row(n, name, {"request": request}))
            except FatalProviderError as exc:
                got[name] = str(exc)
    finally:
        await aclose()  # this test's loop ends with it, as a run closes its clients at its end
    return got
