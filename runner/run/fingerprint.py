"""What defines a run, so that a resume can tell when the job, model or input changed under it.

The input is identified by content, not by name or mtime: its size and hashes of its first and last
64 KiB. A file that only grew (new rows appended, as a nightly file does) is the same input. A gzip
input is identified by its bytes as stored: cheap to check, and an appended gzip member is growth;
recompressing the same rows makes a different input (resumable with --allow-changes).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from runner.run.source import Row, read_rows

if TYPE_CHECKING:
    from runner.call.caller import Caller

__all__ = ["changes", "input_identity", "job_fingerprint", "of_run"]

SAMPLE = 1 << 16


def _sha(path: Path, start: int, end: int) -> str:
    with path.open("rb") as f:
        f.seek(start)
        return hashlib.sha256(f.read(max(0, end - start))).hexdigest()


def input_identity(path: Path) -> dict[str, Any]:
    """Size and content hashes of the input file (blocking; reads at most 128 KiB)."""
    size = path.stat().st_size
    return {
        "path": str(path.resolve()),
        "size": size,
        "head_sha256": _sha(path, 0, min(size, SAMPLE)),
        "tail_sha256": _sha(path, max(0, size - SAMPLE), size),
    }


def _same_or_grown(old: Mapping[str, Any], path: Path) -> bool:
    size = old.get("size")
    if not isinstance(size, int) or path.stat().st_size < size:
        return False
    head = _sha(path, 0, min(size, SAMPLE))
    tail = _sha(path, max(0, size - SAMPLE), size)
    return head == old.get("head_sha256") and tail == old.get("tail_sha256")


def _code_files(source: str) -> list[Path]:
    path = Path(source)
    if not path.is_file():
        return []
    prompts = path.with_suffix("")  # jobs/classify/ holds classify's prompt files, if it has any
    extra = sorted(p for p in prompts.rglob("*") if p.is_file()) if prompts.is_dir() else []
    return [path, *extra]


def job_fingerprint(name: str, source: str, model: str | None, first_request: Mapping[str, Any] | None) -> dict:
    """The job's identity: its code and prompt files, its model, and the request it builds for the first row."""
    code = hashlib.sha256()
    for path in _code_files(source):
        code.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    if not _code_files(source):
        code.update(source.encode())
    request = None
    if first_request is not None:
        canonical = orjson.dumps(first_request, option=orjson.OPT_SORT_KEYS, default=str)
        request = hashlib.sha256(canonical).hexdigest()
    return {"job": name, "code_sha256": code.hexdigest(), "model": model, "request_sha256": request}


def changes(old: Mapping[str, Any], new: Mapping[str, Any], input_path: Path) -> list[str]:
    """What differs between a run's recorded fingerprint and today's, in words; [] if nothing."""
    said: list[str] = []
    old_input = old.get("input") or {}
    input_ok = not old_input or _same_or_grown(old_input, input_path)
    if old.get("job") != new.get("job"):
        said.append(f"the job changed ({old.get('job')} -> {new.get('job')})")
    elif old.get("code_sha256") != new.get("code_sha256"):
        said.append("the job's code or prompt files changed")
    elif input_ok and old.get("request_sha256") != new.get("request_sha256"):
        said.append("the request built for the first row changed (prompt or parameters)")
    if old.get("model") != new.get("model"):
        said.append(f"the model changed ({old.get('model')} -> {new.get('model')})")
    if not input_ok:
        said.append(f"{input_path} is not the input this run started on, nor that input with rows appended")
    return said


async def of_run(caller: Caller, input_path: Path) -> dict[str, Any]:
    """Today's fingerprint of a run of ``caller``'s job over ``input_path`` (what ``changes`` compares)."""
    first = await _first_request(caller, input_path)
    model = caller.model or (first or {}).get("model") or caller.job.model
    identity = job_fingerprint(caller.job.name, caller.job.source, model, first)
    identity["input"] = await asyncio.to_thread(input_identity, input_path)
    return identity


async def _first_request(caller: Caller, path: Path) -> dict[str, Any] | None:
    """The request the job builds for the input's first valid row (for the fingerprint), if any."""
    async with contextlib.aclosing(read_rows(path, caller.job.id_field)) as blocks:
        async for items in blocks:
            for item in items:
                if isinstance(item, Row):
                    try:
                        return caller.job.build_request(dict(item.record))
                    except Exception:
                        return None
    return None
