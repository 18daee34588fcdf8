"""`runner export JOB`: one row per input row, in input order, as JSONL, CSV or Parquet.

It only reads the run directory (never its lock), so a run that is still going is exported as far
as it has got. With ``--with-input`` the run's input (the file its manifest names, read as the run
read it: gzip, byte-order mark) is walked in order beside the records, and each row gets the input's
own fields; an input row with no record yet is ``pending``. The output is written beside its final
name and renamed into place when whole, so a failed export leaves no half file.
"""

from __future__ import annotations

import itertools
import logging
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson

from runner.errors import UsageError
from runner.export.order import EMBEDDING_MARK, Journal, finished_order, input_order
from runner.export.rows import COLUMNS, HEAD, TAIL, input_fields, pending_row, record_row
from runner.export.writers import FORMATS, writer_for
from runner.run.manifest import MANIFEST, read_manifest
from runner.run.source import BLOCK, open_input
from runner.serve.status import find_runs

__all__ = ["Export", "export_run"]

logger = logging.getLogger("runner")
CHUNK = 8192  # rows per write (and per Parquet row group)
VECTOR_CHUNK = 512  # rows per write when they carry embedding vectors
SAMPLE = 1000  # input rows whose fields make the CSV/Parquet columns


@dataclass(frozen=True)
class Export:
    """What to export and how (the command line's flags)."""

    runs_dir: Path
    job: str
    run_id: str | None = None
    fmt: str | None = None
    output: Path | None = None
    order: str = "input"
    with_input: bool = False


def export_run(spec: Export) -> int:
    """Write the export; returns the number of rows written (-1: standard output was closed early)."""
    try:
        return _export(spec)
    except BrokenPipeError:
        if spec.output is not None:
            raise
        # `runner export ... | head`: the reader has what it wanted; say nothing more to the closed pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return -1


def _export(spec: Export) -> int:
    run_dir = _run_dir(spec.runs_dir, spec.job, spec.run_id)
    fmt = spec.fmt or _format_of(spec.output)
    if fmt == "parquet" and spec.output is None:
        raise UsageError("--format parquet writes a file: give --output PATH (e.g. --output results.parquet)")
    if spec.with_input and spec.order != "input":
        raise UsageError("--with-input walks the input in its own order: use it with --order input (the default)")
    journal = Journal.of(run_dir)
    vectors = fmt != "jsonl" and journal.mentions(EMBEDDING_MARK)
    with _Output(spec.output) as out:
        rows = _rows(run_dir, journal, spec, vectors)
        samples = list(itertools.islice(rows, SAMPLE)) if fmt != "jsonl" else []
        writer = writer_for(fmt, out, _columns(samples, spec.with_input, vectors), samples)
        written = 0
        size = VECTOR_CHUNK if vectors else CHUNK
        for chunk in _chunks(itertools.chain(samples, rows), size):
            writer.write(chunk)
            written += len(chunk)
        writer.close()
    for column, count in writer.misfits.items():
        logger.warning("%d value(s) of %s did not fit its Parquet column and were left null; --format jsonl keeps "
                       "every value as it is", count, column)  # fmt: skip
    for field, count in writer.dropped.items():
        logger.warning("field %r is in %d later row(s) but not among the columns, taken from the first %d rows; "
                       "--format jsonl keeps every field", field, count, SAMPLE)  # fmt: skip
    where = spec.output if spec.output is not None else "standard output"
    logger.info("exported %s rows of %s to %s (%s)", f"{written:,}", run_dir, where, fmt)
    return written


def _format_of(output: Path | None) -> str:
    suffix = output.suffix.lstrip(".").lower() if output is not None else ""
    return suffix if suffix in FORMATS else "jsonl"


def _run_dir(runs_dir: Path, job: str, run_id: str | None) -> Path:
    runs = find_runs(runs_dir, job)
    if not runs:
        raise UsageError(f"no runs of job {job} in {runs_dir}; check JOB and --runs-dir (see `runner status`)")
    if run_id is None:
        return runs[0]
    for run in runs:
        if run.name == run_id:
            return run
    names = ", ".join(r.name for r in runs[:8])
    raise UsageError(f"no run {run_id} for job {job} (runs: {names}); pick one of those with --run-id")


