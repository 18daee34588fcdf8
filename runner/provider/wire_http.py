"""The short way's HTTP: one aiohttp session per event loop, proxies and credentials as litellm finds them.

Shared by the short way's chat, streamed chat and embeddings requests (``runner.provider.wire``).
"""

from __future__ import annotations

import asyncio
import functools
import os
import urllib.parse
import urllib.request
import weakref
from collections.abc import Mapping
from typing import Any

import aiohttp
import litellm

__all__ = ["aclose", "endpoint", "proxy", "session", "timeouts"]

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


async def aclose() -> None:
    """Close this event loop's session (the next call opens a new one)."""
    found = _sessions.pop(asyncio.get_running_loop(), None)
    if found is not None:
        await found.close()


def endpoint(request: Mapping[str, Any], path: str, accept: str = "application/json") -> tuple[str, dict[str, str]]:
    """The URL of ``path`` (e.g. ``/chat/completions``) and the headers, from the request or where litellm
    looks for them (its globals, the environment)."""
    base = (request.get("api_base") or litellm.api_base or os.environ.get("OPENAI_BASE_URL")
            or os.environ.get("OPENAI_API_BASE") or "https://api.openai.com/v1")  # fmt: skip
    key = request.get("api_key") or litellm.api_key or litellm.openai_key or os.environ.get("OPENAI_API_KEY")
    headers = {"Content-Type": "application/json", "Accept": accept}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    organization = litellm.organization or os.environ.get("OPENAI_ORGANIZATION")
    if organization:
        headers["OpenAI-Organization"] = organization
    return base.rstrip("/") + path, headers


def timeouts(request: Mapping[str, Any]) -> tuple[float | None, aiohttp.ClientTimeout]:
    """The request's time-out in seconds, and as aiohttp's: for connecting and for each read (as httpx's)."""
    timeout = request.get("timeout")
    seconds = float(timeout) if isinstance(timeout, int | float) else None
    return seconds, aiohttp.ClientTimeout(total=None, sock_connect=seconds, sock_read=seconds)
