"""Every executor × every kind of job × every option: each combination works with every row once, or is
refused at start-up, and the docs' matrix table (docs/architecture.md) says which.

A case is a command line. It is parsed by the CLI's own parser and assembled by the CLI's own code
(``launch.refusals``, ``launch.caller_for_run``, the executors' constructors), then run in-process
through litellm's real HTTP path against the fake provider (its Batch API too), so a case costs a
run, not a process start. The Ray cases share the module's cluster; they combine the options that
combine (stream, a cache hit, dedup with a failed request, --max-cost, otel) in one run per job, plus
--deployments with a worker SIGKILLed mid-run.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from runner.call.deployfile import deployments_for
from runner.cli import run_options
from runner.errors import UsageError
from runner.executors.base import Executor
from runner.job.definition import load_job
from runner.launch import cache_settings, caller_for_run, refusals
from runner.preflight import run_dir_for
from runner.provider.provider import aclose
from runner.run.coordinator import RunSettings, run
from tests.doubles.provider import FakeProvider
from tests.support.files import ROOT, SECRET, read_jsonl, write_jsonl
from tests.support.run import MODEL, Cluster, tickets
from tests.support.tracing import exported

pytestmark = pytest.mark.timeout(300)  # the Ray cases start workers, slowly on a busy 2-core machine

EXECUTORS = ("online", "ray", "batch")
JOBS = ("module", "template", "raw")
OPTIONS = ("plain", "stream", "deployments", "cache", "dedup", "max_cost", "otel")
FAILING = "this request is refused [[fail:400]]"  # every ask of it is a 400: errors are never shared
TEMPLATE = """\
description = "support ticket -> bug | feature | billing | other"
model = "openai/gpt-4o-mini"
id_field = "id"
system = "Label the support ticket: bug, feature, billing or other. One lowercase word."
user = "{text}"
max_tokens = 5
labels = ["bug", "feature", "billing", "other"]
"""
EXECUTOR_FLAGS = {"online": [], "ray": ["--workers", "2"], "batch": ["--batch-api", "--batch-poll", "0.02"]}
OPTION_FLAGS = {"stream": ["--stream"], "max_cost": ["--max-cost", "1"], "otel": ["--otel"]}


def rows_for(job: str, tag: str, n: int, dedup: bool) -> list[dict[str, Any]]:
    """``n`` distinct tickets; with ``dedup``, a second copy of the last (answered by it) and two copies
    of a request that fails (each asked on its own)."""
    records = tickets(n, tag)
    if dedup:
        records += [{"id": f"{tag}-dup", "text": records[-1]["text"]},
                    {"id": f"{tag}-bad1", "text": FAILING}, {"id": f"{tag}-bad2", "text": FAILING}]  # fmt: skip
    if job != "raw":
        return records
    return [{"custom_id": r["id"], "method": "POST", "url": "/v1/chat/completions",
             "body": {"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": r["text"]}]}}
            for r in records]  # fmt: skip


def command(
    tmp_path: Path, provider: FakeProvider, executor: str, job: str, options: tuple[str, ...], inp: Path, run_id: str
) -> list[str]:
    """The ``runner run`` command line of a case."""
    jobs = tmp_path / "jobs"
    jobs.mkdir(exist_ok=True)
    (jobs / "tickets.toml").write_text(TEMPLATE)
    name = {"module": str(ROOT / "jobs" / "classify.py"), "template": "tickets", "raw": "batch"}[job]
    argv = ["run", name, "--jobs-dir", str(jobs), "--input", str(inp), "--runs-dir", str(tmp_path / "runs"),
            "--run-id", run_id, "--concurrency", "4", "--cache-dir", str(tmp_path / "cache"), "--max-attempts", "2",
            *EXECUTOR_FLAGS[executor]]  # fmt: skip
    if "deployments" in options:
        path = tmp_path / "deployments.yaml"  # the test's own, if it wrote one
        argv += [
            "--deployments",
            str(path if path.exists() else deployments_file(tmp_path, provider)),
            "--model",
            "fast",
        ]
    else:
        argv += ["--model", MODEL, "--api-base", provider.url]
    for option in options:
        argv += OPTION_FLAGS.get(option, [])
    return argv


def deployments_file(tmp_path: Path, provider: FakeProvider, model: str = MODEL) -> Path:
    """Group ``fast``: two deployments of ``model`` on the fake provider, each with its key."""
    entries = "".join(
        f"  - model_name: fast\n    litellm_params: {{model: {model}, api_base: '{provider.url}', "
        f"api_key: {SECRET}}}\n    model_info: {{id: {name}}}\n"
        for name in ("east", "west")
    )
    path = tmp_path / "deployments.yaml"
    path.write_text("model_list:\n" + entries)
    return path


async def run_case(argv: list[str], cluster: Cluster | None = None, during: Any = None) -> list[str] | Path:
    """Run one command line as ``runner run`` assembles it: its refusals, or the run directory it filled."""
    args = run_options(argv)
    job = load_job(args.job, args.jobs_dir)
    deployments = deployments_for(args.deployments, job.name, job.deployments)
    refused = refusals(args, deployments is not None)
    if refused:
        return refused
    assert args.input is not None
    run_dir = run_dir_for(args, job, args.input)
    caller = caller_for_run(args, job, run_dir, deployments)
    concurrency = args.concurrency or job.concurrency
    executor: Executor | None = None
    if args.batch_api:
        from runner.batch_flags import batch_executor

        executor = batch_executor(args, caller, run_dir, concurrency)
    elif args.workers:
        from runner.executors.ray import RayExecutor, spec_for

        assert cluster is not None
        executor = RayExecutor(caller, args.workers, spec_for(caller, args.workers, concurrency), cluster.record)
    settings = RunSettings(args.input, run_dir, run_dir.name, concurrency, cache=cache_settings(args))
    try:
        running = asyncio.ensure_future(run(caller, settings, executor=executor))
        if during is not None:
            await during(executor)
        report = await running
        assert report.status == "completed", report
    finally:
        await aclose()
        if caller.tracing is not None:
            caller.tracing.close()
    return run_dir


def journal(run_dir: Path) -> dict[str, dict[str, Any]]:
    """Every record of the run by custom_id, each journaled once."""
    records = read_jsonl(run_dir / "results.jsonl") + read_jsonl(run_dir / "errors.jsonl")
    ids = Counter(r["custom_id"] for r in records)
    assert [i for i, n in ids.items() if n > 1] == [], "a row was journaled twice"
    return {r["custom_id"]: r for r in records}


def check_run(run_dir: Path, rows: list[dict[str, Any]], options: tuple[str, ...], executor: str) -> dict[str, Any]:
    """Every row once; the manifest's totals the sum over the records; each option's mark on the records."""
    import orjson

    records = journal(run_dir)
    assert sorted(records) == sorted(r.get("id") or r["custom_id"] for r in rows)
    manifest = orjson.loads((run_dir / "manifest.json").read_bytes())
    asked = [r for r in records.values() if not r["meta"].get("cache") and (r.get("response") or {}).get("body")]
    prompt = sum(r["response"]["body"]["usage"]["prompt_tokens"] for r in asked)
    assert manifest["usage"]["input_tokens"] == prompt
    assert manifest["cost_usd"] == pytest.approx(
        sum(r["meta"].get("cost_usd") or 0.0 for r in records.values()), abs=1e-7
    )
    answered = [r for r in asked if not r["error"]]
    if executor == "batch":
        assert all(r["meta"].get("via") == "batch" for r in answered)  # nothing went online
    if executor == "ray":
        assert all(r["meta"].get("worker") for r in records.values() if not r["meta"].get("cache"))
    if "stream" in options:
        assert answered and all("ttft_s" in r["meta"] for r in answered)
    if "deployments" in options:
        assert answered and {r["meta"]["deployment"] for r in answered} <= {"east", "west"}
    if "max_cost" in options:
        assert manifest["max_cost_usd"] == 1.0 and 0 < manifest["cost_usd"] <= 1.0
    if "dedup" in options:
        tag = rows[0].get("id", rows[0].get("custom_id", "")).split("-")[0]
        assert records[f"{tag}-dup"]["meta"]["cache"] == "dedup"  # answered by its first copy
        for bad in (f"{tag}-bad1", f"{tag}-bad2"):  # each asked on its own, in the executor's lane
            assert records[bad]["error"]["code"] == "bad_request"
            assert "cache" not in records[bad]["meta"]
            if executor == "ray":
                assert records[bad]["meta"].get("worker")
    return records


GRID = [(executor, job, option) for executor in ("online", "batch") for job in JOBS for option in OPTIONS]


@pytest.mark.parametrize(("executor", "job", "option"), GRID)
async def test_one_option(
    tmp_path: Path,
    provider: FakeProvider,
    collector: tuple[str, list[bytes]],
    monkeypatch: pytest.MonkeyPatch,
    executor: str,
    job: str,
    option: str,
) -> None:
    endpoint, bodies = collector
    if option == "otel":  # where --otel sends its spans
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    rows = rows_for(job, "m", 4, option == "dedup")
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    argv = command(tmp_path, provider, executor, job, (option,), inp, "first")
    done = await run_case(argv)
    if executor == "batch" and option in ("stream", "deployments"):
        assert isinstance(done, list) and len(done) == 1
        assert "--batch-api" in done[0] and f"--{option}" in done[0]  # names both flags, and what to do
        assert provider.stats().total == 0 and provider.batches.stats().files == 0  # nothing was sent
        return
    assert isinstance(done, Path), done
    records = check_run(done, rows, (option,), executor)
    sent = provider.stats().total + provider.batches.stats().lines
    if option == "otel":
        ids, _ = exported(bodies)
        online = {i: r["meta"]["attempts"] for i, r in records.items() if r["meta"].get("via") != "batch"}
        assert Counter(ids) == online and (executor == "batch" or len(ids) >= 4)  # a span per online attempt
    if option == "cache":  # the same rows again, in a run of their own: every answer from the cache
        again = await run_case(command(tmp_path, provider, executor, job, (option,), inp, "again"))
        assert isinstance(again, Path)
        assert {r["meta"]["cache"] for r in journal(again).values()} == {"hit"}
        assert provider.stats().total + provider.batches.stats().lines == sent  # nothing more was sent


@pytest.mark.slow
@pytest.mark.parametrize("job", JOBS)
async def test_ray_with_every_option_that_combines(
    tmp_path: Path,
    provider: FakeProvider,
    ray_cluster: Cluster,
    collector: tuple[str, list[bytes]],
    monkeypatch: pytest.MonkeyPatch,
    job: str,
) -> None:
    """Two Ray workers: streamed, --max-cost, traced, rows answered from the cache, a duplicate answered by
    its first copy, and a failed request's duplicate sent by a worker (never by the coordinator)."""
    endpoint, bodies = collector
    options = ("stream", "max_cost", "otel", "dedup")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)  # the workers get it with the call plan
    seeded = rows_for(job, "r", 2, False)  # two rows answered online first: cache hits for the Ray run
    inp = write_jsonl(tmp_path / "seed.jsonl", seeded)
    assert isinstance(await run_case(command(tmp_path, provider, "online", job, ("stream",), inp, "seed")), Path)
    bodies.clear()
    rows = rows_for(job, "r", 8, True)
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    done = await run_case(command(tmp_path, provider, "ray", job, options, inp, "ray"), ray_cluster)
    assert isinstance(done, Path)
    records = check_run(done, rows, options, "ray")
    hits = {i for i, r in records.items() if r["meta"].get("cache") == "hit"}
    assert hits == {r.get("id") or r["custom_id"] for r in seeded}
    ids, _ = exported(bodies)  # every worker's spans reached the collector
    assert Counter(ids) == {i: r["meta"]["attempts"] for i, r in records.items() if not r["meta"].get("cache")}


