"""The response cache shared across runs: answers the job accepted, keyed by the exact request.

The key is a SHA-256 of the request a run would send, as canonical JSON (keys sorted): model,
messages, tools, response_format, temperature, seed, n, max_tokens, stream and every other
parameter, plus ``api_base``. Left out: the credentials (a key must not decide, or be derivable
from, a cache entry), the time-out and ``max_retries`` (how long to wait for an answer is not part
of the question). The job's parser is not in the key either: a changed ``parse_result`` re-parses
cached answers instead of re-sending.

The store is diskcache (SQLite in WAL mode underneath): several processes may read and write it at
once, each entry is one SQLite transaction (a SIGKILL leaves the entry whole or absent, never torn),
values are kept inside the database (no side files to half-write), and it is size-bounded, evicting
the least recently stored entries first. Values are small orjson documents:
``{"b": body, "r": request_id, "c": cost_usd, "o": origin}``; ``origin`` names the run that stored
the answer, so a run can tell its own answers (duplicates, ``dedup``) from other runs' (``hit``).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from runner.errors import UsageError

if TYPE_CHECKING:
    from diskcache import Cache

    from runner.call.caller import Caller

__all__ = [
    "DEFAULT_MAX_SIZE",
    "PAGE_CACHE",
    "CacheSettings",
    "Entry",
    "Lookup",
    "ResponseCache",
    "default_dir",
    "key_of",
    "parse_size",
    "usable_dir",
]

DEFAULT_MAX_SIZE = 1 << 30  # 1 GiB: about a million classify answers
# SQLite's memory, the same whatever the cache's size. diskcache's defaults, a 64 MiB memory map and an
# 8,192-page cache (32 MiB), both fill up in RSS as the file grows (+78 to +87 MiB over a 100,000-row run,
# issue 29). No map: reads go through the OS's page cache, which RSS does not count; a page cache of
# PAGE_CACHE bytes holds the B-trees' upper levels, which is what a lookup by key needs.
PAGE_CACHE = 4 << 20
SQLITE_MEMORY = {"sqlite_mmap_size": 0, "sqlite_cache_size": -(PAGE_CACHE >> 10)}  # negative: KiB
VERSION = b"runner-response-cache-v1\0"  # part of every key: a new format never reads an old entry
# Never part of a key: credentials (whatever else ``credentials()`` adds is dropped too) and how
# long or how often to wait, which change no answer.
NOT_IN_KEY = frozenset(
    {
        "api_key",
        "timeout",
        "max_retries",
        "azure_ad_token",
        "aws_access_key_id",
        "aws_secret_access_key",
        "aws_session_token",
        "vertex_credentials",
    }
)
PRIVATE_DIR = "dedup-cache"  # under the run directory, with --no-cache: duplicates within the run only


@dataclass(frozen=True)
class CacheSettings:
    """How a run reuses answers: the shared cache's directory (None with ``--no-cache``: duplicates
    in the input still share one answer, through a store private to the run), its size bound, and
    whether duplicates within the input are folded (``--no-dedup`` turns that off)."""

    directory: Path | None
    max_size: int = DEFAULT_MAX_SIZE
    dedup: bool = True

    @property
    def active(self) -> bool:
        """Whether anything is reused at all."""
        return self.directory is not None or self.dedup


@dataclass(frozen=True, slots=True)
class Entry:
    """A cached answer: the chat.completion body, its request id, what it cost, and which run stored it."""

    body: dict[str, Any]
    request_id: str | None
    cost_usd: float | None
    origin: str

    def encode(self) -> bytes:
        return orjson.dumps({"b": self.body, "r": self.request_id, "c": self.cost_usd, "o": self.origin})

    @classmethod
    def decode(cls, data: Any) -> Entry | None:
        """The entry, or None for anything that is not one (treated as a miss)."""
        try:
            value = orjson.loads(data)
            body, cost = value["b"], value["c"]
        except (orjson.JSONDecodeError, TypeError, KeyError):
            return None
        if not isinstance(body, dict) or not (cost is None or isinstance(cost, int | float)):
            return None
        return cls(body, value.get("r"), cost, str(value.get("o")))


def key_of(request: Mapping[str, Any], credentials: Iterable[str] = ()) -> bytes | None:
    """The cache key of a request (32 bytes), or None if it is not plain JSON (then it is never cached)."""
    dropped = NOT_IN_KEY.union(credentials)
    kept = {k: v for k, v in request.items() if k not in dropped}
    try:
        data = orjson.dumps(kept, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        return None
    return hashlib.sha256(VERSION + data).digest()


def default_dir() -> Path:
    """``$XDG_CACHE_HOME/runner/responses``, else ``~/.cache/runner/responses``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "runner" / "responses"


