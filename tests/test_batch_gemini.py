"""``--batch-api`` with ``gemini/`` models: Gemini's Batch Mode over its REST endpoints (issue #25 item 2).

Every run goes through runner's real HTTP path (aiohttp for the batch calls, litellm's httpx for the
online lane and the rescue) to the fake Gemini API in tests/fake_gemini.py, which speaks the wire
format the google-genai SDK does. Batches end when a test releases them; the crash test SIGKILLs
the CLI while the fake parks the create call's answer (the batch exists, runner never learned its name).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import signal
from pathlib import Path
from typing import Any

import pytest
from openai.types.chat import ChatCompletion

from runner.call.caller import Caller
from runner.call.retry import RetryPolicy
from runner.errors import UsageError
from runner.executors.batch import BatchExecutor, BatchOptions
from runner.executors.batch_seam import Tag
from runner.executors.gemini_batches import GeminiBatches
from runner.job.definition import load_job
from runner.run.coordinator import RunSettings, run
from tests.conftest import ROOT, SECRET, read_jsonl, write_jsonl
from tests.fake_provider import FakeProvider
from tests.helpers import CLASSIFY, Finished, caller_for, finished, line_count, text_of, tickets, wait_until
from tests.test_batch_api import by_id, start, via
from tests.test_batch_anthropic import canonical, no_secret_in
from tests.test_cli import runner

GEMINI = "gemini/gemini-2.5-flash"  # litellm's map has its batch prices: half the online ones
FAST = BatchOptions(poll_s=0.02)


@pytest.fixture(autouse=True)
def _gemini_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEMINI_API_KEY", SECRET)


def base(provider: FakeProvider) -> str:
    return provider.root + "/v1beta"


async def gemini_run(
    tmp_path: Path,
    provider: FakeProvider,
    rows: list[Any] | None,
    options: BatchOptions | None = FAST,
    as_cli: bool = False,
    job: Any = None,
) -> Finished:
    """``rows`` (None: keep the input) through the Batch API (``options`` None: online) with GEMINI."""
    from runner.provider.provider import aclose

    if rows is not None:
        tmp_path.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240
        write_jsonl(tmp_path / "in.jsonl", rows)
    caller = dataclasses.replace(caller_for(provider, job=job or CLASSIFY), model=GEMINI, api_base=base(provider))
    run_dir = tmp_path / "run"
    if as_cli:  # the caller and run directory the CLI's command makes
        policy = RetryPolicy(max_attempts=CLASSIFY.max_attempts)
        caller = Caller(job=CLASSIFY, policy=policy, timeout=CLASSIFY.timeout, model=GEMINI, api_base=base(provider))
        run_dir = tmp_path / "runs" / "classify" / "in"
    settings = RunSettings(tmp_path / "in.jsonl", run_dir, run_dir.name, concurrency=8)
    executor = None if options is None else BatchExecutor(caller, run_dir, 8, options)
    try:
        report = await run(caller, settings, executor=executor)
    finally:
        await aclose()
    return finished(report, run_dir)


def cli_args(provider: FakeProvider, *extra: str) -> list[str]:
    return ["run", "classify", "--jobs-dir", str(ROOT / "jobs"), "--input", "in.jsonl", "--model", GEMINI,
            "--api-base", base(provider), "--batch-api", "--batch-poll", "0.05", *extra]  # fmt: skip


def same_body(batch: dict[str, Any], online: dict[str, Any]) -> None:
    drop = ("id", "created")
    assert {k: v for k, v in batch.items() if k not in drop} == {k: v for k, v in online.items() if k not in drop}


async def test_rows_through_gemini_batches_give_the_online_records_at_half_price(
    tmp_path: Path, provider: FakeProvider
) -> None:
    rows = tickets(40)
    batched = await gemini_run(tmp_path / "b", provider, rows, BatchOptions(poll_s=0.02, batch_size=15))
    assert batched.report.status == "completed" and batched.errors == []
    stats = provider.gemini.stats()
    assert stats.batches == 3 and stats.lines == 40 and stats.online == 0  # not one online call
    assert via(batched.results) == {"batch": 40}
    sent_in_batches = list(provider.gemini.bodies)
    token = json.loads((tmp_path / "b" / "run" / "batches" / "ledger.jsonl").read_text().splitlines()[0])["token"]
    assert provider.gemini.display_names == [f"runner-{token}-0000{n} run" for n in (1, 2, 3)]

    plain = await gemini_run(tmp_path / "p", provider, rows, options=None)
    assert provider.gemini.stats().online == 40
    # Each request in a batch is the body litellm's online call posted to :generateContent for the same row.
    assert canonical(sent_in_batches) == canonical(provider.gemini.bodies[40:])

    got = by_id(batched.results)
    assert sorted(got) == sorted(r["id"] for r in rows)
    cost = 0.0
    for record in plain.results:  # the same record as online, but for meta and the ids each answer has
        batch = got[record["custom_id"]]
        assert list(batch) == list(record) and batch["result"] == record["result"]
        ChatCompletion.model_validate(batch["response"]["body"])
        same_body(batch["response"]["body"], record["response"]["body"])
        assert batch["meta"]["via"] == "batch" and batch["meta"]["batch_id"].startswith("batches/")
        assert batch["meta"]["cost_usd"] == pytest.approx(record["meta"]["cost_usd"] / 2)
        cost += batch["meta"]["cost_usd"]
    assert cost == pytest.approx(plain.manifest["cost_usd"] / 2) and cost > 0
    print(
        f"gemini batch/online cost: {cost:.8f} / {plain.manifest['cost_usd']:.8f} = {cost / plain.manifest['cost_usd']:.3f}"
    )
    assert batched.manifest["cost_usd"] == pytest.approx(cost)
    assert batched.manifest["usage"] == plain.manifest["usage"]
    lanes = batched.manifest["lanes"]
    assert set(lanes) == {"batch"} and lanes["batch"]["requests"] == 40
    assert batched.manifest["batches"]["submitted"] == 3 and batched.manifest["batches"]["open"] == []
    no_secret_in(tmp_path)
