"""Flat latency: runner against the bare loop when every request takes exactly the same time.

    .venv/bin/python -m bench.flat [--repeat 3] [--waves 10] [--quick]

With a flat latency L and concurrency C, a client's answers arrive in waves of C, and whatever it
does between an answer and the next request (parsing, the record, the journal, progress, the
manifest) delays the next wave; the delay never dissolves, since no request is shorter than
another. Two scenarios, C=20 with L=1.5 s and C=256 with L=2 s, each over C x --waves rows: runner
(the CLI, ``python -m runner run classify --api-base ...``) and the bare ``asyncio.Semaphore`` +
``litellm.acompletion`` loop (bench/bare.py), each in its own process, alternating which goes
first from one repeat to the next. The fake provider (``bench.server --latency-ms L``) runs in its
own process and records when each request arrived and when it was answered; the span is the
first request's arrival to the last answer, so a client's start-up (importing litellm) is not
counted. Efficiency = ideal / span with ideal = ceil(N / C) x L; the verdict is runner's span
over the bare loop's, paired per repeat.

Where a span's excess over the ideal comes from, from the same timestamps (waves are the requests
in arrival order, C at a time; the three parts add up to the span exactly):
  first wave sent over   the first wave's last arrival less its first (the client's start-up burst);
  answer -> next         per later wave, its mean arrival less the previous wave's mean answer: the
  request                client's mean turnaround, its queueing for the one event loop included;
  last answer -> last    per later wave, its last arrival less the previous wave's last answer:
  request                the turnaround that lengthens the span.
span = first wave sent over + waves x L + (waves - 1) x (last answer -> last request), to within the
server's own jitter in answering.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench.common import Server, bare_command, child, machine, runner_command, server, spread, tickets, write_rows

SCENARIOS = ((20, 1500.0, 1.02), (256, 2000.0, 1.05))  # concurrency, latency ms, target runner/bare span


@dataclass(frozen=True)
class Timing:
    """One client's run, as the server saw it."""

    span: float  # first arrival to last answer, seconds
    first_wave: float  # the first wave's last arrival less its first
    turnaround: float  # mean over later waves of (mean arrival - mean answer of the wave before)
    tail: float  # mean over later waves of (last arrival - last answer of the wave before)
    busy: float  # the client's CPU inside the span / the span


def timing(srv: Server, concurrency: int, cpu_inside: float) -> Timing:
    """The span and its parts from the server's per-request timestamps."""
    requests = srv.requests()
    arrived = sorted(r[0] for r in requests)
    answered = sorted(r[1] for r in requests)
    waves = [(arrived[i : i + concurrency], answered[i : i + concurrency]) for i in range(0, len(arrived), concurrency)]
    turn = [statistics.fmean(a) - statistics.fmean(b) for (a, _), (_, b) in zip(waves[1:], waves, strict=False)]
    tail = [a[-1] - b[-1] for (a, _), (_, b) in zip(waves[1:], waves, strict=False)]
    span = answered[-1] - arrived[0]
    return Timing(span, waves[0][0][-1] - waves[0][0][0], statistics.fmean(turn or [0.0]),
                  statistics.fmean(tail or [0.0]), cpu_inside / span)  # fmt: skip


def scenario(concurrency: int, latency_ms: float, waves: int, repeat: int) -> dict[str, list[Timing]]:
    """``repeat`` runs each of runner and the bare loop against a server with a flat ``latency_ms``."""
    rows = concurrency * waves
    out: dict[str, list[Timing]] = {"runner": [], "bare": []}
    with tempfile.TemporaryDirectory() as tmp, server(latency_ms=latency_ms) as srv:
        work = Path(tmp)
        path = write_rows(work / "in.jsonl", tickets(rows))
        for attempt in range(repeat):
            runs = {
                "runner": runner_command(path, srv.url, concurrency, "--run-id", f"flat{attempt}"),
                "bare": bare_command(path, srv.url, concurrency),
            }
            for who in list(runs) if attempt % 2 == 0 else list(reversed(runs)):
                srv.reset()
                usage = child(runs[who], cwd=work)
                window = srv.window()
                if window.answered != rows:
                    raise SystemExit(f"{who}: the server answered {window.answered} of {rows} requests")
                out[who].append(timing(srv, concurrency, usage.cpu_between(window)))
            print(f"  repeat {attempt + 1}/{repeat}: " + ", ".join(f"{k} {v[-1].span:.2f}s" for k, v in out.items()),
                  flush=True)  # fmt: skip
    return out


def report(concurrency: int, latency_ms: float, waves: int, target: float, out: dict[str, list[Timing]]) -> None:
    ideal = waves * latency_ms / 1000  # ceil(N / C) x L, with N = C x waves
    print(f"(C={concurrency}) flat {latency_ms:.0f} ms, concurrency {concurrency}, {concurrency * waves} rows "
          f"({waves} waves); ideal {ideal:.2f}s")  # fmt: skip
    for who, runs in out.items():
        ms, efficiency = "{:.0f}", spread([ideal / t.span for t in runs], "{:.3f}")
        print(f"  {who:<6} span {spread([t.span for t in runs])}s; efficiency {efficiency}; "
              f"first wave sent over {spread([1000 * t.first_wave for t in runs], ms)} ms; "
              f"answer -> next request {spread([1000 * t.turnaround for t in runs], ms)} ms, "
              f"last answer -> last request {spread([1000 * t.tail for t in runs], ms)} ms a wave; "
              f"client busy {spread([t.busy for t in runs])}")  # fmt: skip
    ratios = [r.span / b.span for r, b in zip(out["runner"], out["bare"], strict=True)]
    verdict = "met" if statistics.median(ratios) <= target else "MISSED"
    print(f"  runner span / bare span, paired per repeat: {spread(ratios, '{:.3f}')} "
          f"(target <= {target:.2f}) -> {verdict}", flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.flat", description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--waves", type=int, default=10, help="rows = concurrency x waves (default 10)")
    parser.add_argument("--only", type=int, choices=[c for c, _, _ in SCENARIOS], help="just this concurrency")
    parser.add_argument("--quick", action="store_true", help="one repeat, 3 waves")
    args = parser.parse_args()
    if args.quick:
        args.repeat, args.waves = 1, 3
    print(f"bench.flat, {machine()}", flush=True)
    for concurrency, latency_ms, target in SCENARIOS:
        if args.only in (None, concurrency):
            out = scenario(concurrency, latency_ms, args.waves, args.repeat)
            report(concurrency, latency_ms, args.waves, target, out)


if __name__ == "__main__":
    main()
