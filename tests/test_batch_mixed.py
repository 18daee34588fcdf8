"""One ``--batch-api`` run whose raw Batch lines name models of three providers (issue #25, item 5).

Three fake providers on three ports, each reached as a user with no ``--api-base`` reaches a provider: through
the environment variable litellm reads for it (``OPENAI_BASE_URL``, ``ANTHROPIC_API_BASE``, ``GEMINI_API_BASE``),
for the batches and for the online rescue alike. Every server serves every provider's API, so a request sent
to the wrong provider's server would be answered there, and counted: each test checks that none was.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import runner
from runner.errors import FatalProviderError
from tests.doubles.config import QUIET
from tests.doubles.provider import FakeProvider
from tests.support.batch import by_id, no_secret_in, via
from tests.support.cli import runner as cli
from tests.support.cli import start_quietly
from tests.support.files import SECRET, read_jsonl, text_of, wait_until, write_jsonl

# The body's model -> its provider. gpt-5-mini names no provider (litellm knows it is OpenAI's) and gets a
# batch of its own next to gpt-4o-mini's: one batch per provider and model.
MODELS = {
    "openai/gpt-4o-mini": "openai",
    "gpt-5-mini": "openai",
    "anthropic/claude-haiku-4-5": "anthropic",
    "gemini/gemini-2.5-flash": "gemini",
}
TEXTS = ("the app shows an error when I upload a file", "please add dark mode", "I was charged twice this month")


@dataclass
class Three:
    """A fake server per provider, each named by litellm's environment variable for that provider."""

    openai: FakeProvider
    anthropic: FakeProvider
    gemini: FakeProvider

    def batches(self) -> dict[str, int]:
        """Batches made at each server, of any provider's API."""
        return {name: _made(server) for name, server in self.servers().items()}

    def servers(self) -> dict[str, FakeProvider]:
        return {"openai": self.openai, "anthropic": self.anthropic, "gemini": self.gemini}


def _made(server: FakeProvider) -> int:
    return server.batches.stats().batches + server.anthropic.stats().batches + server.gemini.stats().batches


def _online(server: FakeProvider) -> int:
    return server.stats().total + server.anthropic.stats().online + server.gemini.stats().online


@pytest.fixture
def three(monkeypatch: pytest.MonkeyPatch) -> Iterator[Three]:
    with FakeProvider(**QUIET) as openai, FakeProvider(**QUIET) as anthropic, FakeProvider(**QUIET) as gemini:
        monkeypatch.setenv("OPENAI_BASE_URL", openai.url)
        monkeypatch.setenv("ANTHROPIC_API_BASE", anthropic.root)
        monkeypatch.setenv("GEMINI_API_BASE", gemini.root + "/v1beta")
        monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
        monkeypatch.setenv("GEMINI_API_KEY", SECRET)
        yield Three(openai, anthropic, gemini)


def mixed_lines(n: int, rescued: int = 0) -> list[dict[str, Any]]:
    """``n`` raw Batch lines, the models in turn; the first ``rescued`` fail once in their batch (a 500: asked
    again online). No temperature: gpt-5 models refuse 0."""
    lines = []
    for i in range(n):
        text = f"{TEXTS[i % 3]} (row {i})" + (" [[fail:500:times=1]]" if i < rescued else "")
        body = {
            "model": list(MODELS)[i % len(MODELS)],
            "max_tokens": 5,
            "messages": [{"role": "user", "content": text}],
        }
        lines.append({"custom_id": f"r-{i:04d}", "method": "POST", "url": "/v1/chat/completions", "body": body})
    return lines


def provider_of(record: dict[str, Any]) -> str:
    return MODELS[record["meta"]["model"]]


