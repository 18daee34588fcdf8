"""How a process that calls litellm sets up its heap and its event loop (the command line, a Ray worker).

Two costs of litellm besides the HTTP call, measured in bench/RESULTS.md ("litellm's thread hop"):

- **Its heap.** ``import litellm`` leaves ~200 MB of long-lived objects; every full collection
  walks them (up to 0.6 s a pause at concurrency 256). ``settle_heap()`` freezes what start-up
  left and makes young collections rarer.
- **A thread hop per call.** ``litellm.acompletion`` (and its embedding, text-completion and
  responses twins) builds each request by running the synchronous ``completion()`` in the loop's
  default executor, then awaits the coroutine that returns. For the providers in ``INLINE`` that
  function only builds objects (the HTTP call is in the coroutine), yet the hop costs two thread
  switches, a wake-up of the loop through its self-pipe, and the GIL fought over by up to six pool
  threads and the loop. ``InlineDispatch`` runs exactly those calls on the loop's own thread.
  Everything else given to the default executor still goes to its threads: other providers (whose
  synchronous part may fetch credentials over the network), DNS look-ups, ``asyncio.to_thread``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import gc
import weakref
from collections.abc import Callable
from typing import Any

__all__ = ["INLINE", "InlineDispatch", "inline_dispatch", "settle_heap"]

# Providers whose synchronous request building does no I/O (checked in litellm 1.110's source):
# the OpenAI family, OpenAI-compatible servers, Anthropic, and runner's own offline ``local/`` models.
INLINE = frozenset({"openai", "text-completion-openai", "hosted_vllm", "custom_openai", "anthropic", "local"})


def settle_heap() -> None:
    """Freeze what start-up left (litellm's import) and collect the young generation less often.

    Young collections every 700 allocations ran ~600 times in a 2,560-row run (1.0 s of CPU);
    every 20,000, 14 times (0.5 s)."""
    gc.freeze()
    gc.set_threshold(20_000, 10, 10)


@functools.lru_cache(maxsize=256)
def _provider(model: str, provider: str | None, api_base: str | None) -> str | None:
    import litellm

    try:
        return str(litellm.get_llm_provider(model, custom_llm_provider=provider, api_base=api_base)[1])
    except Exception:  # litellm says why on the call itself, in its thread as before
        return None


def _inline(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` is litellm's ``partial(ctx.run, partial(<litellm function>, model=..., ...))`` for
    a provider in ``INLINE``."""
    if not isinstance(fn, functools.partial) or len(fn.args) != 1 or fn.keywords:
        return False
    inner = fn.args[0]
    if not isinstance(inner, functools.partial) or not getattr(inner.func, "__module__", "").startswith("litellm."):
        return False
    model, provider = inner.keywords.get("model"), inner.keywords.get("custom_llm_provider")
    api_base = inner.keywords.get("api_base") or inner.keywords.get("base_url")
    if not isinstance(model, str) or not isinstance(provider, str | None) or not isinstance(api_base, str | None):
        return False
    return _provider(model, provider, api_base) in INLINE


class InlineDispatch(concurrent.futures.ThreadPoolExecutor):
    """A default executor that builds litellm's requests inline (``INLINE`` providers) and runs the
    rest in its threads."""

    inline = 0  # calls built on the loop's thread
    threaded = 0  # work sent to the pool's threads

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        if args or kwargs or not _inline(fn):
            self.threaded += 1
            return super().submit(fn, *args, **kwargs)
        self.inline += 1
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        try:
            result = fn()
        except Exception as exc:  # raised by the caller's await, as it would be from a thread
            future.set_exception(exc)
        else:
            future.set_result(result)
        return future


_installed: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, InlineDispatch] = weakref.WeakKeyDictionary()


def inline_dispatch(loop: asyncio.AbstractEventLoop | None = None) -> InlineDispatch:
    """Give ``loop`` (default: the running one) the inline-dispatching default executor, once, before
    anything used its default one (a replaced executor's threads would linger); return it."""
    loop = loop or asyncio.get_running_loop()
    if loop not in _installed:
        _installed[loop] = InlineDispatch(thread_name_prefix="runner")
        loop.set_default_executor(_installed[loop])
    return _installed[loop]
