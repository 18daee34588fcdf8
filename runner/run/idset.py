"""A set of id strings at 16 bytes an id, for runs whose journal and input hold millions.

A Python ``set`` of short strings costs ~100 bytes an id (the string plus its slot), so the
finished ids of a 10-million-row run would take a gigabyte. Here an id is kept as a 104-bit key:
two 64-bit SipHash-1-3 values (CPython's own string hash under this process's random key, of the
id and of the id with a NUL appended), 52 bits of each kept as the mantissas of a complex number's
two parts, both in [1, 2). numpy sorts, searches and compares complex128 natively and in place,
by (real, imag), so the keys live in a few sorted arrays ("runs", each more than twice as long as
the next: a lookup searches at most log₂ n of them, a key is copied O(log n) times as runs merge).
Additions one at a time wait in a small ordinary set until there are ``PENDING`` of them.

Two different ids share a key with probability 2⁻¹⁰⁴ per pair: about 2.5e-18 that any two of 10
million ids collide (n²/2¹⁰⁵). A collision would make a row look journaled (skipped: silent data
loss) or a duplicate, which is why a single 64-bit hash (2.7e-6 at 10 million) was not used. Keys
are only compared within one process, so the per-process random hash key does no harm; the ids
themselves cannot be listed back.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Sequence
from collections.abc import Set as AbstractSet

import numpy as np
import numpy.typing as npt

__all__ = ["KEY", "PENDING", "IdSet", "keys_of"]

KEY = np.dtype(np.complex128)
_ONE = np.uint64(0x3FF0_0000_0000_0000)  # the bits of 1.0: a 52-bit mantissa below them gives [1, 2)
_SHIFT = np.uint64(12)
PENDING = 1 << 14  # single additions held as strings before they are hashed into a run
CHUNK = 1 << 14  # ids hashed at a time by ``update`` (a larger chunk only raises the peak)

Keys = npt.NDArray[np.complex128]


def keys_of(ids: Sequence[str]) -> Keys:
    """The key of each id, in order."""
    pairs = np.empty((len(ids), 2), dtype=np.int64)
    if ids:
        pairs[:, 0] = [hash(i) for i in ids]
        pairs[:, 1] = [hash(i + "\0") for i in ids]
    bits = pairs.view(np.uint64)
    bits >>= _SHIFT  # the top 52 bits of each hash ...
    bits |= _ONE  # ... as the mantissa of a float in [1, 2): no NaN, no -0.0, order and equality exact
    return bits.view(KEY).reshape(-1)


class IdSet:
    """A growing set of id strings: add, membership, length, equality; no iteration."""

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __init__(self, ids: Iterable[str] = ()) -> None:
        """An empty set, or one holding ``ids``."""
        self._runs: list[Keys] = []  # sorted, disjoint; each more than twice as long as the next
        self._held = 0  # keys in the runs
        self._pending: set[str] = set()  # recent single additions, maybe also in a run
        self.update(ids)

    def add(self, id_: str) -> None:
        """Add one id."""
        self._pending.add(id_)
        if len(self._pending) >= PENDING:
            self._flush()

    def update(self, ids: Iterable[str]) -> None:
        """Add many ids: hashed a chunk at a time into one buffer, then sorted once."""
        buffer = array("d")  # two doubles per key; grows without a second copy of the keys
        chunk: list[str] = []
        for id_ in ids:
            chunk.append(id_)
            if len(chunk) == CHUNK:
                buffer.frombytes(keys_of(chunk).tobytes())
                chunk.clear()
        buffer.frombytes(keys_of(chunk).tobytes())
        if buffer:
            keys = np.frombuffer(buffer, dtype=KEY)  # writable, shares the buffer's memory
            keys.sort()
            self._insert(_unique(keys))

    def add_keys(self, keys: Keys) -> None:
        """Add ids by their keys (from ``keys_of``), in any order, repeats allowed."""
        if len(keys):
            self._insert(_unique(np.sort(keys)))

    def contains_keys(self, keys: Keys) -> npt.NDArray[np.bool_]:
        """For each key, whether its id is in the set."""
        self._flush()
        found = np.zeros(len(keys), dtype=bool)
        for run in self._runs:
            found |= _found_in(run, keys)
        return found

    def positions(self, keys: Keys) -> npt.NDArray[np.int64]:
        """For each key, a number in ``range(len(self))`` standing for its id, or -1 if absent.

        The numbers hold until the set next changes.
        """
        self.compact()
        if not self._runs:
            return np.full(len(keys), -1, dtype=np.int64)
        run = self._runs[0]
        at = _search(run, keys)
        hit = _found_in(run, keys, at)
        return np.where(hit, at, -1)

    def compact(self) -> None:
        """Merge everything into one sorted run."""
        self._flush()
        if len(self._runs) > 1:
            merged = np.concatenate(self._runs)
            merged.sort(kind="stable")  # timsort: the runs are merged, not sorted afresh
            self._runs = [merged]

    @property
    def nbytes(self) -> int:
        """Bytes held by the keys (pending additions not counted)."""
        return sum(run.nbytes for run in self._runs)

    def __contains__(self, id_: object) -> bool:
        if not isinstance(id_, str):
            return False
        if id_ in self._pending:
            return True
        key = keys_of([id_])
        return any(_found_in(run, key)[0] for run in self._runs)

    def __len__(self) -> int:
        self._flush()
        return self._held

    def __eq__(self, other: object) -> bool:
        if isinstance(other, IdSet):
            self.compact()
            other.compact()
            mine, theirs = (s._runs[0] if s._runs else np.empty(0, KEY) for s in (self, other))
            return bool(np.array_equal(mine, theirs))
        if isinstance(other, AbstractSet):
            return len(self) == len(other) and all(i in self for i in other)
        return NotImplemented

    def __repr__(self) -> str:
        return f"IdSet(<{len(self)} ids, {self.nbytes} bytes>)"

    def _flush(self) -> None:
        if self._pending:
            self.add_keys(keys_of(list(self._pending)))
            self._pending.clear()

    def _insert(self, keys: Keys) -> None:
        """Add sorted, unique ``keys`` as a new run, minus those held already; merge runs that got close in size."""
        for run in self._runs:
            keys = keys[~_found_in(run, keys)]
        if not len(keys):
            return
        self._runs.append(keys)
        self._held += len(keys)
        while len(self._runs) > 1 and len(self._runs[-2]) <= 2 * len(self._runs[-1]):
            last = self._runs.pop()
            merged = np.concatenate((self._runs.pop(), last))
            merged.sort(kind="stable")
            self._runs.append(merged)


def _unique(keys: Keys) -> Keys:
    """``keys`` (sorted) without repeats."""
    if len(keys) < 2:
        return keys
    repeat = keys[1:] == keys[:-1]
    if not repeat.any():
        return keys
    return keys[np.concatenate(([True], ~repeat))]


def _search(run: Keys, keys: Keys) -> npt.NDArray[np.intp]:
    """``np.searchsorted(run, keys)``, with the keys sorted first: a third faster on a large run."""
    if len(keys) < 64:
        return np.searchsorted(run, keys)
    order = np.argsort(keys)
    at = np.empty(len(keys), dtype=np.intp)
    at[order] = np.searchsorted(run, keys[order])
    return at


def _found_in(run: Keys, keys: Keys, at: npt.NDArray[np.intp] | None = None) -> npt.NDArray[np.bool_]:
    """For each key, whether the sorted ``run`` holds it (``at``: its searchsorted positions, if known)."""
    if not len(run):
        return np.zeros(len(keys), dtype=bool)
    if at is None:
        at = _search(run, keys)
    return run[np.minimum(at, len(run) - 1)] == keys
