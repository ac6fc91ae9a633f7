"""The generator's own ceiling, and the warnings that say a run came near it.

A load test is only worth its numbers when the generator is not the bottleneck. Three signs say it may
have been: its event-loop thread was nearly always busy, its rate came near what one worker was measured
to sustain, or (open loop) its scheduler woke late for requests that were due.
"""

from __future__ import annotations

from inferpack.loadtest import histograms as H
from inferpack.loadtest.result import BenchResult, WorkerInfo

# What one worker sustains with a whole core against a trivial endpoint: bench/bench_loadgen.py measured
# 220-235 us of CPU per request in closed loop and 270-390 us in open loop on the 2-vCPU reference machine
# (docs/benchmarks.md), i.e. ~3,000 req/s open loop. Runs above WARN_FRACTION of it get a warning.
MEASURED_CEILING_RPS = 3000.0
WARN_FRACTION = 0.7
# A worker whose loop thread was busy this share of the run was probably the bottleneck itself.
WARN_CPU_SHARE = 0.8
# Open loop: the scheduler waking this late (p99) means the generator could not keep its schedule.
WARN_SCHEDULE_LAG_MS = 10.0


def generator_warnings(result: BenchResult, info: WorkerInfo) -> list[str]:
    """Signs that this worker, not the server, limited the run."""
    out: list[str] = []
    share = info.cpu_s / info.wall_s if info.wall_s > 0 else 0.0
    if share >= WARN_CPU_SHARE:
        out.append(
            f"worker {info.index} ({info.hostname}) kept its event loop {share:.0%} busy: the generator "
            "may have limited the rate; add --workers"
        )
    rate = info.requests / info.measured_s if info.measured_s > 0 else 0.0
    if rate >= WARN_FRACTION * MEASURED_CEILING_RPS:
        out.append(
            f"worker {info.index} ran at {rate:.0f} req/s, near one worker's measured ceiling "
            f"(~{MEASURED_CEILING_RPS:.0f} req/s, docs/benchmarks.md); add --workers"
        )
    lag = H.summarize(H.decode(result.histograms.schedule_lag))
    if lag.count and lag.p99_ms > WARN_SCHEDULE_LAG_MS:
        out.append(
            f"worker {info.index}'s scheduler woke {lag.p99_ms:.1f} ms late at p99: it could not keep the "
            "arrival schedule; add --workers"
        )
    return out
