"""--max-cost: a run never starts a request that could pass the cap, and the spend carries over restarts."""

from __future__ import annotations

from pathlib import Path

import litellm
import pytest

from runner import api
from runner.errors import UsageError
from runner.permits.budget import Budget, BudgetReached
from runner.provider.prices import prices
from tests.doubles.provider import FakeProvider
from tests.support.cli import runner
from tests.support.files import ROOT, read_jsonl
from tests.support.run import MODEL, run_rows, tickets

# What one classify request to gpt-4o-mini costs against the fake provider: about $3e-5.
ROWS = 40


def test_budget_reserves_worst_cases_and_stops_for_good() -> None:
    budget = Budget(cap=1.0)
    budget.reserve(0.6)
    with pytest.raises(BudgetReached):
        budget.reserve(0.5)  # 0.6 in flight + 0.5 > 1.0
    assert budget.reached
    budget.settle(0.6, 0.2)
    assert (budget.spent, budget.reserved) == (0.2, 0.0)
    with pytest.raises(BudgetReached):
        budget.reserve(0.01)  # once reached, no more rows start, even small ones


def test_an_answer_with_no_price_counts_as_its_worst_case() -> None:
    budget = Budget(cap=1.0)
    budget.reserve(0.3)
    budget.settle(0.3, None)
    assert budget.spent == 0.3


def test_worst_case_uses_max_tokens_or_the_model_ceiling() -> None:
    price = prices(MODEL)
    assert price is not None and price.max_output_tokens
    info = litellm.get_model_info(MODEL)  # the bundled map's figures, per token
    cin, cout = float(info["input_cost_per_token"] or 0), float(info["output_cost_per_token"] or 0)
    budget = Budget(cap=1.0)
    assert budget.worst_case(MODEL, 1000, 10) == pytest.approx(1100 * cin + 10 * cout)
    no_max = budget.worst_case(MODEL, 1000, 0)
    assert no_max == pytest.approx(1100 * cin + price.max_output_tokens * cout)
    budget.settle(0.0, 0.0, prompt=100, provider_prompt=150)  # the provider counted more than we did
    assert budget.worst_case(MODEL, 1000, 10) == pytest.approx(1650 * cin + 10 * cout)


def test_prices_are_litellms_own_figures_cached_input_included() -> None:
    """A response with cached prompt tokens costs what litellm bills it at, less than an uncached one."""
    price = prices(MODEL)
    assert price is not None
    usage = {"prompt_tokens": 1000, "completion_tokens": 10, "total_tokens": 1010,
             "prompt_tokens_details": {"cached_tokens": 800}}  # fmt: skip
    answer = litellm.ModelResponse(model=MODEL, usage=usage,
                                   choices=[{"index": 0, "finish_reason": "stop",
                                             "message": {"role": "assistant", "content": "bug"}}])  # fmt: skip
    billed = litellm.completion_cost(completion_response=answer, model=MODEL)
    assert price.cost(1000, 10, cached=800) == pytest.approx(billed)
    info = litellm.get_model_info(MODEL)
    uncached = 1000 * float(info["input_cost_per_token"] or 0) + 10 * float(info["output_cost_per_token"] or 0)
    assert billed < (price.cost(1000, 10) or 0) == pytest.approx(uncached)


def test_a_model_with_no_price_cannot_be_capped() -> None:
    with pytest.raises(UsageError, match="has none for model 'openai/not-a-priced-model'"):
        Budget(cap=1.0).worst_case("openai/not-a-priced-model", 10, 10)


async def test_the_cap_stops_the_run_and_the_spend_carries_over(tmp_path: Path, provider: FakeProvider) -> None:
    first = await run_rows(tmp_path, provider, tickets(ROWS), concurrency=8, budget=Budget(0.0006))
    cost = first.manifest["cost_usd"]
    assert first.report.stop_reason == "max_cost"
    assert first.manifest["status"] == "interrupted"
    assert first.manifest["stop_reason"] == "max_cost" and first.manifest["max_cost_usd"] == 0.0006
    assert 0 < len(first.results) < ROWS and not first.errors
    assert 0 < cost <= 0.0006
    assert cost == pytest.approx(sum(r["meta"]["cost_usd"] for r in first.results))
    assert 0.0006 - cost < 2 * 8 * cost / len(first.results)  # it stopped near the cap, not far below
    calls = provider.stats().total

    # The same cap again: the journal's spend counts. Only what the first run's unused worst-case
    # reservations left room for may go, and the spend stays under the cap.
    per_row = cost / len(first.results)
    again = await run_rows(tmp_path, provider, None, concurrency=8, budget=Budget(0.0006))
    assert again.report.stop_reason == "max_cost"
    assert again.manifest["cost_usd"] <= 0.0006
    assert provider.stats().total - calls <= (0.0006 - cost) / per_row + 1

    # A higher cap finishes the rest, each row once.
    done = await run_rows(tmp_path, provider, None, concurrency=8, budget=Budget(1.0))
    assert done.report.status == "completed" and done.report.stop_reason is None
    assert sorted(r["custom_id"] for r in done.results) == [t["id"] for t in tickets(ROWS)]
    assert done.manifest["cost_usd"] == pytest.approx(sum(r["meta"]["cost_usd"] for r in done.results))


def test_cli_max_cost_exits_4_and_resumes_with_a_higher_cap(tmp_path: Path, provider: FakeProvider) -> None:
    from tests.support.files import write_jsonl

    write_jsonl(tmp_path / "in.jsonl", tickets(ROWS))
    args = ["run", "classify", "--jobs-dir", str(ROOT / "jobs"), "--input", "in.jsonl", "--model", MODEL,
            "--api-base", provider.url, "--concurrency", "4"]  # fmt: skip
    capped = runner(*args, "--max-cost", "0.0004", cwd=tmp_path)
    assert capped.returncode == 4, capped.stderr
    assert "stopped before passing --max-cost $0.0004" in capped.stderr
    assert "higher --max-cost" in capped.stderr
    run_dir = tmp_path / "runs" / "classify" / "in"
    assert "exit 4: stopped before passing --max-cost" in (run_dir / "run.log").read_text()
    kept = read_jsonl(run_dir / "results.jsonl")
    assert 0 < len(kept) < ROWS

    # The resume with a higher cap, through the Python API in this process (the same options, one start less).
    rest = api.run("classify", tmp_path / "in.jsonl", jobs_dir=ROOT / "jobs", model=MODEL, api_base=provider.url,
                   runs_dir=tmp_path / "runs", concurrency=4, max_cost=5)  # fmt: skip
    assert rest.status == "completed" and rest.run_dir == run_dir
    assert len(read_jsonl(run_dir / "results.jsonl")) == ROWS


def test_cli_refuses_max_cost_for_an_unpriced_model(tmp_path: Path, provider: FakeProvider) -> None:
    from tests.support.files import write_jsonl

    write_jsonl(tmp_path / "in.jsonl", tickets(3))
    args = ["--input", "in.jsonl", "--model", "openai/house-model", "--api-base", provider.url, "--max-cost", "1"]
    proc = runner("run", "classify", "--jobs-dir", str(ROOT / "jobs"), *args, cwd=tmp_path)
    assert proc.returncode == 2
    assert "--max-cost needs prices, and litellm's price map has none for model 'openai/house-model'" in proc.stderr
    assert provider.stats().total == 0
