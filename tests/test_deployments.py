"""Several deployments behind one model name (``--deployments``): choice, cooldowns, pauses, records.

The capability runs over real HTTP against two or three fake-provider instances, one per deployment;
the file checks and the attempt count use no network at all.
"""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import litellm
import orjson
import pytest

from runner.call.assemble import build_caller
from runner.call.deployfile import DeploymentFile, load_deployments, parse_deployments
from runner.call.retry import RetryPolicy
from runner.cli import main
from runner.errors import FatalProviderError, UsageError
from runner.permits.limits import Limits
from runner.plan import CallPlan
from runner.provider.provider import aclose, acompletion
from runner.redact import redact
from runner.run.coordinator import RunSettings, run
from tests.doubles.provider import FakeProvider
from tests.doubles.scripted import ScriptedModel, server_error, timed_out
from tests.support.files import ROOT, write_jsonl
from tests.support.run import CLASSIFY, Finished, finished, tickets

KEY = "right-key-for-the-test-1"
INLINE = "inline-wrong-key-7f3a9c"


def plan_for(*deployments: tuple[str, FakeProvider, str], **extra: Any) -> DeploymentFile:
    """A deployments config of one group, ``fast``: (name, server, key) each."""
    entries = [
        {"model_name": "fast", "litellm_params": {"model": "openai/gpt-4o-mini", "api_base": p.url, "api_key": key},
         "model_info": {"id": name}}
        for name, p, key in deployments
    ]  # fmt: skip
    return parse_deployments({"model_list": entries, **extra}, "test deployments")


@pytest.fixture
def servers() -> Iterator[list[FakeProvider]]:
    started = [FakeProvider(api_key=KEY).start() for _ in range(3)]
    yield started
    for server in started:
        server.stop()


