"""Small pieces: the source reader, job loading, the classify parser, key redaction."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from runner.errors import InvalidResult, JobDefinitionError, UsageError
from runner.job.definition import Job, load_job
from runner.redact import redact
from runner.run import source
from runner.run.source import BadLine, Row, count_lines, custom_id_for, read_rows
from tests.support.files import ROOT, SECRET

CLASSIFY = load_job("classify", ROOT / "jobs")


async def rows_of(path: Path, id_field: str | None = "id") -> list[Row | BadLine]:
    return [item async for items in read_rows(path, id_field) for item in items]


async def test_lines_split_across_read_blocks_are_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(source, "BLOCK", 7)  # far smaller than a line
    path = tmp_path / "in.jsonl"
    path.write_text('{"id": "a", "text": "héllo 你好"}\n\n{"id": "b"}\n{"id": 3}')  # no final newline
    items = await rows_of(path)
    assert [(i.line, i.custom_id) for i in items] == [(1, "a"), (3, "b"), (4, "3")]
    assert count_lines(path) == 3


def test_records_without_an_id_get_a_stable_content_hash() -> None:
    a = custom_id_for({"text": "x", "n": 1}, "id")
    assert a == custom_id_for({"n": 1, "text": "x"}, "id")  # key order does not matter
    assert a != custom_id_for({"n": 2, "text": "x"}, "id")
    assert a is not None and a.startswith("h-")
    assert custom_id_for({"id": True}, "id") is None and custom_id_for({"id": ""}, "id") is None


def test_classify_builds_a_small_deterministic_request() -> None:
    request = CLASSIFY.build_request({"id": "1", "text": "  the app crashes  "})
    assert request["temperature"] == 0 and request["max_tokens"] <= 10
    assert request["messages"][-1] == {"role": "user", "content": "the app crashes"}
    assert "model" not in request


def body(content: Any) -> dict[str, Any]:
    return {"choices": [{"message": {"role": "assistant", "content": content}, "finish_reason": "stop"}]}


@pytest.mark.parametrize(
    ("answer", "label"),
    [
        ("bug", "bug"),
        ("Billing.", "billing"),
        ("**Feature**", "feature"),
        (" other\n", "other"),
        ("Label: bug", "bug"),
        ("BUG", "bug"),
    ],
)
def test_classify_normalises_the_label(answer: str, label: str) -> None:
    assert CLASSIFY.parse_result is not None and CLASSIFY.parse_result(body(answer)) == label


@pytest.mark.parametrize("answer", ["bug or feature", "crash", "", None, "bugs"])
def test_classify_rejects_anything_but_one_label(answer: Any) -> None:
    assert CLASSIFY.parse_result is not None
    with pytest.raises(InvalidResult, match="expected exactly one of bug, feature, billing, other"):
        CLASSIFY.parse_result(body(answer))


def test_unknown_and_broken_jobs(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"unknown job 'nope'.*known jobs: batch, classify"):
        load_job("nope", ROOT / "jobs")
    (tmp_path / "raises.py").write_text("raise RuntimeError('kaput')\n")
    with pytest.raises(JobDefinitionError, match="failed to import: RuntimeError: kaput"):
        load_job("raises", tmp_path)


def test_keys_are_redacted_from_messages() -> None:
    text = f"Incorrect API key provided: {SECRET}. Also sk-proj-abc123***xyz and key_ABCDEFGHIJ."
    cleaned = redact(text)
    assert SECRET not in cleaned and "abc123" not in cleaned and "ABCDEFGHIJ" not in cleaned
    assert cleaned.startswith("Incorrect API key provided: ***")


def test_credentials_in_urls_and_quoted_answers_are_masked(tmp_path: Path) -> None:
    from runner.records import error_record

    assert redact("calling http://me:hunter2-secret@10.0.0.5:8000/v1 now") == "calling http://***@10.0.0.5:8000/v1 now"
    assert redact("see https://example.com/a@b") == "see https://example.com/a@b"  # an @ in the path is no login
    record = error_record("t-1", "invalid_result", "expected a label, got 'sk-proj-abcdefghijklmnop'", {})
    assert "abcdefghijklmnop" not in record.line["error"]["message"]


def test_classify_rejects_an_answer_cut_off_mid_label() -> None:
    assert CLASSIFY.parse_result is not None
    cut = body("I think bug and feat")
    cut["choices"][0]["finish_reason"] = "length"
    with pytest.raises(InvalidResult, match="expected exactly one"):
        CLASSIFY.parse_result(cut)
    long = body("Bug. The user says")
    long["choices"][0]["finish_reason"] = "length"
    assert CLASSIFY.parse_result(long) == "bug"  # cut off, but not in the middle of another label


@pytest.mark.parametrize("field", ["rpm", "tpm"])
def test_a_job_rate_below_one_a_minute_is_refused(field: str) -> None:
    with pytest.raises(JobDefinitionError, match=f"job field '{field}' must be a number per minute of at least 1"):
        Job(name="x", build_request=dict, **{field: 0.5})  # type: ignore[arg-type]
    assert getattr(Job(name="x", build_request=dict, **{field: 1.5}), field) == 1.5  # type: ignore[arg-type]
