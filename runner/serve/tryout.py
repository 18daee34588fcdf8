"""One record through a job, streamed: the batch's exact request, its answer delta by delta, the job's result.

``prepare`` builds the request ``runner run`` would send for the record (model, keys, api_base,
time-out, response_format; ``max_retries=0``) and forces ``stream=True`` with
``stream_options={"include_usage": True}``, so the last chunk carries the usage. ``stream`` then
yields one ``delta`` per piece of content as it arrives, and a ``final`` event built from the whole
stream (``stream_chunk_builder``, via ``provider.collect_stream``): usage, cost, finish reason and
the job's parsed result, or why the job rejected the answer. A provider error, before or during the
stream, is one ``error`` event: never an exception and never a stream left hanging. Unlike a batch,
a try-out is not retried and a rejected answer is not re-asked: it shows the first answer as it is.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from runner.call.caller import Caller
from runner.call.retry import RetryPolicy
from runner.errors import RowError
from runner.job.definition import Job, first_choice
from runner.job.endpoints import ENDPOINT
from runner.provider.failures import classify
from runner.provider.provider import Complete, acompletion, answer_from, collect_stream
from runner.records import NO_RESULT
from runner.redact import redact
from runner.run.source import Row, custom_id_for

__all__ = ["Prepared", "TryEvent", "prepare", "stream"]


@dataclass(frozen=True)
class Prepared:
    """A record's request, ready to send, and the caller that parses its answer."""

    caller: Caller
    row: Row
    request: dict[str, Any]


@dataclass(frozen=True, slots=True)
class TryEvent:
    """``delta`` ({"delta": text}), ``final`` or ``error`` ({"error": {code, message, status}})."""

    kind: str
    data: dict[str, Any]


def prepare(job: Job, record: dict[str, Any], model: str | None = None, api_base: str | None = None) -> Prepared:
    """The streamed request ``runner run`` would send for ``record``.

    Raises UsageError for a missing key or an unknown model, RowError when the job cannot build a
    request from the record. May import the job's local model: call it off the event loop.
    """
    caller = Caller(job=job, policy=RetryPolicy(max_attempts=1), timeout=job.timeout, model=model, api_base=api_base)
    custom_id = custom_id_for(record, job.id_field) or "try"
    row = Row(line=1, custom_id=custom_id, record=record)
    request, meta = caller.request(row)
    if request is None:
        error = meta["error"]
        raise RowError(error["code"], error["message"])
    if ENDPOINT in request:  # streaming is chat's alone
        raise RowError("unsupported_url", f"the try-out streams chat answers; {request[ENDPOINT]} can't be streamed")
    request["stream"] = True
    request["stream_options"] = {**(request.get("stream_options") or {}), "include_usage": True}
    return Prepared(caller, row, request)


async def stream(
    prepared: Prepared, complete: Complete = acompletion, clock: Callable[[], float] = time.monotonic
) -> AsyncGenerator[TryEvent, None]:
    """The answer's content deltas as they arrive, then one ``final`` event, or one ``error`` event."""
    request = prepared.request
    started = clock()
    first: float | None = None
    chunks: list[Any] = []
    response: Any = None
    try:
        response = await complete(**request)
        async for chunk in response:
            chunks.append(chunk)
            delta = _content(chunk)
            if delta:
                first = clock() - started if first is None else first
                yield TryEvent("delta", {"delta": delta})
        # collect_stream checks the stream was whole and assembles it with stream_chunk_builder.
        built, _ = await collect_stream(_Replay(chunks, response), request["messages"], started, clock)
    except Exception as exc:  # every provider failure, typed or not, ends as one error event
        failure = classify(exc)
        error = {"code": failure.code, "message": failure.message, "status": failure.status}
        yield TryEvent("error", {"error": error})
        return
    finally:
        if response is not None and hasattr(response, "aclose"):
            await response.aclose()
    yield TryEvent("final", _final(prepared, built, first, clock() - started))


def _content(chunk: Any) -> str:
    choices = getattr(chunk, "choices", None) or []
    delta = getattr(choices[0], "delta", None) if choices else None
    return getattr(delta, "content", None) or ""  # None on the role, finish and usage chunks


def _final(prepared: Prepared, built: Any, first: float | None, elapsed: float) -> dict[str, Any]:
    answer = answer_from(built)
    choice = first_choice(answer.body)
    final: dict[str, Any] = {
        "custom_id": prepared.row.custom_id,
        "model": prepared.request["model"],
        "content": (choice.get("message") or {}).get("content"),
        "finish_reason": choice.get("finish_reason"),
        "usage": answer.body.get("usage"),
        "cost_usd": answer.cost_usd,
        "ttft_s": round(first, 3) if first is not None else None,
        "latency_s": round(elapsed, 3),
        "result": None,
        "result_error": None,
    }
    try:
        result = prepared.caller.parse(answer.body)
        final["result"] = None if result is NO_RESULT else result
    except RowError as exc:
        final["result_error"] = {"code": exc.code, "message": exc.message}
    except Exception as exc:
        message = redact(f"the job's parse_result failed: {type(exc).__name__}: {exc}")
        final["result_error"] = {"code": "parse_failed", "message": message}
    return final


class _Replay:
    """Chunks already read, as the async iterator ``collect_stream`` expects (headers kept)."""

    def __init__(self, chunks: Iterable[Any], source: Any) -> None:
        self._chunks = iter(chunks)
        self._hidden_params = getattr(source, "_hidden_params", None)

    def __aiter__(self) -> _Replay:
        return self

    async def __anext__(self) -> Any:
        try:
            return next(self._chunks)
        except StopIteration:
            raise StopAsyncIteration from None
