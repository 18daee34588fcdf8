"""The rpm/tpm quota: a sliding window of admitted requests, OpenAI's x-ratelimit-* headers and its 429 messages."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from tests.doubles.config import FaultConfig


def _ceil_ms(seconds: float) -> int:
    return max(0, math.ceil(round(seconds * 1000, 6)))  # round first so 0.3 s is 300 ms, not 301


def decimal_seconds(ms: int) -> str:
    """``ms`` as seconds, without trailing zeros: 1500 is "1.5", 2000 is "2"."""
    return f"{ms // 1000}.{ms % 1000:03d}".rstrip("0").rstrip(".")


def reset_duration(seconds: float) -> str:
    """Format like OpenAI's x-ratelimit-reset-* headers, rounded up to 1 ms: 250ms, 1s, 1.5s, 6m0s."""
    ms = _ceil_ms(seconds)
    if ms < 1000:
        return f"{ms}ms" if ms else "0s"
    minutes, ms = divmod(ms, 60_000)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes}m{decimal_seconds(ms)}s"
    if minutes:
        return f"{minutes}m{decimal_seconds(ms)}s"
    return f"{decimal_seconds(ms)}s"


@dataclass(frozen=True)
class QuotaDecision:
    """The quota's verdict on one request: its x-ratelimit-* headers and, if refused, why."""

    headers: dict[str, str]
    refused: str | None = None  # "requests" or "tokens"
    retry_after_ms: int | None = None  # when a retry would be admitted; None if it never would
    message: str = ""


class Quota:
    """Sliding-window rpm/tpm limits: a log of (time, tokens) for the requests admitted in the window.

    A request is admitted if, counting it, the requests and tokens admitted in the last
    ``window_s`` stay within the limits; refused requests are not logged, so they cost nothing, and
    are answered at once (no latency). An admitted request is charged even if an injected fault
    then fails it.
    The charge is the prompt estimate plus ``max_completion_tokens``/``max_tokens`` when given,
    else the completion tokens actually produced (so it is known before answering, as OpenAI's is).
    Retry-After is the exact time until enough logged requests fall out of the window, rounded
    up to 1 ms; x-ratelimit-reset-* is the time until the window is empty again (fully reset).
    Not thread-safe on its own: FakeServer calls it under its lock.
    """

    def __init__(self) -> None:
        """Start with an empty window."""
        self._log: deque[tuple[float, int]] = deque()
        self._tokens = 0
        self.charged = 0  # tokens charged to every request admitted since the last clear()

    def clear(self) -> None:
        """Forget everything admitted so far."""
        self._log.clear()
        self._tokens = 0
        self.charged = 0

    def check(self, cfg: FaultConfig, now: float, tokens: int, model: str) -> QuotaDecision:
        """Admit (and log) or refuse a request charged ``tokens``, at monotonic time ``now``."""
        while self._log and now - self._log[0][0] >= cfg.window_s:
            self._tokens -= self._log.popleft()[1]
        waits: dict[str, float] = {}  # per refusing limit, seconds until a retry fits (inf: never)
        if cfg.rpm_limit is not None and len(self._log) + 1 > cfg.rpm_limit:
            waits["requests"] = self._log[len(self._log) - cfg.rpm_limit][0] + cfg.window_s - now
        if cfg.tpm_limit is not None and self._tokens + tokens > cfg.tpm_limit:
            waits["tokens"] = self._token_wait(cfg.tpm_limit, cfg.window_s, now, tokens)
        if not waits:
            self._log.append((now, tokens))
            self._tokens += tokens
            self.charged += tokens
            return QuotaDecision(self._headers(cfg, now))
        refused = max(waits, key=waits.__getitem__)
        retry_ms = None if math.isinf(waits[refused]) else max(1, _ceil_ms(waits[refused]))
        message = self._message(cfg, refused, model, tokens, retry_ms)
        return QuotaDecision(self._headers(cfg, now), refused, retry_ms, message)

    def _token_wait(self, limit: int, window_s: float, now: float, tokens: int) -> float:
        if tokens > limit:
            return math.inf  # too large for any window: OpenAI's "Request too large" 429
        left = self._tokens
        for logged_at, logged in self._log:
            left -= logged
            if left + tokens <= limit:
                return logged_at + window_s - now
        return window_s  # unreachable: an empty window always fits a request within the limit

    def _headers(self, cfg: FaultConfig, now: float) -> dict[str, str]:
        reset = reset_duration(self._log[-1][0] + cfg.window_s - now if self._log else 0.0)
        headers: dict[str, str] = {}
        for unit, limit, used in (("requests", cfg.rpm_limit, len(self._log)), ("tokens", cfg.tpm_limit, self._tokens)):
            if limit is not None:
                headers[f"x-ratelimit-limit-{unit}"] = str(limit)
                headers[f"x-ratelimit-remaining-{unit}"] = str(max(0, limit - used))
                headers[f"x-ratelimit-reset-{unit}"] = reset
        return headers

    def _message(self, cfg: FaultConfig, refused: str, model: str, tokens: int, retry_ms: int | None) -> str:
        if refused == "requests":
            limit, used, requested, short = cfg.rpm_limit, len(self._log), 1, "requests per min (RPM)"
        else:
            limit, used, requested, short = cfg.tpm_limit, self._tokens, tokens, "tokens per min (TPM)"
        if retry_ms is None:
            return (
                f"Request too large for {model} in organization org-fake on {short}: Limit {limit}, "
                f"Requested {requested}. The input or output tokens must be reduced in order to run successfully."
            )
        return (
            f"Rate limit reached for {model} in organization org-fake on {short}: Limit {limit}, Used {used}, "
            f"Requested {requested}. Please try again in {reset_duration(retry_ms / 1000)}. "
            "Visit https://platform.openai.com/account/rate-limits to learn more."
        )
