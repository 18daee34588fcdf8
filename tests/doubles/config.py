"""The fake provider's server-wide settings: latency, seeded random faults, the rpm/tpm quota and the key.

Without a ``[[fail`` directive a request may hit a seeded random fault (``p429``, ``p500``, ``p502``,
``p503``, ``p_timeout``, ``p_drop``), so load runs are reproducible. ``rpm_limit``/``tpm_limit`` add
a real quota over a rolling ``window_s`` (see ``quota.Quota``). ``api_key`` makes the server refuse
(401) every request whose bearer key is another one, as a deployment with a wrong key would.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Final

HOST: Final = "127.0.0.1"

RANDOM_KINDS: Final = (
    ("429", "p429"),
    ("500", "p500"),
    ("502", "p502"),
    ("503", "p503"),
    ("timeout", "p_timeout"),
    ("drop", "p_drop"),
)


@dataclass(frozen=True)
class FaultConfig:
    """Server-wide latency and random-fault settings; each probability applies per request."""

    latency_ms: float = 0.0
    latency_mean_ms: float = 0.0  # mean of an extra random latency drawn from latency_dist
    latency_dist: str = "lognormal"  # or "exponential"
    latency_sigma: float = 0.5  # lognormal shape: larger gives a heavier tail
    seed: int | None = None
    p429: float = 0.0
    retry_after: float | None = None  # Retry-After seconds sent with random 429s and 503s
    p500: float = 0.0
    p502: float = 0.0
    p503: float = 0.0
    p_timeout: float = 0.0
    timeout_sleep: float = 30.0  # how long a random timeout stalls before answering
    p_drop: float = 0.0
    rpm_limit: int | None = None  # requests admitted per rolling window; None is unlimited
    tpm_limit: int | None = None  # tokens admitted per rolling window (see Quota for the charge)
    window_s: float = 60.0  # the rolling window of both limits, in seconds
    api_key: str | None = None  # when set, a request with any other bearer key is refused with a 401
    p_flex_unavailable: float = 0.0  # share of service_tier=flex requests answered 429 "Resource Unavailable"

    def __post_init__(self) -> None:
        """Reject bad values at configure time rather than failing requests later."""
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("rpm_limit", "tpm_limit"):
                if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                    raise ValueError(f"{f.name} must be an int >= 1 or None, got {value!r}")
            elif f.name == "window_s":
                if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                    raise ValueError(f"window_s must be a positive number, got {value!r}")
            elif f.name == "latency_dist":
                if value not in ("lognormal", "exponential"):
                    raise ValueError("latency_dist must be 'lognormal' or 'exponential'")
            elif f.name == "seed":
                if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                    raise ValueError("seed must be an int or None")
            elif f.name == "api_key":
                if value is not None and (not isinstance(value, str) or not value):
                    raise ValueError(f"api_key must be a non-empty string or None, got {value!r}")
            elif value is None and f.name == "retry_after":
                continue
            elif isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"{f.name} must be a non-negative number, got {value!r}")
        probabilities = [getattr(self, name) for _, name in RANDOM_KINDS]
        if any(p > 1 for p in probabilities) or sum(probabilities) > 1:
            raise ValueError("fault probabilities must each be <= 1 and sum to <= 1")

    def merged(self, changes: Mapping[str, Any]) -> FaultConfig:
        """Return a copy with ``changes`` applied; unknown keys are an error, not ignored."""
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise ValueError(f"unknown fault config keys: {sorted(unknown)}")
        return replace(self, **dict(changes))


QUIET: Final = asdict(FaultConfig(seed=0))  # configure(**QUIET): every fault, latency and quota off