async def test_one_run_of_three_providers_makes_one_batch_per_provider_and_model_at_half_price(
    tmp_path: Path, three: Three
) -> None:
    """40 rows of four models of three providers: two OpenAI batches, one Anthropic, one Gemini, each at the
    server litellm's variable names; the four rows a batch failed are rescued online at their own provider's
    server; every row once; each batch answer costs half its online price; the manifest and ``runner status``
    show each provider's batches."""
    lines = mixed_lines(40, rescued=4)
    write_jsonl(tmp_path / "in.jsonl", lines)
    runs = tmp_path / "runs"
    done = await runner.arun("batch", tmp_path / "in.jsonl", runs_dir=runs, run_id="mixed", batch_api=True,
                             batch_poll=0.02, no_cache=True, no_dedup=True)  # fmt: skip
    assert done.status == "completed" and done.counts == {"total": 40, "completed": 40, "failed": 0}
    stats = three.servers()
    assert stats["openai"].batches.stats().batches == 2  # gpt-4o-mini's and gpt-5-mini's
    assert stats["anthropic"].anthropic.stats().batches == 1 and stats["gemini"].gemini.stats().batches == 1
    assert three.batches() == {"openai": 2, "anthropic": 1, "gemini": 1}  # nothing went to another's server
    assert stats["openai"].batches.stats().lines == 20  # 10 rows of each OpenAI model
    assert stats["anthropic"].anthropic.stats().lines == 10 and stats["gemini"].gemini.stats().lines == 10

    records = by_id(read_jsonl(done.run_dir / "results.jsonl"))  # each row once
    assert sorted(records) == sorted(line["custom_id"] for line in lines)
    rescued = {cid for cid, r in records.items() if r["meta"].get("via") != "batch"}
    assert rescued == {"r-0000", "r-0001", "r-0002", "r-0003"}  # one of each model, online
    assert {provider_of(records[cid]) for cid in rescued} == {"openai", "anthropic", "gemini"}
    assert stats["openai"].stats().total >= 2 and stats["anthropic"].anthropic.stats().online >= 1
    assert stats["gemini"].gemini.stats().online >= 1
    assert stats["openai"].anthropic.stats().online == stats["openai"].gemini.stats().online == 0
    assert _online(stats["anthropic"]) == stats["anthropic"].anthropic.stats().online  # only its own API
    assert _online(stats["gemini"]) == stats["gemini"].gemini.stats().online

    # The same rows online, at the default tier: each batch answer cost half of its online twin.
    online = await runner.arun("batch", tmp_path / "in.jsonl", runs_dir=runs, run_id="online", no_cache=True,
                               no_dedup=True)  # fmt: skip
    assert online.status == "completed"
    twins = by_id(read_jsonl(online.run_dir / "results.jsonl"))
    batch_cost: dict[str, float] = {}
    online_cost: dict[str, float] = {}
    for cid, record in records.items():
        if cid in rescued:
            continue
        provider = provider_of(record)
        assert record["meta"]["cost_usd"] == pytest.approx(twins[cid]["meta"]["cost_usd"] / 2), cid
        batch_cost[provider] = batch_cost.get(provider, 0.0) + record["meta"]["cost_usd"]
        online_cost[provider] = online_cost.get(provider, 0.0) + twins[cid]["meta"]["cost_usd"]
    assert set(batch_cost) == {"openai", "anthropic", "gemini"}
    for provider, cost in batch_cost.items():
        assert cost > 0 and cost == pytest.approx(online_cost[provider] / 2), provider

    manifest = done.manifest
    assert manifest["lanes"]["batch"]["requests"] == 36 and manifest["lanes"]["online"]["requests"] == 4
    by_model = {
        lane: {m: v["requests"] for m, v in whole["models"].items()} for lane, whole in manifest["lanes"].items()
    }
    assert by_model == {"batch": dict.fromkeys(MODELS, 9), "online": dict.fromkeys(MODELS, 1)}  # who went which way
    assert set(manifest["models"]) == set(MODELS)
    section = manifest["batches"]
    assert section["submitted"] == 4 and section["by_status"] == {"completed": 4} and section["open"] == []
    assert section["by_provider"] == {
        "anthropic": {"batches": 1, "rows": 10, "by_status": {"completed": 1}},
        "gemini": {"batches": 1, "rows": 10, "by_status": {"completed": 1}},
        "openai": {"batches": 2, "rows": 20, "by_status": {"completed": 2}},
    }
    status = await asyncio.to_thread(cli, "status", "batch", "--run-id", "mixed", "--runs-dir", str(runs), cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    said = status.stdout.splitlines()
    assert ("batches   anthropic 1 (completed 1, 10 rows), gemini 1 (completed 1, 10 rows), "
            "openai 2 (completed 2, 20 rows)") in said  # fmt: skip
    [batch] = [line for line in said if line.startswith("  batch   ")]
    assert batch.startswith("  batch   anthropic/claude-haiku-4-5 9 ($0.0") and "gpt-5-mini 9 ($0.0" in batch
    no_secret_in(runs)


@pytest.mark.slow
async def test_a_mixed_run_killed_between_creating_a_batch_and_recording_it_pays_each_provider_once(
    tmp_path: Path, three: Three
) -> None:
    """The command (a process of its own, given only the three variables) is SIGKILLed while Anthropic's create
    answer is parked, after the OpenAI batches are made; the same rows run again: every batch is found or made
    once at its own provider's server, every row is journaled once, nothing goes online."""
    lines = mixed_lines(24)
    write_jsonl(tmp_path / "in.jsonl", lines)
    run_dir = tmp_path / "runs" / "batch" / "in"
    three.anthropic.anthropic.configure(hold_create=True, held=True)
    args = ["run", "batch", "--input", "in.jsonl", "--batch-api", "--batch-poll", "0.05", "--no-cache"]
    killed = start_quietly(args, tmp_path)
    try:
        await asyncio.to_thread(three.anthropic.anthropic.wait_for, lambda s: s.parked == 1 and s.batches == 1)
        killed.send_signal(signal.SIGKILL)
    finally:
        killed.wait()
    assert three.batches() == {"openai": 2, "anthropic": 1, "gemini": 0}  # Gemini's chunk was never created
    three.anthropic.anthropic.configure(hold_create=False)  # its batch still runs when the command starts again

    async def release_once_found() -> None:  # the restarted run took the running batch as its chunk's
        ledger = run_dir / "batches" / "ledger.jsonl"
        await asyncio.to_thread(wait_until, lambda: text_of(ledger).count('"event":"created"') >= 4, "batches")
        three.anthropic.anthropic.release()

    releasing = asyncio.create_task(release_once_found())
    done = await runner.arun("batch", tmp_path / "in.jsonl", runs_dir=tmp_path / "runs", batch_api=True,
                             batch_poll=0.02, no_cache=True)  # fmt: skip
    await releasing
    assert done.status == "completed" and done.counts["completed"] == 24
    assert sorted(by_id(read_jsonl(run_dir / "results.jsonl"))) == sorted(line["custom_id"] for line in lines)
    assert three.batches() == {"openai": 2, "anthropic": 1, "gemini": 1}  # paid once each
    assert sum(_online(server) for server in three.servers().values()) == 0
    assert via(read_jsonl(run_dir / "results.jsonl")) == {"batch": 24}
    ledger = (run_dir / "batches" / "ledger.jsonl").read_text()
    assert ledger.count('"event":"created"') == 4 and '"event":"void"' not in ledger  # Anthropic's was found
    assert json.loads((run_dir / "manifest.json").read_text())["batches"]["by_provider"]["anthropic"]["batches"] == 1


async def test_a_provider_that_cannot_say_whether_it_made_a_batch_stops_the_run_and_the_next_start_pays_once(
    tmp_path: Path, three: Three
) -> None:
    """Anthropic refuses the create and then the list that would tell whether the create made a batch (before: the
    ProviderFailure escaped as a traceback). The run stops, naming both, with the chunk's intent kept; the next
    start looks for it, finds none, and submits those rows once; the other providers' batches are waited on."""
    lines = mixed_lines(16)
    write_jsonl(tmp_path / "in.jsonl", lines)
    run_dir = tmp_path / "runs" / "batch" / "in"
    options: dict[str, Any] = {"runs_dir": tmp_path / "runs", "batch_api": True, "batch_poll": 0.02, "no_cache": True}
    three.anthropic.anthropic.configure(refuse=403)
    with pytest.raises(FatalProviderError, match=r"chunk 3's batch at anthropic: creating it failed .*then looking"):
        await runner.arun("batch", tmp_path / "in.jsonl", **options)
    assert three.batches() == {"openai": 2, "anthropic": 0, "gemini": 0}
    three.anthropic.anthropic.configure(refuse=None)
    done = await runner.arun("batch", tmp_path / "in.jsonl", **options)
    assert done.status == "completed" and done.counts["completed"] == 16
    assert sorted(by_id(read_jsonl(run_dir / "results.jsonl"))) == sorted(line["custom_id"] for line in lines)
    assert three.batches() == {"openai": 2, "anthropic": 1, "gemini": 1}
    ledger = (run_dir / "batches" / "ledger.jsonl").read_text()
    assert ledger.count('"event":"void"') == 1 and '"why":"never created"' in ledger
