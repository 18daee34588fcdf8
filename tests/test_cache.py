"""The response cache shared across runs and duplicates inside one input (issue #16, parts 1 and 2).

Real HTTP against the fake provider, which counts what it is sent; runs in-process unless a test
needs processes (two runs sharing the cache, one SIGKILLed).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from runner.errors import InvalidResult
from runner.run.cache import CacheSettings, ResponseCache, key_of, parse_size
from runner.run.estimate import estimate
from runner.run.source import Row
from runner.serve.show import _detail
from runner.serve.status import read_run
from tests.doubles.provider import FakeProvider
from tests.support.files import ROOT, Lines, wait_until, write_jsonl
from tests.support.run import CLASSIFY, MODEL, caller_for, run_rows, tickets


def by_id(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["custom_id"]: r for r in records}


async def test_a_second_run_is_answered_from_the_cache_and_no_cache_sends_everything(
    tmp_path: Path, provider: FakeProvider
) -> None:
    cache = CacheSettings(tmp_path / "cache")
    rows = tickets(40)
    first = await run_rows(tmp_path / "a", provider, rows, cache=cache)
    assert provider.stats().total == 40 and first.manifest["cache"] == {"hits": 0, "dedup": 0, "saved_usd": 0}

    second = await run_rows(tmp_path / "b", provider, rows, cache=cache)  # another run directory and id
    assert provider.stats().total == 40  # nothing sent
    assert second.report.status == "completed" and len(second.results) == 40
    old, new = by_id(first.results), by_id(second.results)
    for custom_id, record in new.items():
        assert record["response"] == old[custom_id]["response"] and record["result"] == old[custom_id]["result"]
        meta = record["meta"]
        assert meta["cache"] == "hit" and meta["cost_usd"] == 0 and meta["line"] == old[custom_id]["meta"]["line"]
        assert meta["cached_cost_usd"] == old[custom_id]["meta"]["cost_usd"] > 0
    manifest = second.manifest
    assert manifest["cost_usd"] == 0 and manifest["usage"]["total_tokens"] == 0
    assert manifest["cache"]["hits"] == 40 and manifest["cache"]["saved_usd"] == pytest.approx(
        first.manifest["cost_usd"]
    )
    assert manifest["request_counts"] == {"total": 40, "completed": 40, "failed": 0}

    third = await run_rows(tmp_path / "c", provider, rows, cache=CacheSettings(None))  # --no-cache
    assert provider.stats().total == 80 and third.manifest["cache"]["hits"] == 0
    assert not any("cache" in r["meta"] for r in third.results)


async def test_a_changed_parser_re_parses_cached_answers_and_sends_only_what_it_rejects(
    tmp_path: Path, provider: FakeProvider
) -> None:
    assert CLASSIFY.parse_result is not None
    parse = CLASSIFY.parse_result
    cache = CacheSettings(tmp_path / "cache")
    rows = tickets(20)
    first = await run_rows(tmp_path / "a", provider, rows, cache=cache)
    assert provider.stats().total == 20

    loud = dataclasses.replace(CLASSIFY, parse_result=lambda body: parse(body).upper())
    again = await run_rows(tmp_path / "b", provider, rows, cache=cache, job=loud)
    assert provider.stats().total == 20  # re-parsed, not re-sent
    assert {r["custom_id"]: r["result"] for r in again.results} == {
        r["custom_id"]: r["result"].upper() for r in first.results
    }

    def no_bugs(body: Mapping[str, Any]) -> str:
        label = parse(body)
        if label == "bug":
            raise InvalidResult("bugs go elsewhere now")
        return str(label)

    bugs = sum(r["result"] == "bug" for r in first.results)
    strict = await run_rows(
        tmp_path / "c", provider, rows, cache=cache, job=dataclasses.replace(CLASSIFY, parse_result=no_bugs)
    )
    assert 0 < bugs < 20 and provider.stats().total == 20 + bugs  # only the rejected ones are asked, online
    assert len(strict.errors) == bugs and all("cache" not in e["meta"] for e in strict.errors)
    assert strict.manifest["cache"]["hits"] == 20 - bugs


async def test_errors_are_never_cached_nor_shared_with_duplicates(tmp_path: Path, provider: FakeProvider) -> None:
    assert CLASSIFY.parse_result is not None
    parse = CLASSIFY.parse_result

    def no_bugs(body: Mapping[str, Any]) -> str:
        if (label := parse(body)) == "bug":
            raise InvalidResult("bugs go elsewhere")
        return str(label)

    cache = CacheSettings(tmp_path / "cache")
    rows = [*tickets(8), *({"id": f"bad-{i}", "text": "refund please [[fail:400]]"} for i in range(3))]
    strict = dataclasses.replace(CLASSIFY, parse_result=no_bugs)
    first = await run_rows(tmp_path / "a", provider, rows, cache=cache, job=strict)
    assert len(first.results) == 6 and len(first.errors) == 5  # two answers rejected, three 400s
    assert provider.stats().total == 11  # the failed first row's duplicates were each sent
    assert all(e["response"] is not None for e in first.errors if e["custom_id"].startswith("t-"))
    second = await run_rows(tmp_path / "b", provider, rows, cache=cache)
    # The rejected answers were not stored (a job that accepts them now asks again), nor the 400s.
    assert provider.stats().total == 16 and second.manifest["cache"]["hits"] == 6


async def test_a_thousand_rows_of_a_hundred_requests_send_a_hundred(tmp_path: Path, provider: FakeProvider) -> None:
    rows = [{"id": f"d-{i:04d}", "text": f"I was charged twice for order {i % 100}"} for i in range(1000)]
    done = await run_rows(tmp_path / "a", provider, rows, cache=CacheSettings(tmp_path / "cache"), concurrency=16)
    assert provider.stats().total == 100
    assert sorted(r["custom_id"] for r in done.results) == [r["id"] for r in rows]  # each its own record
    assert {r["custom_id"]: r["meta"]["line"] for r in done.results} == {r["id"]: i + 1 for i, r in enumerate(rows)}
    reused = [r for r in done.results if r["meta"].get("cache")]
    assert len(reused) == 900 and {r["meta"]["cache"] for r in reused} == {"dedup"}  # this run's own answers
    assert done.manifest["cache"]["dedup"] == 900 and done.manifest["models"][MODEL]["requests"] == 100
    labels = {r["custom_id"]: r["result"] for r in done.results}
    assert all(labels[f"d-{i:04d}"] == labels[f"d-{i % 100:04d}"] for i in range(1000))
    status = read_run(tmp_path / "a" / "run")  # runner status
    assert status["cache"]["dedup"] == 900 and status["cache"]["saved_usd"] > 0
    assert any(
        line.startswith("cache     0 answered from the response cache, 900 by an identical row")
        for line in _detail(status)
    )


async def test_without_the_cache_duplicates_still_share_and_nothing_is_left_behind(
    tmp_path: Path, provider: FakeProvider
) -> None:
    rows = [{"id": f"d-{i:03d}", "text": f"please add dark mode, take {i % 10}"} for i in range(60)]
    done = await run_rows(tmp_path / "a", provider, rows, cache=CacheSettings(None))  # --no-cache
    assert provider.stats().total == 10 and len(done.results) == 60 and done.manifest["cache"]["dedup"] == 50
    assert not (tmp_path / "a" / "run" / "dedup-cache").exists()  # the run's private store goes when complete
    again = await run_rows(tmp_path / "b", provider, rows, cache=CacheSettings(None, dedup=False))  # --no-dedup too
    assert provider.stats().total == 70 and again.manifest["cache"]["dedup"] == 0


async def test_a_run_stopped_while_duplicates_wait_loses_none_of_them(tmp_path: Path, provider: FakeProvider) -> None:
    """Duplicates held back for a first row still in flight get no record when the run stops; the next
    run answers them from that row's answer (sent once more: it never landed)."""
    cache = CacheSettings(tmp_path / "cache")
    slow = "the export button does nothing"
    rows = [*tickets(4), *({"id": f"dup-{i}", "text": slow} for i in range(5))]
    provider.hold(lambda text: text == slow)
    stop = asyncio.Event()
    running = asyncio.create_task(run_rows(tmp_path, provider, rows, stop=stop, cache=cache, grace=0.0))
    await asyncio.to_thread(provider.wait_for, lambda s: s.total == 5)  # four answered, the first "slow" parked
    await asyncio.to_thread(wait_until, lambda: Lines(tmp_path / "run" / "results.jsonl")() == 4, "4 records")
    stop.set()
    stopped = await running
    provider.release()
    assert stopped.report.status == "interrupted" and len(stopped.results) == 4
    done = await run_rows(tmp_path, provider, None, cache=cache)
    assert done.report.status == "completed"
    assert sorted(r["custom_id"] for r in done.results) == sorted(r["id"] for r in rows)  # each once
    assert provider.stats().by_key[slow] == 2  # parked once, then once more; never for the duplicates
    assert sum(r["meta"].get("cache") == "dedup" for r in done.results) == 4


