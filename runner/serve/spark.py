"""A one-line sparkline of a run's rows/s, from the tail of its timeline, for ``runner status``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runner.run.timeline import last_samples

__all__ = ["BARS", "rate_line", "sparkline"]

BARS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float]) -> str:
    """One bar per value, scaled to the largest (all ``▁`` when every value is 0)."""
    top = max(values, default=0.0)
    if top <= 0:
        return BARS[0] * len(values)
    return "".join(BARS[min(len(BARS) - 1, int(v / top * (len(BARS) - 1) + 0.5))] for v in values)


def rate_line(run_dir: Path, width: int = 40) -> str | None:
    """``▁▃▅█▇▅  last 3m20s, max 12.3 rows/s``, or None when the run has no timeline yet.

    The last ``width`` samples at most; samples are taken every few seconds, so a longer stretch is
    folded into ``width`` bars by averaging neighbours (read from the file's tail only).
    """
    samples: list[dict[str, Any]] = last_samples(run_dir, most=width * 8)
    rates = [(float(s.get("rows_per_s") or 0.0), float(s.get("interval_s") or 0.0)) for s in samples]
    if not rates:
        return None
    step = -(-len(rates) // width)  # ceil: how many samples one bar stands for
    bars = [rates[i : i + step] for i in range(0, len(rates), step)]
    values = [sum(r * t for r, t in bar) / max(sum(t for _, t in bar), 1e-9) for bar in bars]
    span = sum(t for _, t in rates)
    return f"{sparkline(values)}  last {_span(span)}, max {max(values):.1f} rows/s"


def _span(seconds: float) -> str:
    s = round(seconds)
    return f"{s}s" if s < 60 else f"{s // 60}m{s % 60:02d}s" if s < 3600 else f"{s // 3600}h{s % 3600 // 60:02d}m"
