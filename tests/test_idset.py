"""The compact id set, and the input reader's duplicate and journaled-row checks built on it."""

from __future__ import annotations

import itertools
import math
import random
from pathlib import Path

import numpy as np
import pytest

from runner.run import idset, source
from runner.run.idset import IdSet, keys_of
from runner.run.source import BadLine, Row, read_rows
from tests.support.files import write_jsonl


def awkward_ids() -> list[str]:
    """Ids that differ only in ways a careless key would lose: NULs, case, unicode, prefixes, length."""
    return ["", "\0", "\0\0", "a", "a\0", "A", "ab", "a b", "é", "e\u0301", "你好", "😀", "x" * 1000, "1", "01"]


def test_it_behaves_like_a_set_of_strings() -> None:
    ids = IdSet(["a", "b", "a"])
    ids.add("c")
    ids.add("b")
    assert len(ids) == 3 and "a" in ids and "c" in ids and "d" not in ids
    assert 1 not in ids and None not in ids
    assert ids == {"a", "b", "c"} and ids != {"a", "b"} and ids == IdSet(["c", "b", "a"])
    assert IdSet() == IdSet() == set() and len(IdSet()) == 0 and "" not in IdSet()


def test_awkward_ids_stay_distinct() -> None:
    awkward = awkward_ids()
    ids = IdSet(awkward)
    assert len(ids) == len(set(awkward))
    assert all(i in ids for i in awkward)
    assert "\0\0\0" not in ids and "b\0" not in ids and "x" * 999 not in ids


def test_a_hundred_thousand_ids_agree_with_a_python_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(idset, "PENDING", 997)  # many flushes and run merges
    rng = random.Random(6)
    truth: set[str] = set()
    ids = IdSet()
    for step in range(100):
        batch = [f"t-{rng.randrange(150_000)}" for _ in range(1000)]
        if step % 3:
            for i in batch:
                ids.add(i)
        else:
            ids.update(batch)
        truth.update(batch)
    assert len(ids) == len(truth)
    probes = [f"t-{i}" for i in range(150_000)]
    found = ids.contains_keys(keys_of(probes))
    assert found.tolist() == [p in truth for p in probes]
    assert sum(p in ids for p in probes[:2000]) == sum(p in truth for p in probes[:2000])


def test_runs_stay_few_and_each_id_costs_sixteen_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(idset, "PENDING", 1000)
    ids = IdSet()
    for i in range(200_000):
        ids.add(f"row-{i:07d}")
    assert len(ids) == 200_000
    runs = ids._runs
    assert len(runs) <= math.log2(200_000 / 1000) + 1
    assert all(len(a) > 2 * len(b) for a, b in itertools.pairwise(runs))
    assert ids.nbytes == 16 * 200_000


def test_positions_number_the_ids_and_mark_the_absent() -> None:
    ids = IdSet(f"id-{i}" for i in range(1000))
    at = ids.positions(keys_of(["id-5", "nope", "id-999", "id-5"])).tolist()
    assert at[1] == -1 and at[0] == at[3] and 0 <= at[0] < 1000 and 0 <= at[2] < 1000 and at[0] != at[2]
    every = ids.positions(keys_of([f"id-{i}" for i in range(1000)]))
    assert sorted(every.tolist()) == list(range(1000))
    assert IdSet().positions(keys_of(["a"])).tolist() == [-1]


def test_keys_are_sixteen_bytes_and_stable_within_the_process() -> None:
    keys = keys_of(["a", "b", "a"])
    assert keys.dtype == np.dtype(np.complex128) and keys.nbytes == 3 * 16
    assert ((keys.real >= 1) & (keys.real < 2) & (keys.imag >= 1) & (keys.imag < 2)).all()
    assert keys[0] == keys[2] and keys[0] != keys[1]
    assert len(keys_of([])) == 0


# The input reader: journaled rows skipped, later occurrences of an id reported, across blocks.


async def items_of(path: Path, skip: IdSet | None = None) -> list[Row | BadLine]:
    return [item async for items in read_rows(path, "id", skip) for item in items]


@pytest.mark.parametrize("block", [7, 64, 1 << 20])
async def test_duplicates_of_journaled_and_new_ids_are_reported_once_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block: int
) -> None:
    monkeypatch.setattr(source, "BLOCK", block)
    rows = [{"id": i} for i in ["a", "b", "a", "c", "b", "d", "c", "a"]]
    path = write_jsonl(tmp_path / "in.jsonl", rows)
    fresh = [(i.line, i.custom_id, type(i).__name__) for i in await items_of(path)]
    assert fresh == [
        (1, "a", "Row"),
        (2, "b", "Row"),
        (3, "a#line-3", "BadLine"),
        (4, "c", "Row"),
        (5, "b#line-5", "BadLine"),
        (6, "d", "Row"),
        (7, "c#line-7", "BadLine"),
        (8, "a#line-8", "BadLine"),
    ]
    # A resume where a, b and the duplicate on line 3 are journaled: those are skipped, while the
    # later duplicates of a journaled id are still reported (they are not journaled themselves).
    journaled = IdSet(["a", "b", "a#line-3", "zz-not-in-input"])
    resumed = [(i.line, i.custom_id) for i in await items_of(path, journaled)]
    assert resumed == [(4, "c"), (5, "b#line-5"), (6, "d"), (7, "c#line-7"), (8, "a#line-8")]


async def test_bad_lines_already_journaled_are_skipped(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", ["{broken", {"id": ""}, {"id": "ok"}, "[1]"])
    assert [i.custom_id for i in await items_of(path)] == ["line-1", "line-2", "ok", "line-4"]
    assert [i.custom_id for i in await items_of(path, IdSet(["line-1", "ok"]))] == ["line-2", "line-4"]


async def test_a_large_input_matches_the_plain_set_semantics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(source, "BLOCK", 4096)
    monkeypatch.setattr(idset, "PENDING", 500)
    rng = random.Random(3)
    ids = [f"r{rng.randrange(3000)}" for _ in range(5000)]
    path = write_jsonl(tmp_path / "in.jsonl", [{"id": i} for i in ids])
    journaled = {i for i in ids[:2000] if rng.random() < 0.5} | {f"r{n}#line-{n}" for n in range(0, 5000, 7)}
    expected, seen = [], set()
    for line, custom_id in enumerate(ids, 1):
        shown = custom_id if custom_id not in seen else f"{custom_id}#line-{line}"
        seen.add(custom_id)
        if shown not in journaled:
            expected.append((line, shown))
    got = [(i.line, i.custom_id) for i in await items_of(path, IdSet(journaled))]
    assert got == expected
