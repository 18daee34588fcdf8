"""--dry-run: every row still to do counted offline and priced, with nothing sent and nothing written."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import litellm
import pytest

from runner.provider.prices import prices
from runner.provider.provider import estimate_tokens
from runner.run.estimate import estimate
from runner.run.source import Row
from tests.doubles.provider import FakeProvider
from tests.support.cli import runner
from tests.support.files import ROOT, write_jsonl
from tests.support.run import MODEL, caller_for, run_rows, tickets


async def test_counts_every_row_as_a_run_would_build_it(tmp_path: Path, provider: FakeProvider) -> None:
    rows = tickets(30)
    write_jsonl(tmp_path / "in.jsonl", [*rows, "{not json", {"id": "no-text"}])
    caller = caller_for(provider)
    found = await estimate(caller, tmp_path / "in.jsonl", tmp_path / "run")
    built = [caller.request(Row(i + 1, r["id"], r))[0] for i, r in enumerate(rows)]
    counts = [estimate_tokens(b) for b in built if b is not None]
    assert (found.to_do, found.done, found.unusable) == (30, 0, 2)
    model = found.models[MODEL]
    assert model.rows == 30
    assert model.prompt_tokens == sum(p for p, _ in counts) > 0
    assert model.max_output_tokens == sum(m for _, m in counts) > 0
    price = prices(MODEL)
    assert price is not None and price.batch
    info = litellm.get_model_info(MODEL)  # the bundled map's figures, per token
    cin, cout = float(info["input_cost_per_token"] or 0), float(info["output_cost_per_token"] or 0)
    costs, batch = found.costs(), found.costs("batch")
    assert costs["input"] == pytest.approx(model.prompt_tokens * cin)
    assert costs["ceiling"] == pytest.approx(model.prompt_tokens * cin + model.max_output_tokens * cout)
    assert batch["ceiling"] == pytest.approx(
        model.prompt_tokens * float(info["input_cost_per_token_batches"] or 0)
        + model.max_output_tokens * float(info["output_cost_per_token_batches"] or 0)
    )
    assert costs["expected"] is None  # no answers yet to average
    assert provider.stats().total == 0
    assert not (tmp_path / "run").exists()


async def test_skips_what_the_run_already_holds_and_expects_its_answer_length(
    tmp_path: Path, provider: FakeProvider
) -> None:
    rows = tickets(20)
    done = await run_rows(tmp_path, provider, rows[:12])
    write_jsonl(tmp_path / "in.jsonl", rows)  # the input grew by 8 rows
    calls = provider.stats().total
    found = await estimate(caller_for(provider), tmp_path / "in.jsonl", tmp_path / "run")
    assert (found.to_do, found.done) == (8, 12)
    output = done.manifest["usage"]["output_tokens"]
    assert found.output_per_row == pytest.approx(output / 12)
    price = prices(MODEL)
    assert price is not None
    expected = price.cost(found.models[MODEL].prompt_tokens, round(output / 12 * 8))
    assert found.costs()["expected"] == pytest.approx(expected)
    assert provider.stats().total == calls


def test_cli_dry_run_needs_no_key_and_writes_nothing(tmp_path: Path, provider: FakeProvider) -> None:
    write_jsonl(tmp_path / "in.jsonl", tickets(25))
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    proc = runner("run", "classify", "--jobs-dir", str(ROOT / "jobs"), "--input", "in.jsonl", "--model", MODEL,
                  "--dry-run", cwd=tmp_path, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "dry run of in.jsonl: 25 rows to send (0 already done, 0 unusable)" in proc.stdout
    assert f"{MODEL}: 25 rows," in proc.stdout
    assert "at batch-API prices: prompts $" in proc.stdout
    assert not (tmp_path / "runs").exists()
    assert provider.stats().total == 0


def test_cli_dry_run_says_when_a_model_has_no_price(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "in.jsonl", tickets(3))
    proc = runner("run", "classify", "--jobs-dir", str(ROOT / "jobs"), "--input", "in.jsonl",
                  "--model", "openai/house-model", "--dry-run", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "no price in litellm's map: cost unknown" in proc.stdout
    assert "cost: unknown" in proc.stdout


async def test_says_when_a_real_run_would_refuse_and_how_the_cap_stands(tmp_path: Path, provider: FakeProvider) -> None:
    done = await run_rows(tmp_path, provider, tickets(10))
    write_jsonl(tmp_path / "in.jsonl", tickets(40))
    spent = done.manifest["cost_usd"]
    found = await estimate(caller_for(provider), tmp_path / "in.jsonl", tmp_path / "run", cap=spent + 1.0)
    assert found.refused == [] and found.spent == pytest.approx(spent)
    assert f"--max-cost ${spent + 1.0:g}: ${spent:.4f} already spent" in found.report()
    assert "the whole estimate fits" in found.report()
    tight = await estimate(caller_for(provider), tmp_path / "in.jsonl", tmp_path / "run", cap=spent * 1.5)
    assert "the run will stop at the cap (exit 4) before finishing" in tight.report()

    other = dataclasses.replace(caller_for(provider), model="openai/gpt-4o")
    changed = await estimate(other, tmp_path / "in.jsonl", tmp_path / "run")
    assert changed.refused == ["the model changed (openai/gpt-4o-mini -> openai/gpt-4o)"]
    assert "`runner run` would refuse to resume this run (the model changed" in changed.report()


def test_each_lanes_prices_side_by_side_the_runs_marked_and_the_cap_weighed_at_it() -> None:
    """Issue 25: online, Batch API, flex and priority prices in one report; the run's lane marked, and
    --max-cost weighed at that lane's prices."""
    from runner.run.estimate import Estimate, ModelEstimate

    model = "openai/gpt-5-mini"
    counted = {model: ModelEstimate(rows=1000, prompt_tokens=100_000, max_output_tokens=50_000, prices=prices(model))}

    def report(lane: str, cap: float | None = None) -> dict[str, str]:
        text = Estimate(to_do=1000, models=counted, lane=lane, cap=cap).report()
        return {line.split(":")[0].strip(): line for line in text.splitlines()}

    def ceiling(line: str) -> float:
        return float(line.rsplit("at most $", 1)[1].split()[0])

    lines = report("online")
    labels = ("cost", "at batch-API prices", "at the flex tier", "at the priority tier")
    assert all("prompts $" in lines[k] and "<- this run" not in lines[k] for k in labels), lines
    online, batch, flex, priority = (ceiling(lines[k]) for k in labels)
    assert batch == pytest.approx(online / 2, rel=0.01) and flex == pytest.approx(online / 2, rel=0.01)
    assert priority > 1.5 * online
    cap = (online + flex) / 2  # the whole estimate fits at flex prices, not at online ones
    assert "<- this run" in report("flex", cap)["at the flex tier"]
    assert "the whole estimate fits" in report("flex", cap)["--max-cost $" + f"{cap:g}"]
    assert "the whole estimate fits" not in report("online", cap)["--max-cost $" + f"{cap:g}"]
    assert "<- this run" in report("batch")["at batch-API prices"]


def test_cli_dry_run_marks_the_lane_its_flags_choose(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "in.jsonl", tickets(5))
    proc = runner("run", "classify", "--jobs-dir", str(ROOT / "jobs"), "--input", "in.jsonl", "--model",
                  "openai/gpt-5-mini", "--service-tier", "flex", "--dry-run", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    [marked] = [line for line in proc.stdout.splitlines() if "<- this run" in line]
    assert marked.strip().startswith("at the flex tier: prompts $")


def test_max_cost_reserves_at_the_tier_the_run_asks_for() -> None:
    """A priority request costs more than a default one: --max-cost reserves at its tier's prices, and a flex
    one with --flex-deadline (it may go at the default tier) at the default's."""
    from runner.permits.budget import Budget

    model = "openai/gpt-5-mini"
    default, flex, priority = (Budget(1.0, tier).worst_case(model, 1000, 100) for tier in (None, "flex", "priority"))
    assert flex == pytest.approx(default / 2) and priority > 1.5 * default
    assert Budget(1.0, "priority").worst_case("openai/gpt-4o-mini", 1000, 100) > Budget(1.0).worst_case(
        "openai/gpt-4o-mini", 1000, 100
    )