@pytest.mark.slow
async def test_ray_with_deployments_and_a_worker_killed(
    tmp_path: Path, provider: FakeProvider, ray_cluster: Cluster
) -> None:
    """Two Ray workers sending to a group of two deployments; one worker is SIGKILLed with rows in flight."""
    from runner.executors.ray import RayExecutor

    provider.configure(latency_ms=100)
    rows = rows_for("module", "k", 60, False)
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    seen: list[RayExecutor] = []

    async def kill_one(executor: Executor | None) -> None:
        assert isinstance(executor, RayExecutor)
        seen.append(executor)
        await asyncio.to_thread(provider.wait_for, lambda s: s.total >= 6, 240)
        os.kill(executor.links["w1"].pid, signal.SIGKILL)

    argv = command(tmp_path, provider, "ray", "module", ("deployments",), inp, "killed")
    done = await run_case(argv, ray_cluster, kill_one)
    assert isinstance(done, Path)
    records = check_run(done, rows, ("deployments",), "ray")
    assert {r["meta"]["deployment"] for r in records.values()} == {"east", "west"}
    assert seen[0].replaced == 1  # its rows went to the other workers, each journaled once (above)


async def test_a_group_pointed_at_another_model_does_not_reuse_the_old_models_answers(
    tmp_path: Path, provider: FakeProvider
) -> None:
    """Issue 24, item 5: the cache key holds what serves a group (its deployments' models and endpoints)."""
    rows = rows_for("module", "g", 3, False)
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    first = await run_case(command(tmp_path, provider, "online", "module", ("deployments",), inp, "mini"))
    assert isinstance(first, Path) and provider.stats().total == 3
    deployments_file(tmp_path, provider, "openai/gpt-4o")  # the same group, re-pointed
    again = await run_case(command(tmp_path, provider, "online", "module", ("deployments",), inp, "4o"))
    assert isinstance(again, Path)
    records = journal(again)
    assert [r["meta"].get("cache") for r in records.values()] == [None] * 3 and provider.stats().total == 6
    assert {r["response"]["body"]["model"] for r in records.values()} == {"gpt-4o"}
    deployments_file(tmp_path, provider)  # back to the first model: its answers are reused
    back = await run_case(command(tmp_path, provider, "online", "module", ("deployments",), inp, "back"))
    assert isinstance(back, Path) and {r["meta"]["cache"] for r in journal(back).values()} == {"hit"}


