"""The short way's HTTP: one aiohttp session per event loop, proxies and credentials as litellm finds them.

Shared by the short way's chat, streamed chat (``runner.provider.wire``) and embeddings requests
(``runner.provider.wire_embed``).
"""

from __future__ import annotations

import asyncio
import functools
import os
import ssl
import urllib.parse
import urllib.request
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
import litellm
from litellm.llms.custom_httpx.http_handler import get_ssl_configuration

from runner.provider.wire_azure import route_parts

__all__ = [
    "PROVIDERS",
    "Provider",
    "Route",
    "aclose",
    "env_base",
    "env_key",
    "litellm_leaves_calls_alone",
    "lowered",
    "post",
    "proxy",
    "route",
    "session",
    "timeouts",
]

# One per event loop (the coordinator's, each Ray worker's, a test's); a loop that is gone takes its own. With
# it, the TLS setting litellm's transport gives every request (``get_ssl_configuration``: its cached context,
# certifi's authorities, TLS 1.2 at least, its ciphers; the same object, so even the message of a refused
# connection names it alike).
_sessions: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[aiohttp.ClientSession, ssl.SSLContext | bool]]
_sessions = weakref.WeakKeyDictionary()


def _link() -> tuple[aiohttp.ClientSession, ssl.SSLContext | bool]:
    loop = asyncio.get_running_loop()
    found = _sessions.get(loop)
    if found is None or found[0].closed:
        tls = get_ssl_configuration()
        tls = tls if isinstance(tls, ssl.SSLContext) else bool(tls)
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, ssl=tls)
        # trust_env=False: aiohttp would otherwise look .netrc up in a thread for every request; proxies
        # come from the environment as litellm's transport reads them (``proxy``). No cookies kept, as litellm.
        client = aiohttp.ClientSession(
            connector=connector,
            json_serialize=None,  # type: ignore[arg-type]
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        found = _sessions[loop] = (client, tls)
    return found


def session() -> aiohttp.ClientSession:
    """This event loop's session: one connection pool, unlimited (runner's permits bound concurrency)."""
    return _link()[0]


def post(url: str, data: bytes, headers: Mapping[str, str], timeout: aiohttp.ClientTimeout) -> Any:
    """A POST on this event loop's session, through the proxy and with the TLS litellm's transport would use
    (an awaitable response, or an ``async with`` of one)."""
    client, tls = _link()
    return client.post(url, data=data, headers=headers, timeout=timeout, proxy=proxy(url), ssl=tls)


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
    return (
        litellm.ssl_verify is True and not litellm.force_ipv4 and not (litellm.headers or litellm.callbacks or success)
    )


async def aclose() -> None:
    """Close this event loop's session (the next call opens a new one)."""
    found = _sessions.pop(asyncio.get_running_loop(), None)
    if found is not None:
        await found[0].close()


@dataclass(frozen=True, slots=True)
class Provider:
    """How litellm reaches one OpenAI-wire provider: where it finds the server and the key when the call names
    none (its environment variables, ``get_openai_compatible_provider_info``; a default key), and which of its
    handlers sends the request: the openai SDK (``OpenAIChatCompletion``) or its own HTTP handler
    (``BaseLLMHTTPHandler``), whose answers and errors are made differently."""

    bases: tuple[str, ...] = ()
    keys: tuple[str, ...] = ()
    default_key: str | None = None
    sdk: bool = True


# The providers the short way sends for. azure/ finds its server, key and API version its own way
# (``wire_azure.route_parts``); its variables are here for the Batch API services.
PROVIDERS: Final = {
    "openai": Provider(),
    "hosted_vllm": Provider(("HOSTED_VLLM_API_BASE",), ("HOSTED_VLLM_API_KEY",), "fake-api-key", sdk=False),
    "litellm_proxy": Provider(("LITELLM_PROXY_API_BASE",), ("LITELLM_PROXY_API_KEY",)),
    "azure": Provider(("AZURE_API_BASE",), ("AZURE_OPENAI_API_KEY", "AZURE_API_KEY")),
}


def _env(names: tuple[str, ...]) -> str | None:
    return next((os.environ[v] for v in names if os.environ.get(v)), None)


# Where litellm finds each provider's server and key when a call names none, in the order litellm 1.110 reads
# them (``get_openai_compatible_provider_info``; for Anthropic ``AnthropicModelInfo.resolve_anthropic_api_base``,
# for Gemini ``main.completion``): the Batch API services find every provider's server here (``env_base``), as
# the online call to it does.
_ENV: Final = {
    "openai": (("OPENAI_BASE_URL", "OPENAI_API_BASE"), ("OPENAI_API_KEY",)),
    "anthropic": (("ANTHROPIC_API_BASE", "ANTHROPIC_BASE_URL"), ("ANTHROPIC_API_KEY",)),
    "gemini": (("GEMINI_API_BASE",), ("GOOGLE_API_KEY", "GEMINI_API_KEY")),
    **{name: (found.bases, found.keys) for name, found in PROVIDERS.items() if name != "openai"},
}


def env_base(provider: str) -> str | None:
    """The server litellm sends ``provider``'s calls to when no ``api_base`` is given (None: its default)."""
    return _env(_ENV[provider][0]) if provider in _ENV else None


def env_key(provider: str) -> str | None:
    """The key litellm sends with ``provider``'s calls when none is given (None: none is set)."""
    return _env(_ENV[provider][1]) if provider in _ENV else None


@dataclass(frozen=True, slots=True)
class Route:
    """Where one request goes the short way: the name sent, litellm's provider, the server and the key."""

    name: str
    provider: str
    base: str
    key: str
    version: str | None = None  # azure/'s API version (its ``api-version`` query)

    @property
    def sdk(self) -> bool:
        """Whether litellm sends this provider's requests through the openai SDK (else its own HTTP handler)."""
        return PROVIDERS[self.provider].sdk

    @property
    def answered_as(self) -> str | None:
        """The model litellm names answers after, before the server's own name: "<provider>/" for a provider
        other than OpenAI that litellm's OpenAI handler sends (``OpenAIChatCompletion.completion``)."""
        return None if self.provider in ("openai", "azure") or not self.sdk else f"{self.provider}/{self.name}"

    def url(self, path: str) -> str:
        """The URL of ``path`` (e.g. ``/chat/completions``) on this route's server; litellm's HTTP handler takes
        a server that names the path already as it is (``OpenAIGPTConfig.get_complete_url``)."""
        base = self.base.rstrip("/")
        if self.provider == "azure":  # the openai SDK's AzureOpenAI: the deployment's URL, the version as a query
            return f"{base}/openai/deployments/{self.name}{path}?api-version={self.version}"
        return base if not self.sdk and path.strip("/") in base else base + path

    def headers(self) -> dict[str, str]:
        """The request's headers, as litellm's handler sends them: the openai SDK's (with the organization), or
        its HTTP handler's (``OpenAIGPTConfig.validate_environment``)."""
        if self.provider == "azure":
            return {"Content-Type": "application/json", "Accept": "application/json", "api-key": self.key}
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {self.key}"}
        if self.sdk:
            headers["Accept"] = "application/json"
            organization = litellm.organization or os.environ.get("OPENAI_ORGANIZATION")
            if organization:
                headers["OpenAI-Organization"] = organization
        return headers


def route(request: Mapping[str, Any], name: str, provider: str, embeddings: bool = False) -> Route | None:
    """The route of a request to ``provider``: its server and key from the request, else where litellm looks
    for them (the provider's variables, then, for the providers its OpenAI handler sends, its globals and
    OpenAI's variables and server; ``_complete_custom_openai``; azure/'s its own way for chat and for
    ``embeddings``); None when there is no key (litellm says so)."""
    found = PROVIDERS.get(provider)
    if found is None:
        return None
    if provider == "azure":
        parts = route_parts(request, name, embeddings)
        return None if parts is None else Route(name, provider, *parts)
    base = request.get("api_base") or _env(found.bases)
    key = request.get("api_key") or _env(found.keys) or found.default_key
    if found.sdk:
        base = base or litellm.api_base or _env(("OPENAI_BASE_URL", "OPENAI_API_BASE")) or "https://api.openai.com/v1"
        key = key or litellm.api_key or litellm.openai_key or _env(("OPENAI_API_KEY",))
    else:
        base = base or litellm.api_base
    if not base or not key:
        return None
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
