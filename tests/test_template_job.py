"""Jobs without Python: TOML/YAML template files become jobs; bad ones are refused naming file and key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from runner.call.caller import Caller
from runner.call.retry import RetryPolicy
from runner.errors import JobDefinitionError
from runner.job.definition import list_jobs, load_job
from runner.job.template import load_template
from runner.run import fingerprint
from runner.run.source import Row
from tests.doubles.provider import FakeProvider
from tests.doubles.scripted import ScriptedModel
from tests.support.cli import runner
from tests.support.files import ROOT
from tests.support.run import MODEL, run_rows

LABELS = """\
model = "gpt-4o-mini"
system = "Rate the review of a {product}. Literal braces: {{ok}}."
user = "Review: {text}"
temperature = 0
max_tokens = 3
labels = ["positive", "negative", "neutral"]
concurrency = 7
"""
LABEL_LINE = 'labels = ["positive", "negative", "neutral"]'


def _job(tmp_path: Path, text: str = LABELS, name: str = "rate.toml") -> Path:
    jobs = tmp_path / "jobs"
    jobs.mkdir(exist_ok=True)
    (jobs / name).write_text(text)
    return jobs / name


def _caller(path: Path, model: ScriptedModel) -> Caller:
    return Caller(job=load_template(path), policy=RetryPolicy(max_attempts=1), timeout=5.0, model=MODEL,
                  complete=model)  # fmt: skip


async def test_a_template_is_filled_and_a_bad_label_is_reasked(tmp_path: Path) -> None:
    model = ScriptedModel(default=None).enqueue(["**Positive.**", "maybe", "Neutral", "maybe", "still unsure"])
    caller = _caller(_job(tmp_path), model)
    assert caller.job.concurrency == 7 and caller.job.reasks == 1 and caller.job.name == "rate"

    first = await caller(Row(1, "a", {"id": "a", "product": "kettle", "text": "Love it"}))
    assert first.ok and first.line["result"] == "positive"
    sent = model.requests[0]
    assert sent["messages"] == [
        {"role": "system", "content": "Rate the review of a kettle. Literal braces: {ok}."},
        {"role": "user", "content": "Review: Love it"},
    ]
    assert sent["temperature"] == 0 and sent["max_tokens"] == 3

    again = await caller(Row(2, "b", {"id": "b", "product": "mug", "text": "Hmm"}))
    assert again.ok and again.line["result"] == "neutral"
    assert "expected exactly one of positive, negative, neutral" in again.line["meta"]["reasked"][0]["rejected"]
    assert "That answer was not valid" in model.requests[2]["messages"][-1]["content"]

    refused = await caller(Row(3, "c", {"id": "c", "product": "mug", "text": "Hmm"}))  # re-asked once, then kept
    assert not refused.ok and refused.line["error"]["code"] == "invalid_result"
    assert len(refused.line["meta"]["reasked"]) == 1 and len(model.requests) == 5


async def test_a_missing_field_is_a_row_error_naming_it_and_the_line(tmp_path: Path) -> None:
    model = ScriptedModel(default=None)
    caller = _caller(_job(tmp_path), model)
    record = await caller(Row(12, "a", {"id": "a", "text": "Love it"}))
    assert not record.ok and record.line["error"]["code"] == "missing_field"
    assert record.line["error"]["message"].startswith("line 12: the record has no field 'product'")
    assert "key 'system'" in record.line["error"]["message"]
    null = await caller(Row(13, "b", {"id": "b", "product": None, "text": "x"}))
    assert "field 'product' is null" in null.line["error"]["message"]
    assert model.requests == []  # nothing was sent for either


async def test_a_schema_job_validates_and_reasks(tmp_path: Path) -> None:
    text = """
user = "Extract from: {text}"
model = "gpt-4o-mini"
[schema]
type = "object"
required = ["city"]
properties = { city = { type = "string" } }
"""
    model = ScriptedModel(default=None).enqueue(['{"town": "Oslo"}', '{"city": "Oslo"}'])
    record = await _caller(_job(tmp_path, text, "place.toml"), model)(
        Row(1, "a", {"id": "a", "text": "I live in Oslo"})
    )
    assert record.ok and record.line["result"] == {"city": "Oslo"}
    assert "'city' is a required property" in record.line["meta"]["reasked"][0]["rejected"]


def test_yaml_and_toml_make_the_same_job(tmp_path: Path) -> None:
    yaml_text = """\