class Sends:
    """litellm's acompletion, with when each attempt went to which server and how it came back."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, float, float, str]] = []  # api_base, sent, landed, outcome

    async def __call__(self, **request: Any) -> Any:
        loop = asyncio.get_running_loop()
        sent = loop.time()
        try:
            response = await acompletion(**request)
        except Exception as exc:
            self.seen.append((request["api_base"], sent, loop.time(), str(getattr(exc, "status_code", "?"))))
            raise
        self.seen.append((request["api_base"], sent, loop.time(), "200"))
        return response


async def run_on(
    tmp_path: Path, plan: DeploymentFile, rows: int, concurrency: int = 6, max_attempts: int = 6, complete: Any = None
) -> Finished:
    write_jsonl(tmp_path / "in.jsonl", tickets(rows))
    policy = RetryPolicy(max_attempts=max_attempts, base_wait=0.01, max_wait=0.05)
    call_plan = CallPlan(job=CLASSIFY, policy=policy, timeout=5.0, model="fast", deployments=plan)
    caller = build_caller(call_plan, Limits(concurrency), complete=complete or acompletion)
    settings = RunSettings(tmp_path / "in.jsonl", tmp_path / "run", "run", concurrency)
    try:
        report = await run(caller, settings)
    finally:
        await aclose()
    return finished(report, tmp_path / "run")


async def test_a_401_a_429_and_a_working_deployment_finish_every_row_once(
    tmp_path: Path, servers: list[FakeProvider]
) -> None:
    refusing, limited, working = servers
    limited.configure(p429=0.5, retry_after=0.3, seed=3)  # half its answers are 429s with Retry-After 0.3 s
    working.configure(latency_ms=100)  # so the run outlasts west's 0.3 s pause (at 20 ms it could end first)
    plan = plan_for(("east", refusing, INLINE), ("west", limited, KEY), ("north", working, KEY))
    sends = Sends()
    done = await run_on(tmp_path, plan, 80, complete=sends)

    assert done.report.status == "completed" and done.errors == []
    assert sorted(r["custom_id"] for r in done.results) == [f"t-{i:04d}" for i in range(80)]
    # The 401 deployment was cooled down at once: no row went to it twice, and only the first wave did.
    assert refusing.stats().by_status == {"401": refusing.stats().total}
    assert set(refusing.stats().by_key.values()) == {1} and refusing.stats().total <= 6
    # The 429 deployment was paused for its Retry-After, then answered again.
    west = sorted((sent, landed, outcome) for base, sent, landed, outcome in sends.seen if base == limited.url)
    refused_at = [landed for _, landed, outcome in west if outcome == "429"]
    assert refused_at and any(outcome == "200" and sent > refused_at[0] + 0.3 for sent, _, outcome in west)
    for at in refused_at:
        assert not [sent for sent, _, _ in west if at < sent < at + 0.3 - 1e-3], "a request went during the pause"
    # Records and manifest name the deployment; no key anywhere.
    named = Counter(r["meta"]["deployment"] for r in done.results)
    assert set(named) <= {"west", "north"} and named["west"] == limited.stats().by_status.get("200", 0)
    deployments = done.manifest["deployments"]
    assert deployments["east"]["errors"] == {"authentication_failed": refusing.stats().total}
    assert deployments["west"]["rate_limited"] == limited.stats().by_status["429"]
    assert deployments["north"]["answers"] + deployments["west"]["answers"] == 80
    assert sum(r["meta"].get("deployment_errors", {}).get("east", {}).get("authentication_failed", 0)
               for r in done.results) == refusing.stats().total  # fmt: skip
    text = (tmp_path / "run" / "results.jsonl").read_text() + (tmp_path / "run" / "manifest.json").read_text()
    assert INLINE not in text and KEY not in text
    assert INLINE not in redact(f"Incorrect API key provided: {INLINE}")


async def test_a_deployment_killed_mid_run_leaves_the_rest_to_finish(
    tmp_path: Path, servers: list[FakeProvider]
) -> None:
    doomed, one, two = servers
    plan = plan_for(("doomed", doomed, KEY), ("one", one, KEY), ("two", two, KEY))
    doomed.hold(lambda key: True)  # its requests park there until it is killed

    async def kill_when_busy() -> None:
        await asyncio.to_thread(doomed.wait_for, lambda s: s.total >= 2)
        await asyncio.to_thread(doomed.stop)

    killer = asyncio.create_task(kill_when_busy())
    done = await run_on(tmp_path, plan, 60, max_attempts=4)
    await killer
    assert done.report.status == "completed" and done.errors == []
    assert sorted(r["custom_id"] for r in done.results) == [f"t-{i:04d}" for i in range(60)]
    named = Counter(r["meta"]["deployment"] for r in done.results)
    assert set(named) <= {"doomed", "one", "two"} and named["one"] + named["two"] >= 60 - doomed.stats().total
    assert named["one"] == one.stats().by_status["200"] and named["two"] == two.stats().by_status["200"]


async def test_every_deployment_fatal_stops_the_run_naming_them(tmp_path: Path, servers: list[FakeProvider]) -> None:
    plan = plan_for(("east", servers[0], INLINE), ("west", servers[1], "another-wrong-key-9"))
    with pytest.raises(FatalProviderError, match="every deployment of fast failed") as stopped:
        await run_on(tmp_path, plan, 20)
    assert INLINE not in str(stopped.value)
    assert servers[0].stats().total + servers[1].stats().total <= 12  # one wave each, then nothing


async def test_a_fallback_group_takes_over_when_the_group_has_nothing_left(
    tmp_path: Path, servers: list[FakeProvider]
) -> None:
    entries = [
        {"model_name": "fast", "litellm_params": {"model": "openai/gpt-4o-mini", "api_base": servers[0].url,
                                                  "api_key": INLINE}},
        {"model_name": "slow", "litellm_params": {"model": "openai/gpt-4o", "api_base": servers[1].url,
                                                  "api_key": KEY}},
    ]  # fmt: skip
    plan = parse_deployments({"model_list": entries, "fallbacks": [{"fast": ["slow"]}]}, "test")
    done = await run_on(tmp_path, plan, 20)
    assert done.report.status == "completed" and len(done.results) == 20
    assert {r["meta"]["deployment"] for r in done.results} == {"slow#1"}


async def test_attempts_are_counted_across_deployments_not_per_deployment(tmp_path: Path) -> None:
    # Every deployment fails with a 500: the row gets max_attempts attempts in all, wherever they went.
    model = ScriptedModel(default=lambda request: server_error())
    params = [{"model": "openai/gpt-4o-mini", "api_key": f"k-{i}-xxxxxx", "api_base": f"http://127.0.0.1:9/{i}"}
              for i in range(3)]  # fmt: skip
    entries = [{"model_name": "fast", "litellm_params": p} for p in params]
    plan = parse_deployments({"model_list": entries}, "test")
    done = await run_on(tmp_path, plan, 1, concurrency=1, max_attempts=5, complete=model)
    [error] = done.errors
    assert error["meta"]["attempts"] == 5 and len(model.requests) == 5
    assert sum(sum(codes.values()) for codes in error["meta"]["deployment_errors"].values()) == 5
    # Each retry went to a deployment the row had failed on least: all three were tried, none more than twice.
    tried = [r["api_base"] for r in model.requests]
    assert len(set(tried)) == 3 and max(tried.count(base) for base in tried) == 2
    assert "gave up after 5 attempts" in error["error"]["message"]


def refused() -> litellm.APIConnectionError:
    """What litellm raises for a refused connection: a connection error caused by httpx's ConnectError."""
    error = litellm.APIConnectionError(message="Connection error.", llm_provider="openai", model="gpt-4o-mini")
    error.__cause__ = httpx.ConnectError("[Errno 111] Connection refused")
    return error


