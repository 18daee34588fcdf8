"""A streamed chat answer read straight off the wire: server-sent events parsed with orjson, chunk by chunk.

``WireStream`` is what ``wire.Sender`` returns for a streamed request: an async iterator of the
provider's ``chat.completion.chunk`` objects as plain dicts, yielded as they arrive (so the time to
the first token is the wire's), which ``runner.provider.provider.collect_stream`` assembles with
``litellm.stream_chunk_builder`` exactly as it assembles litellm's own stream. Where it ends, it ends
as litellm's stream wrapper would (``runner.provider.wire_errors.stream_failure``): a broken
connection, a read time-out, a chunk that is not JSON, an error event, or a clean end before any
finish reason raise what the wrapper raises; a stream that ends after its finish reason is an answer
(without its usage chunk, one whose usage litellm estimates); a stream with no event at all is
returned empty, as litellm returns it, for ``collect_stream`` to refuse.
"""

from __future__ import annotations

import collections
import json
from typing import Any

import aiohttp
import httpx
import httpx2
import openai
import orjson
from litellm.litellm_core_utils.core_helpers import stamp_litellm_bill_on_usage
from litellm.llms.custom_httpx.aiohttp_transport import map_aiohttp_exceptions

from runner.provider.wire_errors import stream_ended, stream_failure

__all__ = ["WireStream", "bill"]


class WireStream:
    """The provider's chunks of one streamed answer, as dicts, in order; ``chunks`` keeps every one read."""

    def __init__(
        self, reply: aiohttp.ClientResponse, model: str, provider: str, url: str, headers: dict[str, str]
    ) -> None:
        self.headers = headers  # the response's, lower-case, as litellm keeps them
        self.chunks: list[dict[str, Any]] = []
        self._reply, self._model, self._provider, self._url = reply, model, provider, url
        self._ready: collections.deque[dict[str, Any]] = collections.deque()
        self._buffer = b""
        self._data: list[bytes] = []  # the data lines of the event being read
        self._finished = False  # a finish reason came
        self._done = False  # [DONE], or the end of the body

    def __aiter__(self) -> WireStream:
        return self

    async def __anext__(self) -> dict[str, Any]:
        while not self._ready:
            if self._done:
                raise StopAsyncIteration
            await self._read()
        return self._ready.popleft()

    async def aclose(self) -> None:
        """Give the connection back (read to its end) or close it (anything else)."""
        self._done = True
        if not self._reply.closed:
            self._reply.close()

    async def _read(self) -> None:
        try:
            with map_aiohttp_exceptions():  # aiohttp's errors as httpx's, as litellm's transport raises them
                data = await self._reply.content.readany()
        except httpx.HTTPError as exc:  # the openai SDK's error for it, whatever had come (litellm keeps none)
            self._done = True
            self._reply.close()
            kind = openai.APITimeoutError if isinstance(exc, httpx.TimeoutException) else openai.APIConnectionError
            lost = kind(request=httpx2.Request("POST", self._url))
            lost.__cause__ = exc
            raise self._failure(lost) from lost
        if not data:
            self._done = True
            self._reply.release()
            if self.chunks and not self._finished:
                raise self._failure(stream_ended())
            return
        lines = (self._buffer + data).split(b"\n")
        self._buffer = lines.pop()
        for line in lines:
            self._line(line.rstrip(b"\r"))
            if self._done:
                self._reply.release()
                return

    def _line(self, line: bytes) -> None:
        """One line of the event stream: a data line is kept, a blank line ends the event (SSE)."""
        if line.startswith(b"data:"):
            value = line[5:]
            self._data.append(value[1:] if value.startswith(b" ") else value)
        elif not line and self._data:
            data, self._data = b"\n".join(self._data), []
            self._event(data)

    def _event(self, data: bytes) -> None:
        if data.startswith(b"[DONE]"):
            self._done = True
            return
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            try:
                chunk = json.loads(data)  # the openai SDK's parser, so a broken chunk fails with its message
            except ValueError as exc:
                self._done = True
                self._reply.close()
                raise self._failure(exc) from exc
        if isinstance(chunk, dict) and chunk.get("error"):  # an error event, as the openai SDK raises it
            self._done = True
            self._reply.close()
            error = chunk["error"]
            message = error.get("message") if isinstance(error, dict) else None
            failed = openai.APIError(message or "An error occurred during streaming",
                                     httpx2.Request("POST", self._url), body=error)  # fmt: skip
            raise self._failure(failed) from failed
        for choice in chunk.get("choices") or ():
            if choice.get("finish_reason") is not None:
                self._finished = True
        self.chunks.append(chunk)
        self._ready.append(chunk)

    def _failure(self, exc: Exception) -> Exception:
        generated = "".join(
            ((c.get("choices") or [{}])[0].get("delta") or {}).get("content") or "" for c in self.chunks
        )
        return stream_failure(exc, self._model, self._provider, bool(self.chunks), generated)


def bill(response: Any) -> None:
    """Write the assembled answer's cost into its usage, as litellm's stream wrapper writes it into the usage
    chunk (``_stamp_usage_cost``): the body's ``usage.cost`` and the response's cost are the same either way."""
    hidden = getattr(response, "_hidden_params", None) or {}
    cost, usage = hidden.get("response_cost"), getattr(response, "usage", None)
    if usage is None or isinstance(cost, bool) or not isinstance(cost, int | float):
        return
    if cost <= 0 and not isinstance(getattr(usage, "cost", None), int | float):
        return
    stamp_litellm_bill_on_usage(response, usage, float(cost))