model: gpt-4o-mini
system: "Rate the review of a {product}. Literal braces: {{ok}}."
user: "Review: {text}"
temperature: 0
max_tokens: 3
labels: [positive, negative, neutral]
concurrency: 7
"""
    toml, yaml = load_template(_job(tmp_path)), load_template(_job(tmp_path, yaml_text, "rate.yml"))
    record = {"product": "kettle", "text": "ok"}
    assert toml.build_request(record) == yaml.build_request(record)
    assert (toml.labels, toml.concurrency, toml.model) == (yaml.labels, yaml.concurrency, yaml.model)


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (('user = "Review: {text}"', 'user = "Review: {text.__class__}"'), "placeholder {text.__class__} is not"),
        (('user = "Review: {text}"', 'user = "Review: {0}"'), "placeholder {0} is not allowed"),
        (('user = "Review: {text}"', 'user = "Review: {text!r:>9}"'), "placeholder {text!r:>9} is not allowed"),
        (('user = "Review: {text}"', 'user = "Review: {text"'), "key 'user': expected '}'"),
        (("concurrency = 7", "concurency = 7"), "unknown key 'concurency' (did you mean 'concurrency'?)"),
        (("concurrency = 7", "concurrency = 0"), "key 'concurrency' must be a whole number >= 1"),
        (("temperature = 0", 'temperature = "cold"'), "key 'temperature' must be a number from 0 to 2"),
        ((LABEL_LINE, 'labels = ["positive"]'), "key 'labels' must name at"),
        ((LABEL_LINE, 'schema = "{not json"'), "key 'schema' is a string but"),
        ((LABEL_LINE, "schema = {type = 12}"), "not a valid JSON schema"),
        (('user = "Review: {text}"\n', ""), "key 'user' must be the user message's template"),
        (("max_tokens = 3", "max_tokens = 3\nmax_tokens = 4"), "not valid TOML"),
        (("max_tokens = 3", "stream = 1"), "key 'stream' must be true or false, got 1"),
    ],
)
def test_a_bad_template_file_names_the_file_the_key_and_the_fix(
    tmp_path: Path, change: tuple[str, str], says: str
) -> None:
    assert change[0] in LABELS
    path = _job(tmp_path, LABELS.replace(*change))
    with pytest.raises(JobDefinitionError) as caught:
        load_job("rate", tmp_path / "jobs")
    assert str(caught.value).startswith(f"{path}: ") and says in str(caught.value), str(caught.value)


def test_the_fingerprint_covers_the_file(tmp_path: Path) -> None:
    path = _job(tmp_path)
    job = load_template(path)
    request = job.build_request({"product": "kettle", "text": "ok"})
    before = fingerprint.job_fingerprint(job.name, job.source, job.model, request)
    path.write_text(LABELS.replace("concurrency = 7", "concurrency = 8"))  # the request itself is unchanged
    after = fingerprint.job_fingerprint(job.name, job.source, job.model, request)
    assert fingerprint.changes(before, after, path) == ["the job's code or prompt files changed"]


def test_a_job_defined_twice_is_refused_and_the_listing_shows_both_kinds(tmp_path: Path) -> None:
    _job(tmp_path)
    _job(tmp_path, "x = 1\n", "broken.toml")
    found = {j.name if not isinstance(j, JobDefinitionError) else "broken": j for j in list_jobs(tmp_path / "jobs")}
    assert found["rate"].source.endswith("rate.toml") and isinstance(found["broken"], JobDefinitionError)  # type: ignore[union-attr]
    _job(tmp_path, "from runner import Job\njob = Job(name='rate', build_request=dict)\n", "rate.py")
    with pytest.raises(JobDefinitionError, match="defined twice"):
        load_job("rate", tmp_path / "jobs")


def test_runner_jobs_lists_modules_and_templates_with_model_and_origin(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    for name in ("classify.py", "sentiment.toml"):
        (jobs / name).write_bytes((ROOT / "jobs" / name).read_bytes())
    (jobs / "bad.yaml").write_text("user: 12\n")
    proc = runner("jobs", "--jobs-dir", "jobs", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = {line.split()[0]: line.split() for line in proc.stdout.splitlines()}
    assert lines["sentiment"][1:3] == ["local/zero-shot", "jobs/sentiment.toml"]
    assert lines["classify"][1:3] == ["local/zero-shot", "jobs/classify.py"]
    assert lines["batch"][1:4] == ["(from", "input)", "built"]
    assert "jobs/bad.yaml: key 'user' must be" in proc.stdout


async def test_the_shipped_sentiment_job_runs_over_http(tmp_path: Path, provider: FakeProvider) -> None:
    job = load_job("sentiment", ROOT / "jobs")
    rows = [
        {"id": "a", "product": "kettle", "text": "Lovely [[answer:Positive]]"},
        {"id": "b", "product": "mug", "text": "Broke [[answer:negative.]]"},
        {"id": "c", "product": "lamp", "text": "Hmm [[answer:maybe]]"},  # re-asked; the fake answers a ticket label
        {"id": "d", "text": "no product"},
    ]
    done = await run_rows(tmp_path, provider, rows, job=dataclasses.replace(job, max_attempts=2))
    assert {r["custom_id"]: r["result"] for r in done.results} == {"a": "positive", "b": "negative"}
    errors = {e["custom_id"]: e for e in done.errors}
    assert errors["c"]["error"]["code"] == "invalid_result" and len(errors["c"]["meta"]["reasked"]) == 1
    assert errors["d"]["error"]["code"] == "missing_field" and "line 4" in errors["d"]["error"]["message"]
    assert provider.stats().total == 4  # a, b, and c twice; d never sent
    assert done.manifest["job"]["source"].endswith("jobs/sentiment.toml") and done.manifest["reasks"] == 1


def test_yaml_labels_read_as_booleans_or_numbers_are_named_with_the_fix(tmp_path: Path) -> None:
    """Issue 24, item 11 (before: "must name at least two labels", and a crash for a table of them)."""
    for labels, said in (("[yes, no]", "true, false parsed as booleans"), ("{on: [a], off: [b]}", "true, false"),
                         ("[1, 2]", "1, 2 parsed as numbers")):  # fmt: skip
        path = tmp_path / "job.yaml"
        path.write_text(f'model: openai/gpt-4o-mini\nuser: "{{text}}"\nlabels: {labels}\n')
        with pytest.raises(JobDefinitionError, match=rf"key 'labels': {said}.*quote each label"):
            load_template(path)


def test_other_yaml_values_read_as_booleans_numbers_or_dates_are_named_with_the_fix(tmp_path: Path) -> None:
    """Issue 24, item 11: label phrases and the text keys, not only the label names (before: "needs a non-empty
    list of strings", "must be a string, got True")."""
    head = 'user: "{text}"\n'
    for body, said in (
        ("labels: {positive: [yes, great], negative: [no, bad]}\n", r"label 'positive': true parsed as booleans"),
        ("labels: {good: [5, 4], bad: [1, 2]}\n", r"label 'good': 5, 4 parsed as numbers.*quote each one"),
        ("labels: [a, b]\ndescription: yes\n", r"key 'description' must be a string, got True \(true parsed as bool"),
        ("labels: [a, b]\nid_field: no\n", r"key 'id_field' .* \(false parsed as booleans .*: quote it\)"),
        ("labels: [a, b]\nmodel: 2024-05-13\n", r"key 'model' .* \(2024-05-13 parsed as numbers or other values"),
    ):
        path = tmp_path / "job.yaml"
        path.write_text(head + body)
        with pytest.raises(JobDefinitionError, match=said):
            load_template(path)
    path.write_text("labels: [a, b]\nuser: 42\n")
    with pytest.raises(JobDefinitionError, match=r"key 'user' must be .*\(42 parsed as numbers"):
        load_template(path)
