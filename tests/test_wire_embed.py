"""Embeddings on the short way (runner.provider.wire_embed) and through litellm.aembedding give the same records.

The same ``/v1/embeddings`` rows (floats and base64, one input and a batch of them, ``dimensions``, a
``--api-base`` model litellm has no price for) go through a Caller whose embedding function is
``wire_embed.EmbedSender`` and one whose is ``litellm.aembedding``, against the fake provider, with every
kind of failure (400, 401, 429 with Retry-After, 500, a time-out, a dropped connection, a broken body)
once and then answered. The records are compared field by field apart from timings and request ids;
so are the waits the retry policy chose, each failure's classification, one attempt at a time, and
the cost, which must be litellm's. A server of the test's own checks what goes over the wire.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import litellm
import orjson
import pytest
from aiohttp import web

from runner.call.assemble import build_caller
from runner.call.caller import Caller
from runner.call.retry import RetryPolicy
from runner.errors import FatalProviderError
from runner.job.definition import BATCH
from runner.job.endpoints import EMBEDDINGS, ENDPOINT
from runner.permits.limits import Limits
from runner.plan import CallPlan
from runner.provider import wire_embed
from runner.provider.endpoints import FUNCTIONS
from runner.provider.failures import ProviderFailure, mapped
from runner.provider.provider import Complete
from runner.provider.wire_http import aclose
from runner.rows import Row
from tests.doubles.provider import FakeProvider

MODEL = "text-embedding-3-small"
aembedding = FUNCTIONS[EMBEDDINGS]


def _row(text: Any, **body: Any) -> dict[str, Any]:
    return {"model": MODEL, "input": text, **body}


ROWS: list[tuple[str, dict[str, Any]]] = [
    ("float", _row("I was charged twice")),
    ("float_asked", _row("the export fails", encoding_format="float")),
    ("base64", _row("please add dark mode", encoding_format="base64")),
    ("batch", _row(["office hours", "refund my invoice", "the app crashes"])),
    ("batch_base64", _row(["office hours", "refund my invoice"], encoding_format="base64")),
    ("dimensions", _row("shorter please", dimensions=256, user="u-1")),
    ("unpriced", _row("a model of the server's own", model="openai/BAAI/bge-small-en")),
    ("bad_request", _row("x [[fail:400]]")),
    ("rate_limited_once", _row("x [[fail:429:retry_after=0.25:times=1]]")),
    ("rate_limited_ms", _row("x [[fail:429:retry_after_ms=300:times=2]]", encoding_format="base64")),
    ("rate_limited_always", _row("x [[fail:429:retry_after=0.2]]")),
    ("server_error", _row("x [[fail:500:times=1]]")),
    ("server_error_always", _row("x [[fail:500]]")),
    ("timeout", _row("x [[fail:timeout:sleep=2:times=1]]")),
    ("dropped", _row("x [[fail:drop:times=1]]")),
    ("dropped_always", _row("x [[fail:drop]]")),
    ("cut_off", _row("x [[fail:break:times=1]]")),
    ("truncated", _row("x [[fail:truncate:times=1]]")),
    ("malformed", _row("x [[fail:malformed:times=1]]")),
]
FATAL = [("authentication", _row("x [[fail:401]]"))]
PREFIXES = ["openai", "litellm_proxy", "azure"]  # the providers whose embeddings go the short way


def _on(prefix: str, rows: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    """``rows`` with their models named through litellm's ``prefix`` provider (an Azure deployment's name has
    no "/")."""
    if prefix == "openai":
        return rows
    named = []
    for name, body in rows:
        model = body["model"].removeprefix("openai/")
        named.append((name, {**body, "model": f"{prefix}/{model.rsplit('/', 1)[-1] if prefix == 'azure' else model}"}))
    return named


OUTCOMES = {
    "float": "ok", "float_asked": "ok", "base64": "ok", "batch": "ok", "batch_base64": "ok", "dimensions": "ok",
    "unpriced": "ok", "bad_request": "bad_request", "rate_limited_once": "ok", "rate_limited_ms": "ok",
    "rate_limited_always": "rate_limited", "server_error": "ok", "server_error_always": "server_error",
    "timeout": "ok", "dropped": "ok", "dropped_always": "connection_error", "cut_off": "ok", "truncated": "ok",
    "malformed": "ok",
}  # fmt: skip
# litellm's Azure embedding handler makes a body that is not JSON an AzureOpenAIError of the answer's status (200),
# which litellm maps to an APIError that is not retried.
OUTCOMES_OF = {"azure": {"truncated": "http_error", "malformed": "http_error"}}


class Counted:
    """An embedding function that counts its calls (to see which way a request went)."""

    def __init__(self, complete: Complete) -> None:
        self.complete, self.calls = complete, 0

    async def __call__(self, **request: Any) -> Any:
        self.calls += 1
        return await self.complete(**request)


def _caller(api_base: str, embed: Complete, waits: list[float]) -> Caller:
    async def sleep(seconds: float) -> None:
        waits.append(round(seconds, 3))

    policy = RetryPolicy(max_attempts=3, base_wait=0.01, max_wait=0.05, sleep=sleep, rng=lambda: 0.5)
    return Caller(job=BATCH, policy=policy, timeout=1.0, api_base=api_base, calls={EMBEDDINGS: embed},
                  limits=Limits(8))  # fmt: skip


_TIMING = re.compile(r"time taken=[0-9.]+ seconds")


def _comparable(outcome: Any) -> Any:
    """A record (or a fatal error's text) without what differs between two sends: request ids and times."""
    if isinstance(outcome, str):
        return _TIMING.sub("time taken=T seconds", outcome)
    line = orjson.loads(orjson.dumps(outcome.line))
    for key in ("latency_s", "finished_at"):
        assert line["meta"].pop(key, None) is not None or not outcome.ok
    response = line.get("response")
    if response is not None:
        assert response.pop("request_id", "").startswith("req_")
    if line.get("error"):
        line["error"]["message"] = _TIMING.sub("time taken=T seconds", line["error"]["message"])
    return line


async def _send_all(caller: Caller, rows: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    got: dict[str, Any] = {}
    for n, (name, body) in enumerate(rows, start=1):
        line = {"custom_id": name, "method": "POST", "url": EMBEDDINGS, "body": body}
        try:
            got[name] = await caller(Row(n, name, line))
        except FatalProviderError as exc:
            got[name] = str(exc)
    return got


@pytest.mark.parametrize("prefix", PREFIXES)
async def test_the_same_embedding_records_whichever_way_a_request_went(provider: FakeProvider, prefix: str) -> None:
    waits_litellm: list[float] = []
    waits_wire: list[float] = []
    rows = _on(prefix, ROWS + FATAL)
    through_litellm = await _send_all(_caller(provider.url, aembedding, waits_litellm), rows)
    provider.reset()
    fallback = Counted(aembedding)
    through_wire = await _send_all(_caller(provider.url, wire_embed.EmbedSender(fallback), waits_wire), rows)
    await aclose()
    assert fallback.calls == 0, "every one of these requests can go the short way"

    assert list(through_wire) == list(through_litellm)
    for name in through_litellm:
        assert _comparable(through_wire[name]) == _comparable(through_litellm[name]), name
    assert waits_wire == waits_litellm  # the same retries, each after the same wait (Retry-After honoured)
    assert sum(w >= 0.2 for w in waits_wire) >= 5
    outcomes = {
        n: r.line["error"]["code"] if not r.ok else "ok" for n, r in through_wire.items() if not isinstance(r, str)
    }
    assert outcomes == {**OUTCOMES, **OUTCOMES_OF.get(prefix, {})}
    assert "stopped the run" in through_wire["authentication"]
    bodies = {n: r.line["response"]["body"] for n, r in through_wire.items() if not isinstance(r, str) and r.ok}
    assert [len(d["embedding"]) for d in bodies["batch"]["data"]] == [1536] * 3
    assert isinstance(bodies["base64"]["data"][0]["embedding"], str)  # kept as sent; decoded on export
    assert len(bodies["dimensions"]["data"][0]["embedding"]) == 256
    for name, body in bodies.items():  # the cost is litellm's, for the model and the usage answered
        cost = through_wire[name].line["meta"]["cost_usd"]
        if name == "unpriced":
            assert cost is None
            continue
        asked = dict(rows)[name]["model"]  # azure/text-embedding-3-small has a price of its own
        response = litellm.EmbeddingResponse(model=body["model"], usage=litellm.Usage(**body["usage"]))
        expected = litellm.completion_cost(completion_response=response, model=asked, call_type="aembedding")
        assert cost == pytest.approx(expected, rel=1e-12) and expected > 0, name


@pytest.mark.parametrize("prefix", PREFIXES)
async def test_each_embedding_failure_is_classified_as_litellm_s_would_be(provider: FakeProvider, prefix: str) -> None:
    """One attempt each, no retries: the ProviderFailure's every field, and whether the endpoint counts as
    unreachable."""
    sender = wire_embed.EmbedSender(Counted(aembedding))
    requests = [body for _, body in _on(prefix, ROWS + FATAL) if "[[fail" in body["input"]]
    refused = _on(prefix, [("refused", _row("x", api_base="http://127.0.0.1:9/v1"))])[0][1]  # nothing listens on 9
    try:
        for body in [*requests, refused]:
            failures = []
            for embed in (aembedding, sender):
                provider.reset()
                params = {"api_base": provider.url, "timeout": 1.0, "max_retries": 0, **body}
                with pytest.raises(ProviderFailure) as caught, mapped():
                    await embed(**params)
                f = caught.value
                headers = {k: v for k, v in f.headers.items() if k not in ("date", "x-request-id", "request-id")}
                failures.append((type(f.__cause__), f.disposition, f.code, _comparable(f.message), f.status,
                                 f.retry_after, f.unreachable, headers))  # fmt: skip
            assert failures[1] == failures[0], body["input"]
        assert sender.fallback.calls == 0  # type: ignore[attr-defined]
    finally:
        await aclose()


@pytest.mark.parametrize(
    ("request_", "short"),
    [
        ({}, True),
        ({"model": "openai/text-embedding-3-small", "encoding_format": "base64", "user": "u"}, True),
        ({"model": "text-embedding-ada-002"}, True),
        ({"model": "openai/BAAI/bge-small-en", "custom_llm_provider": "openai", "api_key": "sk-1"}, True),
        ({"dimensions": 256}, True),
        ({"model": "text-embedding-ada-002", "dimensions": 256}, False),  # litellm refuses it, its own way
        ({"encoding_format": "int8"}, False),
        ({"extra_headers": {"x": "1"}}, False),
        ({"model": "litellm_proxy/BAAI/bge-small-en"}, True),
        ({"model": "azure/my-embedding", "max_retries": 0}, True),  # the SDK's base64, decoded as it decodes it
        ({"model": "azure/my-embedding", "max_retries": 2}, False),  # its SDK client would retry on its own
        ({"model": "azure/a/b", "max_retries": 0}, False),  # a deployment name the SDK would quote
        ({"model": "cohere/embed-english-v3.0"}, False),
        ({"model": "hosted_vllm/BAAI/bge-small-en"}, False),  # litellm's HTTP handler and a config of its own
    ],
)
def test_which_embedding_requests_go_the_short_way(request_: dict[str, Any], short: bool) -> None:
    request = {"model": MODEL, "input": "x", "timeout": 5.0, "max_retries": 0, "api_base": "http://127.0.0.1:9/v1"}
    assert (wire_embed.eligible({**request, **request_}) is not None) is short


def test_the_plan_chooses_the_embedding_sender() -> None:
    policy = RetryPolicy(max_attempts=1)
    auto = build_caller(CallPlan(job=BATCH, policy=policy, timeout=5.0), Limits(1))
    forced = build_caller(CallPlan(job=BATCH, policy=policy, timeout=5.0, sender="litellm"), Limits(1))
    short = auto.calls[EMBEDDINGS]
    assert isinstance(short, wire_embed.EmbedSender) and short.fallback is aembedding
    assert EMBEDDINGS not in forced.calls  # litellm's aembedding (endpoints.FUNCTIONS)


# -- what goes over the wire, against a server of this test's own ------------------------------------


@pytest.fixture
async def echo() -> AsyncIterator[tuple[str, list[dict[str, Any]], Callable[[], None]]]:
    """A server that keeps every request body and answers with whole numbers among the floats."""
    seen: list[dict[str, Any]] = []

    async def embeddings(request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        seen.append({"body": body, "auth": request.headers.get("Authorization")})
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = [{"object": "embedding", "index": i, "embedding": [0, 1, -0.5, 0.25]} for i in range(len(texts))]
        answer = {"object": "list", "data": data, "model": body["model"],
                  "usage": {"prompt_tokens": 7, "total_tokens": 7}}  # fmt: skip
        return web.json_response(answer, headers={"x-request-id": "req_1", "x-ratelimit-remaining-requests": "9"})

    app = web.Application()
    app.router.add_post("/v1/embeddings", embeddings)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/v1", seen, seen.clear
    finally:
        await runner.cleanup()
        await aclose()


async def test_the_same_embedding_request_on_the_wire_and_numbers_read_as_the_sdk_reads_them(
    echo: tuple[str, list[dict[str, Any]], Callable[[], None]],
) -> None:
    url, seen, _ = echo
    for _, body in ROWS[:6]:
        records = []
        for embed in (aembedding, wire_embed.EmbedSender(Counted(aembedding))):
            line = {"custom_id": "r", "method": "POST", "url": EMBEDDINGS, "body": body}
            records.append(await _caller(url, embed, [])(Row(1, "r", line)))
        litellm_sent, wire_sent = seen[-2:]
        assert wire_sent == litellm_sent  # the same JSON body and key
        assert _comparable(records[1]) == _comparable(records[0])
        vector = records[1].line["response"]["body"]["data"][0]["embedding"]
        if body.get("encoding_format") != "base64":  # else the numbers, encoded as asked
            assert [type(v) for v in vector] == [float] * 4  # the SDK reads 0 and 1 as 0.0 and 1.0
    assert ENDPOINT not in seen[-1]["body"]
