"""`runner export`: input order from a completion-order journal, joins, errors, CSV and Parquet, a live run."""

from __future__ import annotations

import asyncio
import base64
import gzip
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from runner.errors import UsageError
from runner.export import order
from runner.export.command import Export, export_run
from runner.records import error_record, result_record
from runner.run.fingerprint import input_identity
from runner.run.manifest import write_manifest
from tests.doubles.provider import FakeProvider
from tests.support.cli import runner
from tests.support.files import Lines, read_jsonl, wait_until, write_jsonl
from tests.support.run import run_rows, tickets

BODY = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "bug"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11}}  # fmt: skip


def _export(runs: Path, output: Path | None = None, **options: Any) -> list[dict[str, Any]]:
    output = output or runs.parent / "out.jsonl"
    export_run(Export(runs, "classify", output=output, **options))
    return read_jsonl(output) if output.suffix == ".jsonl" else []


def _synthetic(tmp_path: Path, n: int, seed: int = 1, blank_after: int | None = None) -> Path:
    """runs/classify/run with n records in shuffled order (every 5th an error), and its input (a blank
    line after row ``blank_after``: the rows after it are a line further down)."""
    run_dir = tmp_path / "runs" / "classify" / "run"
    run_dir.mkdir(parents=True)
    rows: list[Any] = [{"id": f"r{i}", "text": f"row {i}", "n": i} for i in range(n)]
    if blank_after is not None:
        rows.insert(blank_after + 1, "")
    input_path = write_jsonl(tmp_path / "in.jsonl", rows)
    lines = [i + 1 for i, row in enumerate(rows) if row]
    random.Random(seed).shuffle(lines)
    with (run_dir / "results.jsonl").open("wb") as ok, (run_dir / "errors.jsonl").open("wb") as bad:
        for written, line in enumerate(lines):  # finished_at grows as the journal does
            custom_id = str(rows[line - 1]["id"])
            meta = {"line": line, "model": "m", "cost_usd": 0.5, "finished_at": f"2026-01-01T{written:08d}Z"}
            if line % 5 == 0:
                record = error_record(custom_id, "invalid_result", "no label", meta, None, BODY)
                bad.write(orjson.dumps(record.line) + b"\n")
            else:  # a structured result that looks like runner's meta must not fool the line reader
                result = {"meta": {"line": 999999}} if line % 7 == 0 else "bug"
                ok.write(orjson.dumps(result_record(custom_id, BODY, "req", result, meta).line) + b"\n")
        ok.write(b'{"id":"batch_req_0123456789abcdef01234567","custom_id":"torn","meta":{"line":1')  # being written
    write_manifest(run_dir / "manifest.json", {"status": "completed", "input_file": input_identity(input_path)})
    return run_dir


def test_input_order_from_a_shuffled_journal_across_buckets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(order, "BUCKET", 16)  # many buckets, and several flushes of the index
    monkeypatch.setattr(order, "FLUSH", 7)
    _synthetic(tmp_path, 300)
    rows = _export(tmp_path / "runs")
    assert [r["line"] for r in rows] == list(range(1, 301))
    assert [r["custom_id"] for r in rows] == [f"r{i}" for i in range(300)]
    assert {r["status"] for r in rows if r["line"] % 5 == 0} == {"invalid_result"}
    assert rows[4]["error"] == "no label" and rows[4]["input_tokens"] == 10 and rows[4]["cost_usd"] == 0.5
    assert rows[6]["result"] == {"meta": {"line": 999999}}
    assert not list((tmp_path / "runs").parent.glob("runner-export-*"))  # the spill files are gone

    finished = _export(tmp_path / "runs", tmp_path / "fin.jsonl", order="finished")
    stamps = [r["finished_at"] for r in finished]
    assert stamps == sorted(stamps) and len(finished) == 300


