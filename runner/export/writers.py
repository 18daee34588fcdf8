"""Writing export rows as JSONL, CSV or Parquet, a chunk of rows at a time.

JSONL keeps each value as it is. CSV and Parquet need their columns up front (the runner's own, the
input's fields seen in its first rows, ``embedding`` when the journal holds embeddings); a value that
is not text or a number goes into CSV as JSON text. Parquet columns are typed: the runner's columns
as themselves, ``result`` as text (JSON text for a structured result), ``embedding`` as a list of
float32, and each input field by the values in its first rows (text, whole number, number, boolean,
else JSON text); a later value that does not fit its column is left null and counted. pyarrow is
imported only here, only for Parquet.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import IO, Any, Protocol

import numpy as np
import orjson

from runner.errors import UsageError

__all__ = ["FORMATS", "Writer", "writer_for"]

FORMATS = ("jsonl", "csv", "parquet")
_JSON = orjson.OPT_SERIALIZE_NUMPY
_INTS = ("line", "input_tokens", "output_tokens", "total_tokens")


class Writer(Protocol):
    """Takes rows a chunk at a time; ``close`` finishes the file. ``misfits``: values left out (Parquet);
    ``dropped``: values of fields that are not among the columns (CSV, Parquet)."""

    misfits: dict[str, int]
    dropped: dict[str, int]

    def write(self, rows: Sequence[dict[str, Any]]) -> None: ...

    def close(self) -> None: ...


def writer_for(fmt: str, out: IO[bytes], columns: Sequence[str], samples: Sequence[dict[str, Any]]) -> Writer:
    """A writer of ``fmt`` to ``out``; ``samples`` (the first rows) type the Parquet input columns."""
    if fmt == "jsonl":
        return _Jsonl(out)
    if fmt == "csv":
        return _Csv(out, columns)
    return _Parquet(out, columns, samples)


def _json_text(value: Any) -> str:
    return orjson.dumps(value, option=_JSON).decode()


class _Jsonl:
    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self.misfits: dict[str, int] = {}
        self.dropped: dict[str, int] = {}

    def write(self, rows: Sequence[dict[str, Any]]) -> None:
        for start in range(0, len(rows), 256):  # orjson's bytes each hold a few KB until joined: keep few alive
            part = rows[start : start + 256]
            self.out.write(b"".join([orjson.dumps(r, option=_JSON | orjson.OPT_APPEND_NEWLINE) for r in part]))

    def close(self) -> None:
        self.out.flush()


class _Csv:
    def __init__(self, out: IO[bytes], columns: Sequence[str]) -> None:
        self.out, self.columns, self.known = out, list(columns), frozenset(columns)
        self.misfits: dict[str, int] = {}
        self.dropped: dict[str, int] = {}
        self.text = io.TextIOWrapper(out, encoding="utf-8", newline="", write_through=True)
        self.csv = csv.writer(self.text)
        self.csv.writerow(self.columns)

    def write(self, rows: Sequence[dict[str, Any]]) -> None:
        _count_dropped(rows, self.known, self.dropped)
        cells = [[_cell(r.get(c)) for c in self.columns] for r in rows]
        self.csv.writerows(cells)

    def close(self) -> None:
        self.text.flush()
        self.text.detach()


def _count_dropped(rows: Sequence[dict[str, Any]], known: frozenset[str], dropped: dict[str, int]) -> None:
    """Count the values of fields that have no column (met only after the rows the columns came from)."""
    for row in rows:
        if not known.issuperset(row):
            for key in row:
                if key not in known:
                    dropped[key] = dropped.get(key, 0) + 1


def _cell(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float):
        return "" if value is None else value
    return _json_text(value)


class _Parquet:
    def __init__(self, out: IO[bytes], columns: Sequence[str], samples: Sequence[dict[str, Any]]) -> None:
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise UsageError("--format parquet needs pyarrow: pip install 'runner[parquet]'") from None
        self.pa = pa
        self.misfits: dict[str, int] = {}
        self.dropped: dict[str, int] = {}
        self.types = {c: _type_of(pa, c, [s.get(c) for s in samples]) for c in columns}
        self.known = frozenset(columns)
        self.schema = pa.schema([(c, t) for c, t in self.types.items()])
        self.writer = pq.ParquetWriter(out, self.schema, compression="zstd")

    def write(self, rows: Sequence[dict[str, Any]]) -> None:
        pa = self.pa
        _count_dropped(rows, self.known, self.dropped)
        arrays = []
        for column, kind in self.types.items():
            values = [r.get(column) for r in rows]
            if column == "embedding":
                arrays.append(self._vectors(values))
                continue
            if kind == pa.string():
                values = [v if v is None or isinstance(v, str) else _json_text(v) for v in values]
            try:
                arrays.append(pa.array(values, type=kind))
            except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
                arrays.append(pa.array([self._fit(column, kind, v) for v in values], type=kind))
        self.writer.write_table(pa.Table.from_arrays(arrays, schema=self.schema))

    def _fit(self, column: str, kind: Any, value: Any) -> Any:
        try:
            self.pa.array([value], type=kind)
        except (self.pa.ArrowInvalid, self.pa.ArrowTypeError, OverflowError):
            self.misfits[column] = self.misfits.get(column, 0) + 1
            return None
        return value

    def _vectors(self, values: list[Any]) -> Any:
        """A list<float32> column from the rows' vectors (several vectors in one row don't fit: null)."""
        pa = self.pa
        offsets, parts, valid = [0], [], []
        for v in values:
            single = v is not None and not (len(v) and isinstance(v[0], list | np.ndarray))
            if v is not None and not single:
                self.misfits["embedding"] = self.misfits.get("embedding", 0) + 1
            part = np.asarray(v, dtype=np.float32) if single else np.empty(0, dtype=np.float32)
            parts.append(part)
            offsets.append(offsets[-1] + len(part))
            valid.append(single)
        flat = np.concatenate(parts) if parts else np.empty(0, dtype=np.float32)
        mask = pa.array([not ok for ok in valid])
        return pa.ListArray.from_arrays(pa.array(offsets, type=pa.int32()), pa.array(flat), mask=mask)

    def close(self) -> None:
        self.writer.close()


def _type_of(pa: Any, column: str, sample: list[Any]) -> Any:
    """The Parquet type of a column: the runner's own are fixed; an input field's from its first values."""
    if column in _INTS:
        return pa.int64()
    if column == "cost_usd":
        return pa.float64()
    if column == "embedding":
        return pa.list_(pa.float32())
    if column in ("custom_id", "status", "result", "error", "model", "finished_at"):
        return pa.string()
    seen = [v for v in sample if v is not None]
    if seen and all(isinstance(v, bool) for v in seen):
        return pa.bool_()
    if seen and all(isinstance(v, int) and not isinstance(v, bool) for v in seen):
        return pa.int64()
    if seen and all(isinstance(v, int | float) and not isinstance(v, bool) for v in seen):
        return pa.float64()
    return pa.string()