def _rows(run_dir: Path, journal: Journal, spec: Export, vectors: bool) -> Iterator[dict[str, Any]]:
    if spec.order == "finished":
        return (record_row(r, vectors) for r in finished_order(journal))
    spill = spec.output.resolve().parent if spec.output is not None else None
    records = ((line, record_row(record, vectors)) for line, record in _parsed(input_order(journal, spill)))
    if not spec.with_input:
        return (row for _, row in records)
    return _joined(records, _input_lines(_input_of(run_dir)), vectors)


def _parsed(lines: Iterator[tuple[int, bytes]]) -> Iterator[tuple[int, dict[str, Any]]]:
    """Each journal line parsed (a line damaged in the middle of the journal is skipped, as resume skips it)."""
    for line, raw in lines:
        try:
            record = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        if isinstance(record, dict):
            yield line, record


def _input_of(run_dir: Path) -> Path:
    manifest = read_manifest(run_dir / MANIFEST)
    path = (manifest.get("input_file") or {}).get("path")
    if not isinstance(path, str):
        raise UsageError(f"--with-input: {run_dir} has no manifest naming its input yet; try again in a moment")
    if not Path(path).is_file():
        raise UsageError(f"--with-input: the run's input {path} is not there any more; export without --with-input")
    return Path(path)


def _input_lines(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed record or None) for each non-blank input line, numbered as the run numbered them."""
    number = 0
    with open_input(path) as f:
        tail = b""
        while True:
            block = f.read(BLOCK)
            lines = (tail + block).split(b"\n")
            tail = b"" if not block else lines.pop()
            for raw in lines:
                number += 1
                if raw.strip():
                    try:
                        yield number, orjson.loads(raw)
                    except orjson.JSONDecodeError:
                        yield number, None
            if not block:
                return


def _joined(
    records: Iterator[tuple[int, dict[str, Any]]], inputs: Iterator[tuple[int, Any]], vectors: bool
) -> Iterator[dict[str, Any]]:
    """Records and input lines merged by line: each row with its input's fields, input rows with no record pending."""
    record = next(records, None)
    for line, fields in inputs:
        while record is not None and record[0] < line:  # a record whose line is not in the input (it changed)
            yield record[1]
            record = next(records, None)
        if record is None or record[0] != line:
            yield _with(pending_row(line), fields, vectors)
            continue
        while record is not None and record[0] == line:
            yield _with(record[1], fields, vectors)
            record = next(records, None)
    while record is not None:
        yield record[1]
        record = next(records, None)


def _with(row: dict[str, Any], fields: Any, vectors: bool) -> dict[str, Any]:
    head = {k: row[k] for k in HEAD}
    rest = {k: v for k, v in row.items() if k not in HEAD}
    if vectors:
        rest.setdefault("embedding", None)
    return {**head, **input_fields(fields), **rest}


def _columns(samples: list[dict[str, Any]], with_input: bool, vectors: bool) -> list[str]:
    """CSV/Parquet columns: the runner's, the input fields met in the first rows, the embedding."""
    extra: dict[str, None] = {}
    if with_input:
        for row in samples:
            extra.update(dict.fromkeys(k for k in row if k not in COLUMNS and k != "embedding"))
    return [*HEAD, *extra, *TAIL, *(["embedding"] if vectors else [])]


def _chunks(rows: Iterator[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    while chunk := list(itertools.islice(rows, size)):
        yield chunk


class _Output:
    """``path`` written as ``path.part`` and renamed into place on success; standard output if None."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.part = path.with_name(path.name + ".part") if path is not None else None
        self.file: IO[bytes] | None = None

    def __enter__(self) -> IO[bytes]:
        if self.part is None:
            return sys.stdout.buffer
        try:
            self.file = self.part.open("wb")
        except OSError as exc:
            raise UsageError(f"--output {self.path}: can't write there ({exc.strerror})") from None
        return self.file

    def __exit__(self, kind: object, *_: object) -> None:
        if self.file is None or self.part is None or self.path is None:
            sys.stdout.buffer.flush()
            return
        self.file.close()
        if kind is None:
            os.replace(self.part, self.path)
        else:
            self.part.unlink(missing_ok=True)