async def test_a_deployment_that_refuses_connections_is_set_aside(tmp_path: Path) -> None:
    model = ScriptedModel(default=lambda request: refused() if request["api_base"].endswith("/0") else "bug")
    params = [{"model": "openai/gpt-4o-mini", "api_key": f"k-{i}-xxxxxx", "api_base": f"http://127.0.0.1:9/{i}"}
              for i in range(3)]  # fmt: skip
    plan = parse_deployments({"model_list": [{"model_name": "fast", "litellm_params": p} for p in params]}, "test")
    loop = asyncio.get_running_loop()
    started = loop.time()
    done = await run_on(tmp_path, plan, 40, concurrency=2, complete=model)
    assert done.report.status == "completed" and len(done.results) == 40 and done.errors == []
    tried = [r for r in model.requests if r["api_base"].endswith("/0")]
    # Set aside 1 s, then 2 s, 4 s...: a probe a second at most, not a third of the attempts.
    assert 1 <= len(tried) <= 2 + (loop.time() - started), len(tried)


def test_a_bad_deployments_file_says_what_to_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOT_SET_KEY", raising=False)
    cases = {
        "model_list: []": "needs 'model_list:'",
        "model_list: [{litellm_params: {model: openai/x}}]": "model_list[0]: needs 'model_name:'",
        "model_list: [{model_name: a, litellm_params: {}}]": "needs 'litellm_params:' with 'model:'",
        "model_list: [{model_name: a, litellm_params: {model: m, api_key: os.environ/NOT_SET_KEY}}]":
            "NOT_SET_KEY is not set: export NOT_SET_KEY=",
        "model_list: [{model_name: a, litellm_params: {model: m}}]\nfallbacks: [{a: [b]}]": "b is not a model_name",
        "model_list: [{model_name: a, litellm_params: {model: m, rpm: 0}}]": "rpm must be a number per minute",
        "model_list: [{model_name: a, litellm_params: {model: m}}]\nrouter_settings: {routing_strategy: x}":
            "routing_strategy: must be one of",
        "model_list: [{model_name: a, litellm_params: {model: m}, model_info: {id: d}},"
        " {model_name: a, litellm_params: {model: m}, model_info: {id: d}}]": "'d' is used twice",
        "model_list: [": "not valid YAML or JSON",
    }  # fmt: skip
    for text, message in cases.items():
        path = tmp_path / "deployments.yaml"
        path.write_text(text)
        with pytest.raises(UsageError, match=message.replace("[", r"\[")):
            load_deployments(path)
    with pytest.raises(UsageError, match="can't read the deployments file"):
        load_deployments(tmp_path / "missing.yaml")
    path.write_text('{"model_list": [{"model_name": "a", "litellm_params": {"model": "m", "api_key": "k-123456789"}}]}')
    plan = load_deployments(path)  # JSON is read too
    assert plan.groups == ("a",) and "k-123456789" not in repr(plan)
    with pytest.raises(UsageError, match="model 'b' is not a model_name"):
        plan.check_model("b")


