"""The whole pipeline through litellm's real HTTP path against the fake provider."""

from __future__ import annotations

from pathlib import Path

import pytest
from openai.types.chat import ChatCompletion

from runner.errors import FatalProviderError
from tests.doubles.provider import FakeProvider
from tests.support.files import SECRET, write_jsonl
from tests.support.run import run_rows, tickets

EXPECTED = {"error": "bug", "dark mode": "feature", "charged": "billing", "office hours": "other"}


async def test_happy_path_writes_valid_batch_output(tmp_path: Path, provider: FakeProvider) -> None:
    rows = tickets(40)
    done = await run_rows(tmp_path, provider, rows)

    assert done.report.status == "completed" and done.errors == []
    assert sorted(r["custom_id"] for r in done.results) == [r["id"] for r in rows]
    by_id = {r["id"]: r["text"] for r in rows}
    for record in done.results:
        ChatCompletion.model_validate(record["response"]["body"])
        assert record["id"].startswith("batch_req_") and record["error"] is None
        assert record["response"]["status_code"] == 200 and record["response"]["request_id"].startswith("req_")
        want = next(label for word, label in EXPECTED.items() if word in by_id[record["custom_id"]])
        assert record["result"] == want
        assert record["meta"]["attempts"] == 1 and record["meta"]["cost_usd"] > 0
    stats = provider.stats()
    assert stats.total == 40
    sent = stats.last_request_for(rows[0]["text"])
    assert sent.max_tokens == 5 and sent.temperature == 0 and sent.has_authorization
    assert done.manifest["request_counts"] == {"total": 40, "completed": 40, "failed": 0}
    assert done.manifest["status"] == "completed"


@pytest.mark.parametrize(
    ("directive", "ok", "attempts", "code"),
    [
        ("[[fail:500:times=2]]", True, 3, None),
        ("[[fail:502:times=1]]", True, 2, None),
        ("[[fail:503:times=1]]", True, 2, None),
        ("[[fail:drop:times=1]]", True, 2, None),
        ("[[fail:timeout:sleep=3:times=1]]", True, 2, None),
        ("[[fail:500]]", False, 4, "server_error"),
        ("[[fail:drop]]", False, 4, "connection_error"),
        ("[[fail:timeout:sleep=3]]", False, 4, "timeout"),
        ("[[fail:429:retry_after_ms=20]]", False, 4, "rate_limited"),
        ("[[fail:400]]", False, 1, "bad_request"),
        ("[[answer:a bug or a feature?]]", False, 1, "invalid_result"),
        ("[[answer:no idea]]", False, 1, "invalid_result"),
    ],
)
async def test_each_failure_gets_the_attempts_it_deserves(
    tmp_path: Path, provider: FakeProvider, directive: str, ok: bool, attempts: int, code: str | None
) -> None:
    text = f"my invoice is wrong {directive}"
    done = await run_rows(tmp_path, provider, [{"id": "x", "text": text}], timeout=0.5)

    assert provider.stats().by_key[text] == attempts
    records = done.results if ok else done.errors
    assert len(records) == 1 and len(done.results) + len(done.errors) == 1
    assert records[0]["meta"]["attempts"] == attempts
    if not ok:
        assert records[0]["error"]["code"] == code
        assert SECRET not in records[0]["error"]["message"]
        # The model's answer was paid for, so it is kept with the error.
        assert (records[0]["response"] is not None) == (code == "invalid_result")


async def test_retry_after_is_honoured(tmp_path: Path, provider: FakeProvider) -> None:
    text = "refund please [[fail:429:retry_after_ms=400:times=1]]"
    done = await run_rows(tmp_path, provider, [{"id": "x", "text": text}])

    meta = done.results[0]["meta"]
    assert meta["attempts"] == 2 and meta["rate_limited"] == 1
    assert meta["latency_s"] >= 0.4  # back-off alone would have waited at most 0.05 s
    assert done.manifest["rate_limited"] == 1 and done.manifest["retries"] == 1


@pytest.mark.parametrize(
    ("status", "code"), [(401, "authentication_failed"), (403, "permission_denied"), (404, "model_not_found")]
)
async def test_fatal_errors_stop_the_run_and_leave_it_resumable(
    tmp_path: Path, provider: FakeProvider, status: int, code: str
) -> None:
    rows = tickets(60)
    rows[5]["text"] += f" [[fail:{status}:times=1]]"  # the provider refuses once, as if the key were fixed after
    with pytest.raises(FatalProviderError, match=code):
        await run_rows(tmp_path, provider, rows, concurrency=2)
    assert provider.stats().total <= 10  # stopped at once, not after sixty doomed requests
    first = (tmp_path / "run" / "manifest.json").read_text()
    assert '"status": "failed"' in first and SECRET not in first

    done = await run_rows(tmp_path, provider, rows, concurrency=2)
    assert done.report.status == "completed"
    assert sorted(r["custom_id"] for r in done.results) == [r["id"] for r in rows]


