"""One-paragraph summaries of longer texts, streamed, in the text's own language."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from runner import InvalidResult, Job, content_of, first_choice
from runner.job.definition import system_and_text

SYSTEM_PROMPT = (
    "Summarize the user's text in one paragraph of at most four sentences, in the same language as the text "
    "(answer in Chinese if it is Chinese). Keep names, numbers and what is being asked for. "
    "Write only the summary: no heading, no preamble, no list."
)


def build_request(record: Mapping[str, Any]) -> dict[str, Any]:
    """A streamed summary request for one text."""
    return {
        "messages": system_and_text(record, SYSTEM_PROMPT),
        "temperature": 0.2,
        "max_tokens": 300,
    }


def parse_summary(body: Mapping[str, Any]) -> str:
    """The paragraph; an empty or cut-off one is rejected (and re-asked once with more room)."""
    summary = content_of(body).strip()
    choice = first_choice(body)
    if choice.get("finish_reason") == "length":
        raise InvalidResult("the summary was cut off at max_tokens")
    if not summary:
        raise InvalidResult("the summary is empty")
    return " ".join(summary.split())


job = Job(
    name="summarize",
    model="gpt-4o-mini",
    build_request=build_request,
    parse_result=parse_summary,
    description="longer text -> one-paragraph summary in its language (streamed)",
    stream=True,
    reasks=1,
    concurrency=16,
    timeout=120.0,
)