async def test_a_dry_run_counts_what_the_cache_would_answer_and_prices_the_rest(
    tmp_path: Path, provider: FakeProvider
) -> None:
    cache = CacheSettings(tmp_path / "cache")
    rows = tickets(30)
    await run_rows(tmp_path / "a", provider, rows, cache=cache)
    new = tickets(10, prefix="n")
    later = [*rows, *new, *({"id": f"again-{i}", "text": new[i]["text"]} for i in range(5))]
    write_jsonl(tmp_path / "later.jsonl", later)
    caller = caller_for(provider)
    found = await estimate(caller, tmp_path / "later.jsonl", tmp_path / "b", cache=cache)
    assert (found.cached, found.duplicates, found.to_do) == (30, 5, 10)
    assert found.models[MODEL].rows == 10
    assert "30 rows answered by the response cache, 5 identical to an earlier row" in found.report()
    assert not (tmp_path / "b").exists()
    alone = await estimate(caller, tmp_path / "later.jsonl", tmp_path / "b", cache=CacheSettings(None, dedup=False))
    assert (alone.cached, alone.duplicates, alone.to_do) == (0, 0, 45)
    assert provider.stats().total == 30


def test_the_key_is_the_request_without_credentials_or_patience(provider: FakeProvider) -> None:
    row = Row(1, "t-1", {"text": "I was charged twice"})
    keyed, keyless = caller_for(provider), caller_for(provider)
    keyless = dataclasses.replace(keyless, keyless=True)
    request, _ = keyed.request(row)
    assert request is not None
    key = key_of(request)
    assert key is not None and len(key) == 32
    assert key == key_of({**request, "api_key": "sk-other", "timeout": 1, "max_retries": 3})
    assert key == key_of(keyless.request(row)[0] or {})  # a dry run keys rows as the run does
    for change in ({"temperature": 0.7}, {"api_base": "http://elsewhere/v1"}, {"seed": 1}, {"model": "openai/x"}):
        assert key_of({**request, **change}) != key
    assert key_of({**request, "extra": object()}) is None  # not plain JSON: never cached
    assert parse_size("500M") == 500 << 20 and parse_size("2GiB") == 2 << 30 and parse_size("1048576") == 1 << 20
    with pytest.raises(ValueError, match="500M"):
        parse_size("lots")


