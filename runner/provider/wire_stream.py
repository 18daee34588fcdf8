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
import litellm
import openai
import orjson
from litellm.litellm_core_utils.core_helpers import stamp_litellm_bill_on_usage
from litellm.llms.custom_httpx.aiohttp_transport import map_aiohttp_exceptions
from litellm.llms.openai.common_utils import OpenAIError

from runner.provider.wire_errors import mapped_where_raised, stream_ended, stream_failure

__all__ = ["WireStream"]


class WireStream:
    """The provider's chunks of one streamed answer, as dicts, in order; ``chunks`` keeps every one read."""

    def __init__(
        self,
        reply: aiohttp.ClientResponse,
        model: str,
        provider: str,
        url: str,
        headers: dict[str, str],
        sdk: bool = True,
        stamped: bool = True,
    ) -> None:
        # ``model`` and ``provider``: what litellm's stream wrapper is given (the model it names every chunk after,
        # and the provider it maps failures for: "openai" for every provider the openai SDK sends).
        self.headers = headers  # the response's, lower-case, as litellm keeps them
        self.chunks: list[dict[str, Any]] = []
        self._reply, self._model, self._provider, self._url = reply, model, provider, url
        self._sdk = sdk  # read as the openai SDK reads events, else as litellm's HTTP handler reads lines
        self._stamped = stamped  # litellm's wrapper writes the answer's cost into its usage
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
        except httpx.HTTPError as exc:
            self._done = True
            self._reply.close()
            if not self._sdk:  # litellm's stream wrapper keeps an answer whose finish reason came
                if self._finished and isinstance(exc, httpx.ReadError | httpx.RemoteProtocolError):
                    return
                raise self._failure(exc) from exc
            # the openai SDK's error for it, whatever had come (litellm keeps none)
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
            if self._sdk:
                self._line(line.rstrip(b"\r"))
            else:
                self._handler_line(line.rstrip(b"\r"))
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
        if data.startswith(b"[DONE]"):  # the openai SDK's stream stops there, as at the end of the body
            self._done = True
            if self.chunks and not self._finished:
                self._reply.release()
                raise self._failure(stream_ended())
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
        if _aborted(chunk):  # litellm's wrapper refuses an OpenAI chunk of a generation the server aborted
            self._done = True
            self._reply.close()
            refused = litellm.InternalServerError(message="Upstream generation aborted (finish_reason=abort)",
                                                  model=chunk.get("model"), llm_provider=self._provider)  # fmt: skip
            refused.message = str(refused)
            # the wrapper maps it once where it is raised, then on failing
            mapped = mapped_where_raised(refused, self._model, self._provider)
            raise self._failure(mapped) from mapped
        self._keep(chunk)

    def _handler_line(self, line: bytes) -> None:
        """One line as litellm's HTTP handler reads a stream (``BaseModelResponseIterator``,
        ``OpenAIChatCompletionStreamingHandler``): each non-blank line on its own, its ``data:`` taken off; a line
        that is not JSON is passed over (and after the finish reason ends the stream), as ``[DONE]`` is."""
        if not line.strip():
            return
        value = line[6:] if line.startswith(b"data: ") else line[5:] if line.startswith(b"data:") else line
        if value.strip() == b"[DONE]":  # to litellm's wrapper a finish ("stop"), if none came before
            if not self._finished and self.chunks:
                last = self.chunks[-1]
                self._keep({"id": last.get("id"), "object": "chat.completion.chunk", "created": last.get("created"),
                            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})  # fmt: skip
            self._done = True
            return
        try:
            chunk = orjson.loads(value)
        except orjson.JSONDecodeError:
            try:
                chunk = json.loads(value)
            except ValueError:
                chunk = None
        if not chunk:
            self._done = self._finished  # litellm's wrapper stops at a chunk without content once finished
            return
        failed = _handler_chunk_error(chunk)
        if failed is not None:
            self._done = True
            self._reply.close()
            raise self._failure(failed)
        self._keep(chunk)

    def _keep(self, chunk: dict[str, Any]) -> None:
        chunk["model"] = self._model  # litellm's wrapper names every chunk after the model it was given
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta")
            if isinstance(delta, dict) and "reasoning" in delta:  # litellm's name for it (GLM, vLLM send this one)
                delta["reasoning_content"] = delta.pop("reasoning")
            if choice.get("finish_reason") is not None:
                self._finished = True
        self.chunks.append(chunk)
        self._ready.append(chunk)

    def bill(self, response: Any) -> None:
        """Write the assembled answer's cost into its usage, as litellm's stream wrapper writes it into the usage
        chunk (``_stamp_usage_cost``): the body's ``usage.cost`` and the response's cost are the same either way.
        It writes none where litellm has no price for the model (``stamped``; a hosted_vllm server's)."""
        hidden = getattr(response, "_hidden_params", None) or {}
        cost, usage = hidden.get("response_cost"), getattr(response, "usage", None)
        if not self._stamped or usage is None or isinstance(cost, bool) or not isinstance(cost, int | float):
            return
        if cost <= 0 and not isinstance(getattr(usage, "cost", None), int | float):
            return
        stamp_litellm_bill_on_usage(response, usage, float(cost))

    def _failure(self, exc: Exception) -> Exception:
        generated = "".join(
            ((c.get("choices") or [{}])[0].get("delta") or {}).get("content") or "" for c in self.chunks
        )
        return stream_failure(exc, self._model, self._provider, bool(self.chunks), generated)


def _aborted(chunk: Any) -> bool:
    return isinstance(chunk, dict) and any(
        isinstance(c, dict) and c.get("finish_reason") == "abort" for c in chunk.get("choices") or ()
    )


def _handler_chunk_error(chunk: Any) -> Exception | None:
    """What litellm's OpenAI-wire stream parser raises for a chunk (``OpenAIChatCompletionStreamingHandler``): an
    error payload in a 200 stream, a generation the server aborted."""
    if not isinstance(chunk, dict):
        return AttributeError(f"'{type(chunk).__name__}' object has no attribute 'get'")
    error = chunk.get("error")
    if error:
        if not isinstance(error, dict):
            return OpenAIError(status_code=500, message=str(error))
        message, code = error.get("message"), error.get("code")
        status = code if isinstance(code, int) and 400 <= code < 600 else 500
        return OpenAIError(status_code=status, message=message if isinstance(message, str) else json.dumps(error))
    if _aborted(chunk):
        return OpenAIError(status_code=500, message="Upstream generation aborted (finish_reason=abort)")
    return None
