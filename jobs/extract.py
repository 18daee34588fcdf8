"""Support-ticket extraction by tool call: product, severity, a one-line summary and the customer's email."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from runner import Job
from runner.job.definition import system_and_text
from runner.job.structured import parse_tool_call, tool


class Ticket(BaseModel):
    """What ``record_ticket`` takes: the fields a support queue routes on."""

    model_config = ConfigDict(extra="forbid")

    product: str = Field(min_length=1, description="The product or feature area the ticket is about")
    severity: Literal["low", "medium", "high", "critical"] = Field(
        description="critical: outage or data loss; high: blocked; medium: impaired; low: cosmetic or a question"
    )
    summary: str = Field(min_length=1, max_length=200, description="One sentence, in the ticket's language")
    customer_email: str | None = Field(description="The customer's email address if the ticket gives one, else null")


RECORD_TICKET = tool("record_ticket", "Record the triaged support ticket.", Ticket)

SYSTEM_PROMPT = (
    "You triage customer support tickets for a software company. Read the ticket and call record_ticket "
    "exactly once with its product area, severity, a one-sentence summary in the ticket's own language, and "
    "the customer's email address if the ticket contains one (otherwise null)."
)


def build_request(record: Mapping[str, Any]) -> dict[str, Any]:
    """A forced call of record_ticket for one ticket."""
    return {
        "messages": system_and_text(record, SYSTEM_PROMPT),
        "tools": [RECORD_TICKET],
        "tool_choice": {"type": "function", "function": {"name": "record_ticket"}},
        "temperature": 0,
        "max_tokens": 300,
    }


def parse_ticket(body: Mapping[str, Any]) -> dict[str, Any]:
    """The validated arguments of the call, read from the assembled message only."""
    result: dict[str, Any] = parse_tool_call(Ticket, body, "record_ticket")
    return result


job = Job(
    name="extract",
    model="gpt-4o-mini",
    build_request=build_request,
    parse_result=parse_ticket,
    description="support ticket -> record_ticket(product, severity, summary, customer_email) by tool call",
    stream=True,
    reasks=1,
    concurrency=16,
    timeout=60.0,
)
