"""The repository's root, the test key, JSONL files, and waiting on files another process writes."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[2]
SECRET = "sk-test-DO-NOT-LEAK-4f1c9e2a7b"  # every test's OPENAI_API_KEY (tests/conftest.py): must never be written


def write_jsonl(path: Path, records: list[Any]) -> Path:
    """Write ``records`` one per line (strings are written as they are, for malformed lines)."""
    with path.open("wb") as f:
        for r in records:
            f.write(r.encode() if isinstance(r, str) else orjson.dumps(r))
            f.write(b"\n")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every line of ``path`` parsed; [] if it does not exist."""
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Block until ``condition()`` holds (a file reached a line count, a log line appeared).

    For things only a file shows (another process's journal or log): checked every 20 ms, and
    ``timeout`` is only there to fail a broken test instead of hanging it; nothing here assumes how
    long the thing usually takes.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.02)


class Lines:
    """Counts the complete lines of a file another process appends to, reading only what is new."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._read = 0
        self._count = 0

    def __call__(self) -> int:
        """Complete lines so far (0 while the file does not exist; starts over if it shrank)."""
        try:
            with self.path.open("rb") as f:
                if f.seek(0, 2) < self._read:  # truncated (a torn line cut off on resume): count again
                    self._read = self._count = 0
                f.seek(self._read)
                data = f.read()
        except FileNotFoundError:
            return 0
        end = data.rfind(b"\n") + 1  # a partial last line is counted once it is whole
        self._read += end
        self._count += data.count(b"\n", 0, end)
        return self._count


def line_count(path: Path) -> int:
    """Complete lines in ``path`` so far (0 if it does not exist yet)."""
    return Lines(path)()


def text_of(path: Path) -> str:
    """``path``'s text so far ('' if it does not exist yet)."""
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""
