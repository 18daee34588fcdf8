"""The response cache's own memory is bounded whatever the cache's size (issue 29).

diskcache's SQLite defaults, a 64 MiB memory map and an 8,192-page cache, both grow into the
process's RSS as the cache file grows; runner's store maps nothing and keeps a page cache of
``PAGE_CACHE`` bytes, on every connection, even over a cache directory an earlier version created.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from runner.run.cache import PAGE_CACHE, Entry, ResponseCache

pytestmark = pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="reads /proc/self/smaps (Linux)")


def mapped_kib(path: Path) -> int:
    """Resident KiB of this process's mappings of ``path``."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split(" ", 1)[0]
        if "-" in head and ":" not in head:
            inside = line.endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


def fill(store: ResponseCache, n: int) -> list[bytes]:
    keys = [i.to_bytes(32, "big") for i in range(n)]
    body = {"choices": [{"message": {"content": "x" * 900}}]}  # ~1 KB a row: the file outgrows the page cache
    for start in range(0, n, 500):
        store.put_many([(k, Entry(body, None, 0.0, "test")) for k in keys[start : start + 500]])
    return keys


def test_a_full_read_of_a_large_cache_maps_none_of_it(tmp_path: Path) -> None:
    from diskcache import Cache

    Cache(str(tmp_path)).close()  # an earlier runner's cache: diskcache's defaults in its Settings table
    store = ResponseCache(tmp_path)
    try:
        keys = fill(store, 6000)
        assert (tmp_path / "cache.db").stat().st_size > 2 * PAGE_CACHE
        found, _ = store.get_many(keys)
        assert len(found) == len(keys)
        assert mapped_kib(tmp_path / "cache.db") == 0
        # Another thread gets its own connection, set up from the Settings table.
        other: list[int] = []
        thread = threading.Thread(target=lambda: other.append(sum(e is not None for e in store.entries())))
        thread.start()
        thread.join()
        assert other == [len(keys)]
        assert mapped_kib(tmp_path / "cache.db") == 0
    finally:
        store.close()


def test_every_connection_is_told_the_bounds(tmp_path: Path) -> None:
    ResponseCache(tmp_path).close()
    with sqlite3.connect(tmp_path / "cache.db") as db:
        settings = dict(db.execute("SELECT key, value FROM Settings WHERE key LIKE 'sqlite_%'").fetchall())
    assert settings["sqlite_mmap_size"] == 0
    assert settings["sqlite_cache_size"] == -(PAGE_CACHE >> 10)
