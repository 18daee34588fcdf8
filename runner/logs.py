"""Log handlers the CLI installs: human lines (or JSON lines) on stderr, and the run's own run.log.

Every line passes through ``redact`` on its way out, whatever handler writes it, so an API key that
reaches a message (a provider echoing it in an error, say) never lands in a terminal or a file.

JSON lines also carry the fields a log shipper filters on (``FIELDS``), each only when it is known:
``custom_id``, ``code``, ``status`` and ``attempt`` from the record (``logger.warning(...,
extra={"custom_id": ..., "code": ..., "status": ..., "attempt": ...})``), ``run_id`` and ``job``
from the record or else from ``run_context``, which ``runner.launch`` holds open around each run.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

import orjson
from tqdm import tqdm

from runner.redact import redact

__all__ = [
    "FIELDS",
    "FORMATS",
    "RUN_LOG",
    "JsonFormatter",
    "TextFormatter",
    "add_run_log",
    "configure",
    "remove",
    "run_context",
]

RUN_LOG = "run.log"
FORMATS = ("text", "json")
FIELDS = ("run_id", "job", "custom_id", "code", "status", "attempt")  # JSON keys, read from LogRecord attributes

# A context variable, not a global: asyncio tasks and to_thread workers inherit it, and it ends with the run.
_RUN: ContextVar[dict[str, str] | None] = ContextVar("runner_log_run", default=None)


@contextmanager
def run_context(job: str, run_id: str) -> Iterator[None]:
    """Every JSON line logged inside (and in the tasks and worker threads started inside) names the run."""
    token = _RUN.set({"job": job, "run_id": run_id})
    try:
        yield
    finally:
        _RUN.reset(token)


class TextFormatter(logging.Formatter):
    """``HH:MM:SS LEVEL message`` on stderr; in files, which outlive the day and may be appended to by
    two processes (a second fire refused by the lock), the full date and the PID too."""

    def __init__(self, dated: bool = False) -> None:
        if dated:
            super().__init__("%(asctime)s %(process)d %(levelname)s %(message)s")
        else:
            super().__init__("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, pid, the ``FIELDS``
    that are known, and exc."""

    converter = time.gmtime  # type: ignore[assignment]

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        run = _RUN.get() or {}
        for key in FIELDS:
            value = getattr(record, key, None)
            if value is None:
                value = run.get(key)
            if value is not None:
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return redact(orjson.dumps(line, default=str).decode())


class _TqdmHandler(logging.StreamHandler):
    """Writes log lines above a progress bar instead of through it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:
            self.handleError(record)


def _formatter(fmt: str, dated: bool) -> logging.Formatter:
    return JsonFormatter() if fmt == "json" else TextFormatter(dated)


def configure(level: int, fmt: str = "text") -> None:
    """Runner's loggers at ``level``, written to stderr; other libraries' at WARNING."""
    handler = _TqdmHandler(sys.stderr)
    handler.setFormatter(_formatter(fmt, dated=False))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("runner").setLevel(level)


def add_run_log(run_dir: Path, fmt: str = "text") -> logging.Handler:
    """Also append every log line to ``run_dir/run.log`` (created with the directory if need be)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(run_dir / RUN_LOG, mode="a", encoding="utf-8")
    handler.setFormatter(_formatter(fmt, dated=True))
    logging.getLogger().addHandler(handler)
    if fmt == "text" and handler.stream is not None:
        handler.stream.write(redact(f"---- pid {os.getpid()}: runner {' '.join(sys.argv[1:])}\n"))
    return handler


def remove(handler: logging.Handler) -> None:
    """Detach and close a handler ``add_run_log`` returned."""
    logging.getLogger().removeHandler(handler)
    handler.close()
