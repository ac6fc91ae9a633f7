"""Load shapes: when requests are sent.

Closed loop: N users, each sends its next request when the previous one finished (the server's speed sets
the rate). Open loop: requests are due at a schedule fixed in advance (constant or stepped rate, evenly
spaced or Poisson), and latency is measured from the *intended* send time, so a stalled server (or a
generator short of connections) cannot hide its delay: no coordinated omission.
Everything here is pure: times are offsets in seconds from the start of measurement.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Literal

import numpy as np
from pydantic import Field

from inferpack.errors import ConfigError
from inferpack.jsonfile import StrictModel

Arrivals = Literal["constant", "poisson"]


class Step(StrictModel):
    """`rate` requests/s for `duration_s` seconds; the last step lasts until the run ends."""

    rate: float = Field(gt=0)
    duration_s: float | None = Field(default=None, gt=0)


class ClosedLoop(StrictModel):
    """N concurrent users, each with one request in flight at a time."""

    kind: Literal["closed"] = "closed"
    users: int = Field(ge=1)

    def describe(self) -> str:
        """One-line description for tables and reports."""
        return f"closed loop, {self.users} user(s)"


class OpenLoop(StrictModel):
    """Arrivals on a fixed schedule, independent of how fast the server answers."""

    kind: Literal["open"] = "open"
    steps: list[Step] = Field(min_length=1)
    arrivals: Arrivals = "constant"
    max_in_flight: int = Field(
        default=1000, ge=1, description="Connections/requests in flight; later ones wait (and it counts)."
    )

    def describe(self) -> str:
        """One-line description for tables and reports."""
        if len(self.steps) == 1:
            rate = f"{self.steps[0].rate:g} req/s"
        else:
            rate = " → ".join(
                f"{s.rate:g}/s" + (f" for {s.duration_s:g}s" if s.duration_s else "") for s in self.steps
            )
        return f"open loop, {rate} ({self.arrivals} arrivals)"

    def rate_at(self, t: float) -> float:
        """Requests/s due at offset t (warm-up, t < 0, runs at the first step's rate)."""
        if t < 0:
            return self.steps[0].rate
        for step in self.steps:
            if step.duration_s is None or t < step.duration_s:
                return step.rate
            t -= step.duration_s
        return self.steps[-1].rate


LoadShape = ClosedLoop | OpenLoop


def parse_steps(text: str) -> list[Step]:
    """`"50"` (constant) or `"10s:50,20s:100,200"` / `"10:50,20:100"`: duration:rate pairs, the last one
    may omit its duration."""
    steps: list[Step] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            if ":" in part:
                dur, rate = part.split(":", 1)
                steps.append(Step(rate=float(rate), duration_s=float(dur.rstrip("s"))))
            else:
                steps.append(Step(rate=float(part)))
        except ValueError as exc:
            raise ConfigError(f"bad rate step {part!r}: use RATE or SECONDS:RATE") from exc
    if not steps:
        raise ConfigError("no rate given")
    return steps


def _segments(shape: OpenLoop, start: float) -> list[tuple[float, float, float]]:
    """(begin, end, rate) pieces of the schedule from `start`; the last one never ends."""
    out: list[tuple[float, float, float]] = []
    # Warm-up runs at the first step's rate, as one piece with it, so no arrival is lost at offset 0.
    begin, step_start = start, 0.0
    for step in shape.steps:
        end = math.inf if step.duration_s is None else step_start + step.duration_s
        out.append((begin, end, step.rate))
        if end == math.inf:
            return out
        begin = step_start = end
    out.append((begin, math.inf, shape.steps[-1].rate))
    return out


def intended_times(
    shape: OpenLoop, start: float, rng: np.random.Generator, phase: float = 0.0
) -> Iterator[float]:
    """Endless intended send offsets from `start` (negative during warm-up). Constant arrivals are
    computed per step as begin + (k + phase)/rate, so step boundaries are exact (no drift from summing
    gaps). `phase` in [0, 1) shifts them so that several workers' streams interleave, not collide."""
    for begin, end, rate in _segments(shape, start):
        if shape.arrivals == "poisson":
            # Memoryless: restarting the exponential clock at a step boundary keeps the process Poisson.
            t = begin
            while True:
                t += float(rng.exponential(1.0 / rate))
                if t >= end:
                    break
                yield t
        else:
            k = 0
            while True:
                t = begin + (k + phase) / rate
                if t >= end:
                    break
                yield t
                k += 1


def split_shape(shape: LoadShape, workers: int, index: int, *, at_least_one_user: bool = False) -> LoadShape:
    """The share of the load that worker `index` of `workers` generates. `at_least_one_user` (the seq
    mode, where users only set concurrency, not load) gives every worker a user even when users < N."""
    if isinstance(shape, ClosedLoop):
        users = shape.users // workers + (1 if index < shape.users % workers else 0)
        if at_least_one_user:
            users = max(users, 1)
        if users < 1:
            raise ConfigError(
                f"{shape.users} user(s) cannot be spread over {workers} workers",
                hint="--users is the total over all workers: give at least one per worker",
            )
        return ClosedLoop(users=users)
    steps = [Step(rate=s.rate / workers, duration_s=s.duration_s) for s in shape.steps]
    in_flight = max(1, shape.max_in_flight // workers)
    return OpenLoop(steps=steps, arrivals=shape.arrivals, max_in_flight=in_flight)


def split_count(total: int, workers: int, index: int) -> int:
    """Worker `index`'s share of `total` requests (shares differ by at most one)."""
    return total // workers + (1 if index < total % workers else 0)