def test_with_input_joins_fields_marks_pending_rows_and_reads_gzip(tmp_path: Path) -> None:
    run_dir = _synthetic(tmp_path, 20, blank_after=2)
    # The same input as the run read it, now gzipped with a byte-order mark, and two rows appended since.
    rows = [orjson.dumps({"id": f"r{i}", "text": f"row {i}", "n": i, "status": "vip"}) for i in range(20)]
    data = b"\xef\xbb\xbf" + b"\n".join(rows[:3]) + b"\n\n" + b"\n".join(rows[3:]) + b'\n{"id": "new"}\n{not json\n'
    gz = tmp_path / "in.jsonl.gz"
    gz.write_bytes(gzip.compress(data))
    write_manifest(run_dir / "manifest.json", {"status": "completed", "input_file": input_identity(gz)})
    out = _export(tmp_path / "runs", with_input=True)
    assert [r["line"] for r in out] == [1, 2, 3, *range(5, 24)]  # line 4 is blank
    by_line = {r["line"]: r for r in out}
    assert by_line[1]["text"] == "row 0" and by_line[1]["input.status"] == "vip" and by_line[1]["status"] == "ok"
    assert (by_line[5]["text"], by_line[5]["status"], by_line[5]["custom_id"]) == ("row 3", "invalid_result", "r3")
    assert by_line[22]["id"] == "new" and by_line[22]["status"] == "pending" and by_line[22]["custom_id"] is None
    assert by_line[23]["status"] == "pending" and "text" not in by_line[23]  # the malformed line, not run yet
    assert list(out[0])[:4] == ["line", "custom_id", "id", "text"]


def test_a_field_first_met_after_the_sampled_rows_is_counted_in_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from runner.export import command

    monkeypatch.setattr(command, "SAMPLE", 5)
    _synthetic(tmp_path, 12)
    rows = [{"id": f"r{i}", "text": f"row {i}", "n": i, **({"late": 1} if i >= 9 else {})} for i in range(12)]
    write_jsonl(tmp_path / "in.jsonl", rows)
    _export(tmp_path / "runs", tmp_path / "out.csv", with_input=True)
    assert "late" not in pacsv.read_csv(tmp_path / "out.csv").column_names
    assert "field 'late' is in 3 later row(s) but not among the columns" in caplog.text


async def test_a_real_run_exported_as_jsonl_csv_and_parquet(tmp_path: Path, provider: FakeProvider) -> None:
    rows: list[Any] = tickets(30)
    rows[3]["text"] += " [[fail:400]]"
    rows[10] = "{not json"
    rows[12]["score"] = 2.5
    done = await run_rows(tmp_path, provider, rows, concurrency=8)
    runs = tmp_path / "runs"
    (runs / "classify").mkdir(parents=True)
    (tmp_path / "run").rename(runs / "classify" / "run")

    out = await asyncio.to_thread(_export, runs, None, with_input=True)
    assert [r["line"] for r in out] == list(range(1, 31))
    assert out[3]["status"] == "bad_request" and out[10]["status"] == "invalid_json" and out[0]["status"] == "ok"
    assert [r["text"] for r in out if "text" in r] == [r["text"] for r in rows if isinstance(r, dict)]
    assert sum(r["cost_usd"] or 0 for r in out) == pytest.approx(done.manifest["cost_usd"])
    assert sum(r["input_tokens"] or 0 for r in out) == done.manifest["usage"]["input_tokens"]

    await asyncio.to_thread(_export, runs, tmp_path / "out.csv", with_input=True)
    table = pacsv.read_csv(tmp_path / "out.csv")
    assert table.column_names[:5] == ["line", "custom_id", "id", "text", "score"]  # fields of the first rows
    assert table.column("score").to_pylist() == [2.5 if i == 12 else None for i in range(30)]
    assert table.column("line").to_pylist() == list(range(1, 31))
    assert table.column("result").to_pylist() == [r.get("result") or "" for r in out]  # CSV: no null text

    await asyncio.to_thread(_export, runs, tmp_path / "out.parquet", with_input=True)
    read = pq.read_table(tmp_path / "out.parquet")
    assert read.schema.field("line").type == "int64" and read.schema.field("cost_usd").type == "double"
    assert read.column("status").to_pylist() == [r["status"] for r in out]
    assert read.column("text").to_pylist() == [r.get("text") for r in out]