async def test_malformed_lines_become_errors_naming_the_line(tmp_path: Path, provider: FakeProvider) -> None:
    rows: list = tickets(6)
    rows[1:1] = [
        "{not json",
        "[1, 2]",
        {"id": "", "text": "empty id"},
        {"id": "t-0000", "text": "again"},
        {"id": "no-text"},
        "   ",
    ]
    done = await run_rows(tmp_path, provider, rows)

    assert sorted(r["custom_id"] for r in done.results) == [f"t-{i:04d}" for i in range(6)]
    errors = {e["error"]["code"]: e for e in done.errors}
    assert set(errors) == {"invalid_json", "invalid_record", "invalid_id", "duplicate_id"}
    assert errors["invalid_json"]["error"]["message"].startswith("line 2:")
    assert errors["invalid_json"]["meta"]["line"] == 2
    assert errors["duplicate_id"]["custom_id"] == "t-0000#line-5"
    assert {e["meta"]["line"] for e in done.errors} == {2, 3, 4, 5, 6}
    assert done.manifest["request_counts"] == {"total": 11, "completed": 6, "failed": 5}
    assert provider.stats().total == 6


async def test_manifest_totals_equal_the_sum_over_records(tmp_path: Path, provider: FakeProvider) -> None:
    provider.configure(p500=0.15, p429=0.15, retry_after=0.01, seed=7)
    rows = [*tickets(120), {"id": "bad", "text": "[[answer:maybe]]"}]
    done = await run_rows(tmp_path, provider, rows, concurrency=16, max_attempts=10)

    records = done.results + done.errors
    assert len(records) == 121 and len({r["custom_id"] for r in records}) == 121
    bodies = [r["response"]["body"] for r in records if r["response"]]
    usage = done.manifest["usage"]
    assert usage["input_tokens"] == sum(b["usage"]["prompt_tokens"] for b in bodies)
    assert usage["output_tokens"] == sum(b["usage"]["completion_tokens"] for b in bodies)
    assert usage["total_tokens"] == sum(b["usage"]["total_tokens"] for b in bodies)
    assert done.manifest["cost_usd"] == pytest.approx(sum(r["meta"]["cost_usd"] for r in records if r["response"]))
    assert done.manifest["retries"] == sum(r["meta"]["attempts"] - 1 for r in records) > 0
    assert done.manifest["rate_limited"] == sum(r["meta"]["rate_limited"] for r in records) > 0
    assert done.manifest["finish_reasons"] == {"stop": 121}
    assert done.manifest["models"]["openai/gpt-4o-mini"]["requests"] == 121


async def test_a_second_run_sends_only_what_is_missing(tmp_path: Path, provider: FakeProvider) -> None:
    rows = tickets(20)
    await run_rows(tmp_path, provider, rows)
    provider.reset()

    again = await run_rows(tmp_path, provider, rows)
    assert provider.stats().total == 0 and len(again.results) == 20

    grown = await run_rows(tmp_path, provider, rows + tickets(5, prefix="new"))
    assert provider.stats().total == 5
    assert len(grown.results) == 25 and len({r["custom_id"] for r in grown.results}) == 25
    assert grown.manifest["request_counts"]["completed"] == 25


async def test_a_torn_last_line_is_dropped_and_its_row_redone(tmp_path: Path, provider: FakeProvider) -> None:
    rows = tickets(10)
    first = await run_rows(tmp_path, provider, rows)
    results = tmp_path / "run" / "results.jsonl"
    data = results.read_bytes()
    results.write_bytes(data[: len(data) - 40])  # a crash in the middle of writing the last line
    provider.reset()

    done = await run_rows(tmp_path, provider, rows)
    assert provider.stats().total == 1
    assert sorted(r["custom_id"] for r in done.results) == sorted(r["custom_id"] for r in first.results)


async def test_batch_input_runs_without_a_job_module(tmp_path: Path, provider: FakeProvider) -> None:
    from runner.job.definition import BATCH

    lines = [
        {
            "custom_id": f"req-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"hello {i}"}], "max_tokens": 20},
        }
        for i in range(5)
    ]
    lines.append({"custom_id": "req-image", "method": "POST", "url": "/v1/images/generations", "body": {}})
    write_jsonl(tmp_path / "in.jsonl", lines)
    done = await run_rows(tmp_path, provider, None, job=BATCH)

    assert sorted(r["custom_id"] for r in done.results) == [f"req-{i}" for i in range(5)]
    assert "result" not in done.results[0]
    assert [e["error"]["code"] for e in done.errors] == ["unsupported_url"]
    assert provider.stats().last_request_for("hello 3").max_tokens == 20