def test_the_cli_runs_over_deployments_and_status_shows_them(
    tmp_path: Path, servers: list[FakeProvider], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    refusing, working, _ = servers
    config = {
        "model_list": [
            {"model_name": "fast", "litellm_params": {"model": "openai/gpt-4o-mini", "api_base": p.url, "api_key": k},
             "model_info": {"id": n}}
            for n, p, k in (("east", refusing, "os.environ/EAST_DEPLOY"), ("west", working, KEY))
        ]
    }  # fmt: skip
    (tmp_path / "deployments.json").write_bytes(orjson.dumps(config))
    write_jsonl(tmp_path / "in.jsonl", tickets(30))
    monkeypatch.setenv("EAST_DEPLOY", INLINE)
    monkeypatch.delenv("OPENAI_API_KEY")  # each deployment brings its own key
    common = ["--runs-dir", str(tmp_path / "runs"), "--jobs-dir", str(ROOT / "jobs")]
    args = ["run", "classify", "--input", str(tmp_path / "in.jsonl"), "--model", "fast", *common]
    threshold = gc.get_threshold()
    try:
        assert main([*args, "--deployments", str(tmp_path / "deployments.json")]) == 0
    finally:  # a run tunes the collector for itself (launch.py); give the test process its own back
        gc.unfreeze()
        gc.set_threshold(*threshold)
    ran = capsys.readouterr()
    assert "deployment east" in ran.err and "cooled down for the rest of the run" in ran.err
    assert main(["status", "classify", "--runs-dir", str(tmp_path / "runs")]) == 0
    status = capsys.readouterr().out
    assert "deployment west: 30 answers, 0 failed rows" in status
    assert "deployment east: 0 answers" in status and "authentication_failed" in status
    run_dir = tmp_path / "runs" / "classify" / "in"
    everything = ran.err + status + "".join(p.read_text() for p in run_dir.iterdir() if p.is_file())
    assert INLINE not in everything and KEY not in everything
    assert main([*args, "--deployments", str(tmp_path / "nope.yaml")]) == 2
    assert "can't read the deployments file" in capsys.readouterr().err
    assert main([*args, "--model", "slow", "--deployments", str(tmp_path / "deployments.json")]) == 2
    assert "model 'slow' is not a model_name" in capsys.readouterr().err


def test_a_bad_file_is_refused_before_litellm_is_imported_and_a_plain_run_never_reads_yaml(tmp_path: Path) -> None:
    (tmp_path / "deployments.yaml").write_text("model_list: [{model_name: fast}]")
    write_jsonl(tmp_path / "in.jsonl", tickets(2))
    code = (
        "import sys; from runner.cli import main; import runner.launch; "
        "print('yaml' in sys.modules, 'runner.call.deployments' in sys.modules); "
        "code = main(sys.argv[1:]); print('litellm' in sys.modules); sys.exit(code)"
    )
    args = ["run", "classify", "--jobs-dir", str(ROOT / "jobs"), "--input", "in.jsonl", "--model", "fast"]
    proc = subprocess.run([sys.executable, "-c", code, *args, "--deployments", "deployments.yaml"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2 and proc.stdout.split() == ["False", "False", "False"]
    assert "model_list[0]: needs 'litellm_params:'" in proc.stderr


async def test_a_hung_deployment_is_set_aside_and_the_retries_go_to_the_one_that_answers(
    tmp_path: Path, servers: list[FakeProvider]
) -> None:
    """Issue 24, item 6 (before: rows ran out of attempts on the hung deployment while the other was idle)."""
    hung, working = servers[:2]
    hung.configure(latency_ms=60_000)  # answers nothing within the time-out
    plan = plan_for(("hung", hung, KEY), ("ok", working, KEY))
    write_jsonl(tmp_path / "in.jsonl", tickets(40))
    policy = RetryPolicy(max_attempts=3, base_wait=0.01, max_wait=0.05)
    call_plan = CallPlan(job=CLASSIFY, policy=policy, timeout=0.3, model="fast", deployments=plan)
    caller = build_caller(call_plan, Limits(6))
    try:
        report = await run(caller, RunSettings(tmp_path / "in.jsonl", tmp_path / "run", "run", 6))
    finally:
        await aclose()
    done = finished(report, tmp_path / "run")
    assert done.errors == [] and len(done.results) == 40  # every row answered, by the deployment that answers
    assert {r["meta"]["deployment"] for r in done.results} == {"ok"}
    assert hung.stats().total < 20  # set aside after its time-outs, not tried by every row


async def test_after_one_time_out_where_answers_come_from_the_retry_goes_there_not_to_the_hung_one(
    tmp_path: Path,
) -> None:
    """Issue 24, item 6: a loaded machine makes one call to the answering deployment time out while the
    hung one is set aside; the retry must not go to the hung one (before: it did, and the row was written off)."""
    to_ok = 0

    def answer(request: dict[str, Any]) -> Any:
        nonlocal to_ok
        if request["api_base"].endswith("/hung"):
            return timed_out()
        to_ok += 1
        return timed_out() if to_ok == 3 else "bug"

    params = [{"model": "openai/gpt-4o-mini", "api_key": f"k-{name}-xxxxxx", "api_base": f"http://127.0.0.1:9/{name}"}
              for name in ("hung", "ok")]  # fmt: skip
    ids = [{"id": p["api_base"].rsplit("/", 1)[1]} for p in params]
    entries = [{"model_name": "fast", "litellm_params": p, "model_info": i} for p, i in zip(params, ids, strict=True)]
    # least-busy: the file's first deployment (the hung one) gets the first attempt: the same run every time
    plan = parse_deployments({"model_list": entries, "router_settings": {"routing_strategy": "least-busy"}}, "test")
    done = await run_on(tmp_path, plan, 6, concurrency=1, max_attempts=2, complete=ScriptedModel(default=answer))
    assert done.errors == [] and len(done.results) == 6
    assert {r["meta"]["deployment"] for r in done.results} == {"ok"}