def _run(cache_dir: Path, input_path: Path, runs: Path, url: str, *extra: str) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "runner", "run", "classify", "--jobs-dir", str(ROOT / "jobs"),
               "--input", str(input_path), "--runs-dir", str(runs), "--model", MODEL, "--api-base", url,
               "--cache-dir", str(cache_dir), "--concurrency", "8", "-q", *extra]  # fmt: skip
    return subprocess.Popen(command, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.timeout(180)
async def test_two_runs_share_the_cache_and_a_sigkill_leaves_it_whole(tmp_path: Path, provider: FakeProvider) -> None:
    """A run in another process and one in this process write the same cache; the other is SIGKILLed
    in the middle of it. The cache stays whole, and what the killed run stored answers a later run."""
    cache_dir, runs = tmp_path / "cache", tmp_path / "runs"
    rows = tickets(200, "a")
    slow = [{**row, "text": f"{row['text']} [[latency:40]]"} for row in tickets(100, "b")]
    last = {rows[-1]["text"], slow[-1]["text"]}
    provider.hold(lambda text: text in last)  # neither run can finish before the kill
    killed = _run(cache_dir, write_jsonl(tmp_path / "one.jsonl", rows), runs, provider.url)
    journaled = Lines(runs / "classify" / "one" / "results.jsonl")
    await asyncio.to_thread(wait_until, lambda: journaled() >= 5 or killed.poll() is not None, "5 rows")
    # 20 of its answers durable in the cache (it commits in batches, behind its journal) before the other
    # run starts writing there too: what the killed run stored is then known to be at least 20.
    await asyncio.to_thread(wait_until, lambda: _stored(cache_dir) >= 20 or killed.poll() is not None, "20 stored")
    here = asyncio.create_task(
        run_rows(tmp_path / "here", provider, slow, concurrency=4, cache=CacheSettings(cache_dir))
    )
    await asyncio.to_thread(wait_until, lambda: journaled() >= 40 or killed.poll() is not None, "40 rows")
    assert killed.poll() is None and not here.done(), killed.communicate()[1][-2000:]
    killed.send_signal(signal.SIGKILL)  # both are writing answers to the cache
    await asyncio.to_thread(killed.communicate)
    provider.release()
    assert len((await here).results) == 100

    with sqlite3.connect(cache_dir / "cache.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    store = ResponseCache(cache_dir)
    try:
        entries = list(store.entries())
    finally:
        store.close()
    assert len(entries) >= 100 + 20 and all(e is not None for e in entries)
    sent = provider.stats().total
    # The killed run's input again, as another run: what it had stored is answered without a request.
    again = await run_rows(tmp_path / "again", provider, rows, cache=CacheSettings(cache_dir))
    assert sorted(r["custom_id"] for r in again.results) == [r["id"] for r in rows]
    hits = again.manifest["cache"]["hits"]
    assert hits >= 20 and provider.stats().total - sent == 200 - hits


def _stored(cache_dir: Path) -> int:
    """Entries committed to the cache so far (0 before its file exists)."""
    try:
        with contextlib.closing(sqlite3.connect(cache_dir / "cache.db", timeout=5)) as db:
            return int(db.execute("SELECT COUNT(*) FROM Cache").fetchone()[0])
    except sqlite3.Error:
        return 0


def test_status_and_help_do_not_import_the_cache(tmp_path: Path) -> None:
    quietly = "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()): main"
    code = (
        "import sys, contextlib, io; from runner.cli import main\n"
        f"{quietly}(['status', '--runs-dir', {str(tmp_path)!r}])\n"
        f"{quietly}(['run', '--help'])\n"
        "print('diskcache' in sys.modules, 'runner.run.cache' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.split()[-2:] == ["False", "False"]


def test_a_groups_key_holds_what_answers_it_not_who_pays_or_how_long_to_wait(provider: FakeProvider) -> None:
    """Issue 24, item 5: with --deployments the key holds each deployment's model, endpoint and answer-deciding
    arguments; a new key or a deployment's own time-out must not buy every answer again."""
    from runner.call.assemble import build_caller
    from runner.call.deployfile import parse_deployments
    from runner.call.retry import RetryPolicy
    from runner.permits.limits import Limits
    from runner.plan import CallPlan

    row = Row(1, "t-1", {"text": "I was charged twice"})

    def key(**params: Any) -> bytes | None:
        litellm_params = {"model": "openai/gpt-4o-mini", "api_base": provider.url, "api_key": "k-1-xxxxxx", **params}
        plan = parse_deployments({"model_list": [{"model_name": "fast", "litellm_params": litellm_params}]}, "test")
        caller = build_caller(CallPlan(CLASSIFY, RetryPolicy(), 5.0, model="fast", deployments=plan), Limits(4))
        request, _ = caller.request(row)
        assert request is not None
        return key_of(caller.served_by(request), caller.credentials_for("fast"))

    first = key()
    assert first is not None
    assert key(api_key="k-2-yyyyyy", timeout=600, stream_timeout=60, max_retries=2) == first
    for change in ({"model": "openai/gpt-4o"}, {"api_base": "http://elsewhere/v1"}, {"temperature": 0.9}):
        assert key(**change) != first, change
