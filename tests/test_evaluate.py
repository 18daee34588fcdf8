"""Scoring a run against gold labels, on small hand-made run directories."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from runner.job.evaluate import ERROR, evaluate, read_predictions
from tests.support.files import write_jsonl

GOLD = [
    {"id": "t1", "label": "bug", "lang": "en"},
    {"id": "t2", "label": "bug", "lang": "zh"},
    {"id": "t3", "label": "billing", "lang": "en"},
    {"id": "t4", "label": "billing", "lang": "zh"},
    {"id": "t5", "label": "other", "lang": "en"},
    {"id": "t6", "label": "other"},  # no language: counts overall only
]


def _result(custom_id: str, label: Any, content: str | None = None) -> dict[str, Any]:
    body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": content or str(label)}}]}
    record: dict[str, Any] = {"custom_id": custom_id, "response": {"status_code": 200, "body": body}, "error": None}
    if label is not None:
        record["result"] = label
    return record


def _error(custom_id: str) -> dict[str, Any]:
    return {"custom_id": custom_id, "response": None, "error": {"code": "invalid_result", "message": "no label"}}


@pytest.fixture
def run(tmp_path: Path) -> tuple[Path, Path]:
    """A run where t1, t3, t5 are right, t2 is wrong, t4 failed and t6 has no record yet."""
    run_dir = tmp_path / "runs" / "classify" / "r1"
    run_dir.mkdir(parents=True)
    results = [_result("t1", "bug"), _result("t2", "feature"), _result("t3", "billing"), _result("t5", "other")]
    write_jsonl(run_dir / "results.jsonl", [*results, _result("x9", "bug")])  # x9 is not in the gold file
    write_jsonl(run_dir / "errors.jsonl", [_error("t4")])
    return run_dir, write_jsonl(tmp_path / "gold.jsonl", GOLD)


def test_accuracy_overall_and_per_language(run: tuple[Path, Path]) -> None:
    ev = evaluate(*run)
    assert (ev.correct, ev.total) == (3, 6)
    assert ev.accuracy == 0.5
    assert ev.by_lang == {"en": (3, 3), "zh": (0, 2)}
    assert ev.accuracy_for("en") == 1.0
    assert ev.accuracy_for("zh") == 0.0
    assert (ev.errors, ev.missing, ev.extra, ev.unreadable) == (1, 1, 1, 0)


def test_confusion_counts_errors_and_missing_rows_in_their_own_column(run: tuple[Path, Path]) -> None:
    ev = evaluate(*run, labels=["bug", "feature", "billing", "other"])
    assert ev.labels == ("bug", "feature", "billing", "other")
    assert ev.columns[-1] == ERROR
    assert ev.count("bug", "bug") == 1
    assert ev.count("bug", "feature") == 1
    assert ev.count("billing", "billing") == 1
    assert ev.count("billing", ERROR) == 1  # failed
    assert ev.count("other", "other") == 1
    assert ev.count("other", ERROR) == 1  # missing
    assert sum(ev.confusion.values()) == len(GOLD)


def test_default_label_order_and_predictions_outside_the_gold_labels(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_jsonl(run_dir / "results.jsonl", [_result("a", "spam"), _result("b", "bug")])
    gold = write_jsonl(tmp_path / "gold.jsonl", [{"id": "a", "label": "other"}, {"id": "b", "label": "bug"}])
    ev = evaluate(run_dir, gold)
    assert ev.labels == ("bug", "other", "spam")  # gold labels sorted, then the stray prediction
    assert ev.count("other", "spam") == 1
    assert ev.by_lang == {}


def test_report_is_a_fixed_width_table(run: tuple[Path, Path]) -> None:
    report = evaluate(*run, labels=["bug", "feature", "billing", "other"]).report()
    lines = report.splitlines()
    assert lines[0] == "accuracy  0.5000  (3/6)"
    assert "  en      1.0000  (3/3)" in lines
    assert "  zh      0.0000  (0/2)" in lines
    assert "errors 1, missing 1, extra 1" in lines
    table = lines[lines.index("confusion (rows: gold, columns: predicted)") + 1 :]
    assert table[0].split() == ["gold", "bug", "feature", "billing", "other", "(error)", "total", "recall"]
    assert table[1].split() == ["bug", "1", "1", "0", "0", "0", "2", "0.500"]
    assert table[2].split() == ["billing", "0", "0", "1", "0", "1", "2", "0.500"]
    assert table[3].split() == ["other", "0", "0", "0", "1", "1", "2", "0.500"]
    assert table[4].split() == ["total", "1", "1", "1", "1", "2", "6"]
    assert len({len(line) for line in table[:4]}) == 1  # every row as wide as the header
    assert [row.split()[0] for row in table[1:]] == ["bug", "billing", "other", "total"]  # no gold feature: no row


def test_torn_lines_are_skipped_and_answers_without_a_result_are_read_from_the_body(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_jsonl(run_dir / "results.jsonl", [_result("a", None, content=" billing\n"), '{"custom_id": "b", "res'])
    predictions, unreadable = read_predictions(run_dir)
    assert predictions == {"a": "billing"}
    assert unreadable == 1
    gold = write_jsonl(tmp_path / "gold.jsonl", [{"id": "a", "label": "billing"}, {"id": "b", "label": "bug"}])
    ev = evaluate(run_dir, gold)
    assert (ev.correct, ev.missing, ev.unreadable) == (1, 1, 1)


def test_a_result_beats_an_older_error_and_other_result_keys(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_jsonl(run_dir / "errors.jsonl", [_error("a")])
    write_jsonl(run_dir / "results.jsonl", [{**_result("a", "bug"), "label": "feature"}])
    gold = write_jsonl(tmp_path / "gold.jsonl", [{"id": "a", "label": "feature"}])
    assert evaluate(run_dir, gold).accuracy == 0.0
    assert evaluate(run_dir, gold, result_key="label").accuracy == 1.0


def test_bad_inputs_say_what_is_wrong(tmp_path: Path) -> None:
    gold = write_jsonl(tmp_path / "gold.jsonl", [{"id": "a", "label": "bug"}])
    with pytest.raises(ValueError, match="not a run directory"):
        evaluate(tmp_path / "nowhere", gold)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_jsonl(run_dir / "results.jsonl", [_result("a", "bug")])
    with pytest.raises(ValueError, match="no such gold file"):
        evaluate(run_dir, tmp_path / "missing.jsonl")
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"id": "a", "label": "bug"}, {"id": "b"}])
    with pytest.raises(ValueError, match="gold row 2 needs an 'id' and a string 'label'"):
        evaluate(run_dir, bad)
    empty = evaluate(run_dir, write_jsonl(tmp_path / "empty.jsonl", []))
    assert (empty.total, empty.accuracy, empty.extra) == (0, 0.0, 1)
    assert empty.report().startswith("accuracy  -  (0/0)")
