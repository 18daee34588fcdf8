"""A finished run against gold labels: accuracy, accuracy per language, a confusion matrix.

The gold file is JSONL with ``id`` (the run's ``custom_id``), ``label`` and an optional ``lang``.
A row's prediction is its results.jsonl line's ``result`` (or, for a job without a parser, the
answer's text). A row in errors.jsonl, or with no line at all, is predicted ``(error)``: it counts
as wrong, in its own confusion column. Lines for ids the gold file does not name are ignored
(counted as ``extra``).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.job.definition import first_choice
from runner.jsonl import objects
from runner.records import ERRORS, RESULTS

__all__ = ["ERROR", "Evaluation", "evaluate", "read_gold", "read_predictions"]

ERROR = "(error)"  # the prediction of a row that failed or has no record


@dataclass(frozen=True)
class Evaluation:
    """How a run's predictions compare with the gold labels."""

    labels: tuple[str, ...]  # confusion rows and columns, in order (``ERROR`` is always the last column)
    confusion: Mapping[tuple[str, str], int]  # (gold, predicted) -> rows
    by_lang: Mapping[str, tuple[int, int]]  # lang -> (correct, total), for gold rows that name one
    errors: int = 0  # gold rows recorded in errors.jsonl
    missing: int = 0  # gold rows with no record at all
    extra: int = 0  # records whose id is not in the gold file
    unreadable: int = 0  # run lines that are not JSON (a torn last line of a run in progress)

    @property
    def total(self) -> int:
        """Gold rows."""
        return sum(self.confusion.values())

    @property
    def correct(self) -> int:
        """Gold rows predicted right."""
        return sum(n for (gold, predicted), n in self.confusion.items() if gold == predicted)

    @property
    def accuracy(self) -> float:
        """Correct / gold rows (0.0 for an empty gold file)."""
        return self.correct / self.total if self.total else 0.0

    def accuracy_for(self, lang: str) -> float:
        """Accuracy over the gold rows in ``lang`` (KeyError if there are none)."""
        correct, total = self.by_lang[lang]
        return correct / total

    def count(self, gold: str, predicted: str) -> int:
        """Gold rows labelled ``gold`` and predicted ``predicted``."""
        return self.confusion.get((gold, predicted), 0)

    def report(self) -> str:
        """A plain-text report: accuracy overall and per language, then the confusion matrix."""
        lines = [f"accuracy  {_ratio(self.correct, self.total)}"]
        width = max([len(lang) for lang in self.by_lang] + [8])
        lines += [f"  {lang:<{width}}{_ratio(*self.by_lang[lang])}" for lang in sorted(self.by_lang)]
        counts = f"errors {self.errors}, missing {self.missing}, extra {self.extra}"
        lines.append(counts + (f", unreadable lines {self.unreadable}" if self.unreadable else ""))
        lines += ["", "confusion (rows: gold, columns: predicted)", *self._table()]
        return "\n".join(lines) + "\n"

    def _table(self) -> list[str]:
        rows = [label for label in self.labels if any(self.count(label, p) for p in self.columns)]
        columns = self.columns
        first = max([len(r) for r in rows] + [len("gold")])
        cell = max([len(c) for c in columns] + [6]) + 2
        header = (
            f"{'gold':<{first}}" + "".join(f"{c:>{cell}}" for c in columns) + f"{'total':>{cell}}{'recall':>{cell}}"
        )
        table = [header]
        for gold in rows:
            counts = [self.count(gold, predicted) for predicted in columns]
            total = sum(counts)
            recall = f"{self.count(gold, gold) / total:.3f}" if total else "-"
            table.append(
                f"{gold:<{first}}" + "".join(f"{n:>{cell}}" for n in counts) + f"{total:>{cell}}{recall:>{cell}}"
            )
        totals = [sum(self.count(gold, predicted) for gold in rows) for predicted in columns]
        table.append(f"{'total':<{first}}" + "".join(f"{n:>{cell}}" for n in totals) + f"{sum(totals):>{cell}}")
        return table

    @property
    def columns(self) -> tuple[str, ...]:
        """The confusion matrix's columns: every label, then ``ERROR``."""
        return (*self.labels, ERROR)


def _ratio(correct: int, total: int) -> str:
    share = f"{correct / total:.4f}" if total else "-"
    return f"{share}  ({correct}/{total})"


def read_gold(path: Path) -> dict[str, tuple[str, str | None]]:
    """id -> (label, lang or None); ValueError naming the line for a malformed one."""
    if not path.is_file():
        raise ValueError(f"{path}: no such gold file")
    gold: dict[str, tuple[str, str | None]] = {}
    for number, row in enumerate(objects(path), start=1):
        if row is None or not isinstance(row.get("label"), str) or row.get("id") is None:
            raise ValueError(f"{path}: gold row {number} needs an 'id' and a string 'label'")
        lang = row.get("lang")
        gold[str(row["id"])] = (row["label"], lang if isinstance(lang, str) else None)
    return gold


def _prediction(record: Mapping[str, Any], result_key: str) -> str:
    if result_key in record:
        value = record[result_key]
        return value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    body = (record.get("response") or {}).get("body") or {}
    choice = first_choice(body)
    return str((choice.get("message") or {}).get("content") or "").strip()


def read_predictions(run_dir: Path, result_key: str = "result") -> tuple[dict[str, str], int]:
    """custom_id -> prediction (``ERROR`` for rows in errors.jsonl), and the unreadable lines skipped.

    A row with both a result and an error line (it should not happen) counts as its result.
    """
    predictions: dict[str, str] = {}
    unreadable = 0
    for record in objects(run_dir / ERRORS):
        if record is None or "custom_id" not in record:
            unreadable += 1
            continue
        predictions[str(record["custom_id"])] = ERROR
    for record in objects(run_dir / RESULTS):
        if record is None or "custom_id" not in record:
            unreadable += 1
            continue
        predictions[str(record["custom_id"])] = _prediction(record, result_key)
    return predictions, unreadable


def evaluate(run_dir: Path, gold: Path, result_key: str = "result", labels: Sequence[str] | None = None) -> Evaluation:
    """Score the run in ``run_dir`` against the gold JSONL file ``gold``.

    ``labels`` orders the confusion matrix (default: the gold labels sorted); predictions outside
    it get columns of their own after it.
    """
    if not (run_dir / RESULTS).exists() and not (run_dir / ERRORS).exists():
        raise ValueError(f"{run_dir}: not a run directory (no {RESULTS} or {ERRORS})")
    truth = read_gold(gold)
    predictions, unreadable = read_predictions(run_dir, result_key)
    confusion: Counter[tuple[str, str]] = Counter()
    by_lang: dict[str, list[int]] = {}
    errors = missing = 0
    for row_id, (label, lang) in truth.items():
        predicted = predictions.get(row_id)
        if predicted is None:
            missing += 1
            predicted = ERROR
        elif predicted == ERROR:
            errors += 1
        confusion[label, predicted] += 1
        if lang is not None:
            tally = by_lang.setdefault(lang, [0, 0])
            tally[0] += predicted == label
            tally[1] += 1
    order = list(labels) if labels is not None else sorted({label for label, _ in truth.values()})
    seen = {predicted for _, predicted in confusion} | {label for label, _ in confusion}
    order += sorted(seen - set(order) - {ERROR})
    return Evaluation(
        labels=tuple(order),
        confusion=dict(confusion),
        by_lang={lang: (c, t) for lang, (c, t) in by_lang.items()},
        errors=errors,
        missing=missing,
        extra=len(set(predictions) - set(truth)),
        unreadable=unreadable,
    )
