"""An in-process model for ``Caller.complete``: answers and failures you enqueue, requests it saw.

    model = ScriptedModel().enqueue(["bug", rate_limited(retry_after=30), server_error(), "feature"])
    caller = Caller(job=job, policy=policy, timeout=5.0, complete=model)

Each call takes the next item of the script: a string is the answer's text (made by litellm's own
``mock_response``, so it is a real chat.completion ``ModelResponse`` with usage and cost), a
``ModelResponse`` is returned as it is, an exception is raised (use the helpers below: litellm's
real exception classes with a status code and headers, as its OpenAI client raises them). With the
script empty, ``default(request)`` answers: by default the fake provider's keyword label.

For the paths HTTP can't reach cheaply (a writer that dies mid-run): ``hold(after=N)`` parks every
call after the next N until ``release``; ``wait_until`` waits for a count without polling. Every
call yields to the loop at least once, as a network call would.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import httpx
import litellm
from litellm import ModelResponse

from tests.doubles.answers import classify

__all__ = [
    "ScriptedModel",
    "VirtualTime",
    "auth_failed",
    "bad_request",
    "rate_limited",
    "server_error",
    "timed_out",
]

Item = str | ModelResponse | BaseException
URL = "https://api.openai.com/v1/chat/completions"  # only named in the fake responses; never called
PROVIDER, MODEL = "openai", "gpt-4o-mini"


def keyword_label(request: dict[str, Any]) -> str:
    """The label the fake provider would answer for the request's last user message."""
    users = [m for m in request["messages"] if m.get("role") == "user"]
    content = users[-1]["content"] if users else ""
    return classify(content if isinstance(content, str) else str(content))


class ScriptedModel:
    """A completion function that plays a script; ``requests`` holds every request it received."""

    def __init__(self, default: Callable[[dict[str, Any]], Item] | None = keyword_label) -> None:
        self.script: deque[Item] = deque()
        self.requests: list[dict[str, Any]] = []
        self.default = default
        self._free: int | None = None  # calls still answered at once while holding; None: not holding
        self._parked: deque[asyncio.Future[None]] = deque()
        self._waiters: list[tuple[Callable[[ScriptedModel], bool], asyncio.Future[None]]] = []

    def enqueue(self, items: Iterable[Item]) -> ScriptedModel:
        """Append answers and failures to the script, in the order calls will get them."""
        self.script.extend(items)
        return self

    @property
    def parked(self) -> int:
        """Calls waiting for ``release`` right now."""
        return sum(not f.done() for f in self._parked)

    def hold(self, after: int = 0) -> None:
        """Answer the next ``after`` calls as usual, then park every later one until ``release``."""
        self._free = after

    def release(self, n: int | None = None) -> None:
        """Let the ``n`` longest-parked calls go (all if None); with None, hold no more."""
        if n is None:
            self._free = None
        while self._parked and (n is None or n > 0):
            future = self._parked.popleft()
            if not future.done():
                future.set_result(None)
                n = None if n is None else n - 1

    async def wait_until(self, condition: Callable[[ScriptedModel], bool]) -> None:
        """Return once ``condition(self)`` holds; checked on every call and every park."""
        if condition(self):
            return
        future = asyncio.get_running_loop().create_future()
        self._waiters.append((condition, future))
        await future

    async def __call__(self, **request: Any) -> Any:
        """One completion: the script's next item (taken when the call arrives), or the default."""
        if request.get("stream"):
            raise NotImplementedError("ScriptedModel does not stream")
        self.requests.append(request)
        item = self.script.popleft() if self.script else self._default(request)
        if self._free is not None:
            if self._free > 0:
                self._free -= 1
            else:
                future = asyncio.get_running_loop().create_future()
                self._parked.append(future)
                self._changed()
                await future
        self._changed()
        await asyncio.sleep(0)  # a network call yields at least once; so does this one
        if isinstance(item, BaseException):
            raise item
        if isinstance(item, ModelResponse):
            return item
        return await litellm.acompletion(model=request["model"], messages=request["messages"], mock_response=item)

    def _default(self, request: dict[str, Any]) -> Item:
        if self.default is None:
            raise AssertionError(f"ScriptedModel: the script ran out at call {len(self.requests)}")
        return self.default(request)

    def _changed(self) -> None:
        for waiter in list(self._waiters):
            condition, future = waiter
            if future.done() or condition(self):
                self._waiters.remove(waiter)
                if not future.done():
                    future.set_result(None)


def _response(status: int, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, headers=headers or {}, request=httpx.Request("POST", URL))


def rate_limited(retry_after: float | None = None) -> litellm.RateLimitError:
    """A 429, with a Retry-After header (seconds) if given."""
    headers = {"retry-after": f"{retry_after:g}"} if retry_after is not None else {}
    message = "Rate limit reached for gpt-4o-mini on requests per min (RPM) (scripted)"
    return litellm.RateLimitError(message, PROVIDER, MODEL, response=_response(429, headers))


def server_error() -> litellm.InternalServerError:
    """A 500."""
    message = "The server had an error while processing your request (scripted)"
    return litellm.InternalServerError(message, PROVIDER, MODEL, response=_response(500))


def auth_failed() -> litellm.AuthenticationError:
    """A 401: every request would fail the same way."""
    message = "Incorrect API key provided (scripted)"
    return litellm.AuthenticationError(message, PROVIDER, MODEL, response=_response(401))


def bad_request(message: str = "Invalid value for 'messages' (scripted)") -> litellm.BadRequestError:
    """A 400: this request will never work."""
    return litellm.BadRequestError(message, MODEL, PROVIDER, response=_response(400))


def timed_out() -> litellm.Timeout:
    """The request timed out."""
    return litellm.Timeout("Request timed out (scripted)", MODEL, PROVIDER)


class VirtualTime:
    """A clock that only moves when ``sleep`` is awaited: for RetryPolicy.sleep and the limits' clock.

    ``sleep`` records every wait, moves the clock by it and yields once, so back-off and Retry-After
    pauses cost no real time.
    """

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        """The current virtual time."""
        return self.now

    async def sleep(self, seconds: float) -> None:
        """Record ``seconds`` and jump ahead by it."""
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)