def test_embedding_vectors_are_decoded_into_arrays(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "classify" / "run"
    run_dir.mkdir(parents=True)
    vectors = [np.arange(4, dtype="<f4") + i for i in range(3)]
    with (run_dir / "results.jsonl").open("wb") as f:
        for i, v in enumerate(vectors):
            encoded = base64.b64encode(v.tobytes()).decode() if i != 1 else v.tolist()  # base64 and plain floats
            usage = {"prompt_tokens": 3, "total_tokens": 3}
            body = {"object": "list", "model": "text-embedding-3-small", "usage": usage,
                    "data": [{"object": "embedding", "index": 0, "embedding": encoded}]}  # fmt: skip
            f.write(orjson.dumps(result_record(f"e{i}", body, None, None, {"line": i + 1}).line) + b"\n")
    write_manifest(run_dir / "manifest.json", {"status": "in_progress"})
    out = _export(tmp_path / "runs")
    assert [r["embedding"] for r in out] == [v.tolist() for v in vectors]
    _export(tmp_path / "runs", tmp_path / "out.parquet")
    read = pq.read_table(tmp_path / "out.parquet")
    assert read.schema.field("embedding").type.value_type == "float"  # float32
    assert read.column("embedding").to_pylist() == [v.tolist() for v in vectors]
    _export(tmp_path / "runs", tmp_path / "out.csv")
    assert orjson.loads(pacsv.read_csv(tmp_path / "out.csv").column("embedding")[0].as_py()) == [0, 1, 2, 3]


async def test_a_run_still_going_is_exported_as_far_as_it_got(tmp_path: Path, provider: FakeProvider) -> None:
    rows = tickets(12)
    for row in rows[8:]:
        row["text"] += " HOLD"
    provider.hold(lambda text: "HOLD" in text)
    run_dir = tmp_path / "runs" / "classify" / "run"
    task = asyncio.create_task(run_rows(tmp_path / "runs" / "classify", provider, rows, concurrency=12))
    try:
        results = Lines(run_dir / "results.jsonl")
        await asyncio.to_thread(wait_until, lambda: results() == 8, "8 results journaled")
        await asyncio.to_thread(wait_until, lambda: (run_dir / "manifest.json").exists(), "the first manifest")
        out = await asyncio.to_thread(_export, tmp_path / "runs", None, with_input=True)
        assert [r["status"] for r in out] == ["ok"] * 8 + ["pending"] * 4
    finally:
        provider.release()
        done = await task
    assert done.report.totals.completed == 12


def test_usage_errors_and_a_missing_pyarrow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _synthetic(tmp_path, 3)
    runs = tmp_path / "runs"
    with pytest.raises(UsageError, match="give --output PATH"):
        export_run(Export(runs, "classify", fmt="parquet"))
    with pytest.raises(UsageError, match="use it with --order input"):
        export_run(Export(runs, "classify", order="finished", with_input=True))
    with pytest.raises(UsageError, match=r"no run nope for job classify \(runs: run\)"):
        export_run(Export(runs, "classify", run_id="nope"))
    with pytest.raises(UsageError, match="no runs of job other"):
        export_run(Export(runs, "other"))
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(UsageError, match=r"pip install 'runner\[parquet\]'"):
        export_run(Export(runs, "classify", output=tmp_path / "x.parquet"))
    assert not (tmp_path / "x.parquet").exists() and not (tmp_path / "x.parquet.part").exists()


CHECK = """
import sys
from runner.cli import main
code = main(sys.argv[1:])
print(sorted(m for m in ("pyarrow", "litellm", "runner.export.command") if m in sys.modules), file=sys.stderr)
sys.exit(code)
"""


def test_the_command_line_streams_to_stdout_without_pyarrow_or_litellm(tmp_path: Path) -> None:
    import subprocess

    _synthetic(tmp_path, 10)
    proc = subprocess.run([sys.executable, "-c", CHECK, "export", "classify", "--format", "csv"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].startswith("line,custom_id,status,result,error,model")
    assert len(proc.stdout.splitlines()) == 11
    assert "['runner.export.command']" in proc.stderr  # neither pyarrow nor litellm
    status = subprocess.run([sys.executable, "-c", CHECK, "status"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120)  # fmt: skip
    assert "[]" in status.stderr.splitlines()[-1]
    assert runner("export", "classify", "--format", "parquet", cwd=tmp_path).returncode == 2