def test_refusals_exit_2_at_start_up_naming_both_flags(tmp_path: Path, provider: FakeProvider) -> None:
    """From the command line, before litellm is imported, a Ray cluster started or a file uploaded."""
    write_jsonl(tmp_path / "in.jsonl", tickets(2))
    base = [sys.executable, "-m", "runner", "run", "classify", "--jobs-dir", str(ROOT / "jobs"), "--input", "in.jsonl",
            "--model", MODEL, "--api-base", provider.url, "--batch-api"]  # fmt: skip
    for extra, other in ((["--stream"], "--stream"), (["--deployments", str(deployments_file(tmp_path, provider))],
                         "--deployments"), (["--workers", "2"], "--workers")):  # fmt: skip
        proc = subprocess.run([*base, *extra], cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert "--batch-api" in proc.stderr and other in proc.stderr
    assert provider.stats().total == 0 and provider.batches.stats().files == 0
    assert not (tmp_path / "runs").exists()


def readme_matrix() -> dict[tuple[str, str], str]:
    """The documented matrix (docs/architecture.md): (executor, option or job) -> "works" or "refused"."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    table = text.split("<!-- matrix -->")[1]
    lines = [line for line in table.splitlines() if line.startswith("|")]
    head = [cell.strip() for cell in lines[0].strip("|").split("|")]
    found = {}
    for line in lines[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        for executor, cell in zip(head[1:], cells[1:], strict=True):
            found[(executor, cells[0])] = "refused" if cell.lower().startswith("refused") else "works"
    return found


ROW_FLAGS = {
    "`--service-tier flex`": ["--service-tier", "flex"],
    "`--stream`": ["--stream"],
    "`--deployments`": ["--deployments", "d.yaml"],
    "`--max-cost`": ["--max-cost", "1"],
    "`--otel`": ["--otel"],
}
COLUMN_FLAGS = {"online": [], "`--workers N`": ["--workers", "2"], "`--batch-api`": ["--batch-api"]}


def test_the_readme_matrix_and_the_code_agree() -> None:
    matrix = readme_matrix()
    assert {row for _, row in matrix} >= set(ROW_FLAGS) and {column for column, _ in matrix} == set(COLUMN_FLAGS)
    for (column, row), said in matrix.items():
        flags = ROW_FLAGS.get(row, [])
        args = run_options(["run", "classify", *COLUMN_FLAGS[column], *flags])
        refused = refusals(args, "--deployments" in flags)
        assert ("refused" if refused else "works") == said, (column, row, refused)


FLEX_MODEL = "openai/gpt-5-mini"  # litellm's map has its flex and priority prices


def tier_command(tmp_path: Path, provider: FakeProvider, inp: Path, run_id: str, *flags: str) -> list[str]:
    # Raw batch input: gpt-5 models take no temperature but 1, which the classify job sets to 0.
    return ["run", "batch", "--input", str(inp), "--runs-dir", str(tmp_path / "runs"),
            "--run-id", run_id, "--model", FLEX_MODEL, "--api-base", provider.url, "--no-cache", "--concurrency", "4",
            *flags]  # fmt: skip


async def test_flex_is_priced_at_the_tier_that_served_and_unavailable_is_a_pause_not_a_rate_limit(
    tmp_path: Path, provider: FakeProvider
) -> None:
    rows = rows_for("raw", "x", 12, False)
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    default = await run_case(tier_command(tmp_path, provider, inp, "default"))
    provider.configure(p_flex_unavailable=0.3, seed=7)  # a third of flex requests: 429 "Resource Unavailable"
    flex = await run_case(
        tier_command(tmp_path, provider, inp, "flex", "--service-tier", "flex", "--max-attempts", "8")
    )
    assert isinstance(default, Path) and isinstance(flex, Path)
    records = check_run(flex, rows, (), "online")
    assert {r["meta"]["service_tier"] for r in records.values()} == {"flex"}
    assert {r["meta"]["via"] for r in records.values()} == {"flex"}
    assert provider.stats().by_status["flex_unavailable"] > 0  # some were refused, then retried
    import orjson

    cheap, full = (orjson.loads((d / "manifest.json").read_bytes()) for d in (flex, default))
    assert cheap["cost_usd"] == pytest.approx(full["cost_usd"] / 2, rel=1e-3)  # flex is billed at half
    assert set(cheap["lanes"]) == {"flex"} and cheap["rate_limited"] == 0  # not a rate limit: nothing slowed down
    limits = cheap["limits"][FLEX_MODEL]
    assert limits["concurrency"] == limits["concurrency_ceiling"]


async def test_past_the_flex_deadline_rows_go_at_the_default_tier(tmp_path: Path, provider: FakeProvider) -> None:
    rows = rows_for("raw", "d", 4, False)
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    argv = tier_command(tmp_path, provider, inp, "late", "--service-tier", "flex", "--flex-deadline", "0.001")
    done = await run_case(argv)
    assert isinstance(done, Path)
    assert {r["meta"]["service_tier"] for r in journal(done).values()} == {"default"}


async def test_a_tier_the_model_has_no_prices_for_is_refused_at_start_up(
    tmp_path: Path, provider: FakeProvider
) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", rows_for("raw", "r", 2, False))
    argv = [*tier_command(tmp_path, provider, inp, "r", "--service-tier", "flex"), "--model", MODEL]
    with pytest.raises(UsageError, match=r"--service-tier flex: litellm's price map has no flex prices for model "
                       r"'openai/gpt-4o-mini'"):  # fmt: skip
        await run_case(argv)
    refused = await run_case([*tier_command(tmp_path, provider, inp, "b", "--service-tier", "flex"), "--batch-api"])
    assert isinstance(refused, list) and "--service-tier flex" in refused[0] and "--batch-api" in refused[0]
    assert provider.stats().total == 0
