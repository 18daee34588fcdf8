"""Reading the wait a provider asked for."""

from __future__ import annotations

from email.utils import formatdate

import pytest

from runner.provider.headers import parse_duration, retry_after_seconds


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("250ms", 0.25),
        ("1h2m3s", 3723.0),
        ("0.5", 0.5),
        ("2.5s", 2.5),
        ("soon", None),
        ("1s junk", None),
        ("", None),
    ],
)
def test_reset_durations(text: str, seconds: float | None) -> None:
    assert parse_duration(text) == seconds


def test_retry_after_ms_wins_over_seconds() -> None:
    assert retry_after_seconds({"retry-after-ms": "1500", "Retry-After": "9"}) == 1.5


def test_retry_after_in_seconds_and_as_an_http_date() -> None:
    assert retry_after_seconds({"Retry-After": "3"}) == 3.0
    now = 1_800_000_000.0
    assert retry_after_seconds({"retry-after": formatdate(now + 20, usegmt=True)}, now=now) == pytest.approx(20)
    assert retry_after_seconds({"retry-after": formatdate(now - 20, usegmt=True)}, now=now) == 0.0
    assert retry_after_seconds({"retry-after": "not a date"}) is None


def test_rate_limit_resets_count_only_for_the_exhausted_limit() -> None:
    headers = {
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "2s",
        "x-ratelimit-remaining-tokens": "5000",
        "x-ratelimit-reset-tokens": "6m0s",
    }
    assert retry_after_seconds(headers) == 2.0
    headers["x-ratelimit-remaining-tokens"] = "0"
    assert retry_after_seconds(headers) == 360.0
    assert retry_after_seconds({}) is None