def usable_dir(path: Path) -> Path:
    """``path``, created if needed; a UsageError naming it (and the way out) if it can't be written."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        if not os.access(path, os.W_OK | os.X_OK):
            raise PermissionError(13, "not writable")
    except OSError as exc:
        raise UsageError(
            f"can't use the response cache directory {path} ({exc.strerror or exc}); "
            "pass --cache-dir DIR where you can write, or --no-cache"
        ) from None
    return path


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes from ``500M``, ``2G``, ``1.5GiB``, ``800MB`` or a plain number (binary units; ValueError if not)."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"expected a size such as 500M, 2G or 1073741824, got {text!r}")
    number, unit = float(match.group(1)), match.group(2).lower()
    size = int(number * (1 << (10 * " kmgt".index(unit or " "))))
    if size < 1 << 20:
        raise ValueError(f"expected a size of at least 1M, got {text!r}")
    return size


class ResponseCache:
    """The store. Blocking: the coordinator calls it from one thread of its own (``runner.run.reuse``);
    ``--dry-run`` calls it directly."""

    def __init__(self, directory: Path, max_size: int = DEFAULT_MAX_SIZE) -> None:
        from diskcache import Cache  # a run that reuses nothing never imports it

        self.directory = directory
        # Values stay inside SQLite whatever their size (no side files: one transaction per entry). The
        # memory bounds are stored in the directory's settings, which every new connection applies (one
        # an earlier version left is overwritten).
        self._cache: Cache = Cache(
            str(directory),
            size_limit=max_size,
            disk_min_file_size=1 << 30,
            eviction_policy="least-recently-stored",
            **SQLITE_MEMORY,
        )
        self.committed = 0  # batches of writes made durable so far (see ``put_many``)

    def get_many(self, keys: Iterable[bytes]) -> tuple[dict[bytes, Entry], int]:
        """The entries found, and how many write batches were committed before the lookup began."""
        committed = self.committed
        found = {}
        for key in keys:
            data = self._cache.get(key)
            if data is not None and (entry := Entry.decode(data)) is not None:
                found[key] = entry
        return found, committed

    def __contains__(self, key: bytes) -> bool:
        return self._cache.get(key) is not None

    def put_many(self, entries: list[tuple[bytes, Entry]]) -> None:
        """Store ``entries`` in one transaction (evicting the oldest when over the size bound)."""
        try:
            with self._cache.transact(retry=True):
                for key, entry in entries:
                    self._cache.set(key, entry.encode(), retry=True)
        finally:  # counted even if it failed: a lookup must not wait for it forever (see runner.run.reuse)
            self.committed += 1

    def entries(self) -> Iterator[Entry | None]:
        """Every stored entry, decoded (None for one that is not an entry), for checks and tests."""
        for key in self._cache:
            yield Entry.decode(self._cache.get(key))

    def volume(self) -> int:
        """Bytes on disk, as the size bound counts them."""
        return int(self._cache.volume())

    def __len__(self) -> int:
        return len(self._cache)

    def close(self) -> None:
        self._cache.close()


class Lookup:
    """``--dry-run``'s view: which requests the cache, or an earlier identical row, would answer.

    It only reads: a cache directory that does not exist yet holds nothing and is not created. Rows
    seen are kept as 16-byte keys (``IdSet``), so a large input does not fill memory.
    """

    def __init__(self, caller: Caller, cache: CacheSettings | None, run_dir: Path) -> None:
        from runner.run.idset import IdSet

        self.caller, self.dedup = caller, cache is not None and cache.dedup
        self.seen = IdSet()
        self.store: ResponseCache | None = None
        if cache is not None:
            directory = run_dir / PRIVATE_DIR if cache.directory is None else cache.directory
            if (directory / "cache.db").exists():
                self.store = ResponseCache(directory, cache.max_size)

    def __enter__(self) -> Lookup:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.store is not None:
            self.store.close()

    def would_answer(self, request: dict[str, Any]) -> str | None:
        """``hit`` (the cache holds the answer), ``dedup`` (an earlier row asks the same), or None (sent)."""
        if self.store is None and not self.dedup:
            return None
        key = key_of(self.caller.served_by(request), self.caller.credentials_for(request["model"]))
        if key is None:
            return None
        if self.store is not None and key in self.store:
            return "hit"
        if self.dedup:
            if key.hex() in self.seen:
                return "dedup"
            self.seen.add(key.hex())
        return None
