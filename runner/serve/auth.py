"""Who may look: the token ``runner serve`` asks for beyond loopback (or whenever ``--token`` is given).

The try-out spends the user's money with the user's key and the runs hold their inputs and answers,
so a server that other machines can reach answers 401, and nothing else, to any request without the
token: the page, the JSON API, both SSE streams, ``/metrics`` and the try-out alike. Bound to
loopback with no ``--token``, nothing is asked (this machine's users are trusted, as before).

A request carries the token in one of three ways:
- ``Authorization: Bearer TOKEN`` (scripts, Prometheus' ``authorization`` setting);
- ``?token=TOKEN`` in the URL (the link printed at start, as Jupyter does);
- the ``runner_token`` cookie, which a request authenticated by either of the above is given
  (HttpOnly, SameSite=Strict), so the page's own fetches and EventSource streams carry it and no
  other site's page can make a visitor's browser send it.

``/metrics`` also takes ``--metrics-token`` when one is given, so a Prometheus server can scrape
without holding the key to the try-out; that token opens nothing else. Tokens are compared in
constant time.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs

__all__ = ["COOKIE", "Auth", "TokenGate", "new_token"]

COOKIE = "runner_token"
METRICS_PATH = "/metrics"
_DENIED = b"401 Unauthorized: this runner serve needs its token (add ?token=... to the URL, as printed at start)\n"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


def new_token() -> str:
    """A fresh random token (192 bits), for a server started beyond loopback without ``--token``."""
    return secrets.token_urlsafe(24)


@dataclass(frozen=True)
class Auth:
    """The tokens a server asks for; None: not asked."""

    token: str | None = None
    metrics_token: str | None = None

    @property
    def on(self) -> bool:
        return self.token is not None or self.metrics_token is not None

    def allows(self, path: str, given: str | None) -> bool:
        """Whether a request for ``path`` carrying ``given`` may go on."""
        wanted = [self.token]
        if path == METRICS_PATH and self.metrics_token is not None:
            wanted.append(self.metrics_token)
        if all(w is None for w in wanted):
            return True  # only /metrics has a token, and this is not /metrics
        return given is not None and any(w is not None and secrets.compare_digest(given, w) for w in wanted)


class TokenGate:
    """ASGI middleware: 401 for any HTTP request without a token ``auth`` accepts."""

    def __init__(self, app: App, auth: Auth) -> None:
        self.app, self.auth = app, auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)  # lifespan
            return
        given, from_cookie = _token_of(scope)
        path = scope.get("path", "")
        if not self.auth.allows(path, given):
            if scope["type"] == "websocket":  # none are served today; none gets past without the token either
                await send({"type": "websocket.close", "code": 1008})
            else:
                await _deny(send)
            return
        if scope["type"] == "websocket":
            await self.app(scope, receive, send)
            return
        if given is None or from_cookie or path == METRICS_PATH or given != self.auth.token:
            await self.app(scope, receive, send)
            return

        async def with_cookie(message: Message) -> None:
            if message["type"] == "http.response.start":
                cookie = f"{COOKIE}={given}; Path=/; HttpOnly; SameSite=Strict"
                message["headers"] = [*message.get("headers", []), (b"set-cookie", cookie.encode())]
            await send(message)

        await self.app(scope, receive, with_cookie)


def _token_of(scope: Scope) -> tuple[str | None, bool]:
    """The token a request carries (header, then URL, then cookie), and whether it came from the cookie."""
    cookies = None
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            kind, _, token = value.decode("latin-1").partition(" ")
            if kind.lower() == "bearer" and token.strip():
                return token.strip(), False
        elif name == b"cookie":
            cookies = value.decode("latin-1")
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    if query.get("token"):
        return query["token"][0], False
    if cookies:
        jar: SimpleCookie = SimpleCookie()
        try:
            jar.load(cookies)
        except Exception:  # a malformed Cookie header is no token
            return None, False
        if COOKIE in jar:
            return jar[COOKIE].value, True
    return None, False


async def _deny(send: Send) -> None:
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"www-authenticate", b"Bearer"),
               (b"content-length", str(len(_DENIED)).encode()), (b"cache-control", b"no-store")]  # fmt: skip
    await send({"type": "http.response.start", "status": 401, "headers": headers})
    await send({"type": "http.response.body", "body": _DENIED})
