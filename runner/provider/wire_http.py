"""The short way's HTTP: one aiohttp session per event loop, proxies and credentials as litellm finds them.

Shared by the short way's chat, streamed chat (``runner.provider.wire``) and embeddings requests
(``runner.provider.wire_embed``).
"""

from __future__ import annotations

import asyncio
import functools
import os
import urllib.parse
import urllib.request
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
import litellm

__all__ = [
    "Route",
    "aclose",
    "env_base",
    "env_key",
    "litellm_leaves_calls_alone",
    "lowered",
    "proxy",
    "route",
    "session",
    "timeouts",
]

# One per event loop (the coordinator's, each Ray worker's, a test's); a loop that is gone takes its own.
_sessions: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aiohttp.ClientSession] = weakref.WeakKeyDictionary()


def session() -> aiohttp.ClientSession:
    """This event loop's session: one connection pool, unlimited (runner's permits bound concurrency)."""
    loop = asyncio.get_running_loop()
    found = _sessions.get(loop)
    if found is None or found.closed:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
        # trust_env=False: aiohttp would otherwise look .netrc up in a thread for every request; proxies
        # come from the environment as litellm's transport reads them (``proxy``).
        found = _sessions[loop] = aiohttp.ClientSession(connector=connector, json_serialize=None)  # type: ignore[arg-type]
    return found


@functools.lru_cache(maxsize=256)
def proxy(url: str) -> str | None:
    """The proxy for a URL from HTTP(S)_PROXY/ALL_PROXY and NO_PROXY, read once per URL, as litellm does."""
    split = urllib.parse.urlsplit(url)
    scheme, host = split.scheme, split.hostname or ""
    if litellm.disable_aiohttp_trust_env or os.getenv("DISABLE_AIOHTTP_TRUST_ENV", "").lower() in ("true", "1"):
        return None
    if urllib.request.proxy_bypass(host):
        return None
    proxies = urllib.request.getproxies()
    found = proxies.get(scheme) or proxies.get("all")
    return f"http://{found}" if found and "://" not in found else found


def litellm_leaves_calls_alone() -> bool:
    """Whether litellm's global settings leave a call as it is sent (no TLS override, extra headers or
    callbacks): else the short way would send something else than litellm does. The "cache" callback
    does nothing while ``litellm.cache`` is unset, and importing litellm's Gemini context caching adds it
    (its module makes a ``Cache``): a run that once called a gemini/ model keeps the short way."""
    idle = ("cache",) if litellm.cache is None else ()
    success = [c for c in litellm.success_callback if c not in idle]
    return litellm.ssl_verify is True and not (litellm.headers or litellm.callbacks or success)


async def aclose() -> None:
    """Close this event loop's session (the next call opens a new one)."""
    found = _sessions.pop(asyncio.get_running_loop(), None)
    if found is not None:
        await found.close()


# Where litellm finds a provider's server and key when the call names none: its environment variables, in
# the order litellm 1.110 reads them (``get_openai_compatible_provider_info``; for Anthropic
# ``AnthropicModelInfo.resolve_anthropic_api_base``, for Gemini ``main.completion``), and the key a
# self-hosted vLLM server gets by default. The short way sends to the OpenAI-wire ones; the Batch API
# services find every provider's server here (``env_base``), as the online call to it does.
_ENV: Final = {
    "openai": (("OPENAI_BASE_URL", "OPENAI_API_BASE"), ("OPENAI_API_KEY",), None),
    "hosted_vllm": (("HOSTED_VLLM_API_BASE",), ("HOSTED_VLLM_API_KEY",), "fake-api-key"),
    "litellm_proxy": (("LITELLM_PROXY_API_BASE",), ("LITELLM_PROXY_API_KEY",), None),
    "anthropic": (("ANTHROPIC_API_BASE", "ANTHROPIC_BASE_URL"), ("ANTHROPIC_API_KEY",), None),
    "gemini": (("GEMINI_API_BASE",), ("GOOGLE_API_KEY", "GEMINI_API_KEY"), None),
}


def env_base(provider: str) -> str | None:
    """The server litellm sends ``provider``'s calls to when no ``api_base`` is given (None: its default)."""
    bases = _ENV[provider][0] if provider in _ENV else ()
    return next((os.environ[v] for v in bases if os.environ.get(v)), None)


def env_key(provider: str) -> str | None:
    """The key litellm sends with ``provider``'s calls when none is given (None: none is set)."""
    keys = _ENV[provider][1] if provider in _ENV else ()
    return next((os.environ[v] for v in keys if os.environ.get(v)), None)


@dataclass(frozen=True, slots=True)
class Route:
    """Where one request goes the short way: the name sent, litellm's provider, the server and the key."""

    name: str
    provider: str
    base: str
    key: str | None

    def url(self, path: str) -> str:
        """The URL of ``path`` (e.g. ``/chat/completions``) on this route's server."""
        return self.base.rstrip("/") + path

    def headers(self) -> dict[str, str]:
        """The request's headers, as the openai SDK sends them (the organization for OpenAI's own)."""
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        organization = litellm.organization or os.environ.get("OPENAI_ORGANIZATION")
        if organization and self.provider == "openai":
            headers["OpenAI-Organization"] = organization
        return headers


def route(request: Mapping[str, Any], name: str, provider: str) -> Route | None:
    """The route of a request to ``provider``, its server and key from the request or where litellm looks
    for them (its globals, the environment); None when there is no server to send it to."""
    default_key = _ENV[provider][2]
    base = request.get("api_base") or env_base(provider)
    key = request.get("api_key") or env_key(provider) or default_key
    if provider == "openai":
        base = request.get("api_base") or litellm.api_base or base or "https://api.openai.com/v1"
        key = request.get("api_key") or litellm.api_key or litellm.openai_key or key
    if not base or (key is None and provider != "openai"):
        return None  # litellm says what is missing
    return Route(name, provider, base, key)


def timeouts(request: Mapping[str, Any]) -> tuple[float | None, aiohttp.ClientTimeout]:
    """The request's time-out in seconds, and as aiohttp's: for connecting and for each read (as httpx's)."""
    timeout = request.get("timeout")
    seconds = float(timeout) if isinstance(timeout, int | float) else None
    return seconds, aiohttp.ClientTimeout(total=None, sock_connect=seconds, sock_read=seconds)


def lowered(pairs: list[tuple[str, str]]) -> dict[str, str]:
    """Response headers as litellm keeps them (``dict(httpx.Headers)``): lower-case names, repeats joined."""
    headers: dict[str, str] = {}
    for name, value in pairs:
        name = name.lower()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers
