"""The planner's P90 against the discrete-event simulation over a fixed grid, and the old M/M/c bound.

    PYTHONPATH=src .venv/bin/python bench/bench_tail.py

For 1-16 workers, utilisation 0.1-0.9 and service-time CV 0-1 (lognormal, as profiles give it), prints
planned / simulated P90 (the tail model of `planner/queueing.py`) and what the former M/M/c bound (a
deterministic batch latency plus the M/M/c P90 wait) gave, with the worst ratios of each. The
simulation (`planner/simulate.py`) runs 12 seeded replications per cell; its standard error is shown.
"""

from __future__ import annotations

import argparse
import itertools
import time

from inferpack.planner.queueing import ServiceTime, p90_response_ms, wait_quantile_s
from inferpack.planner.simulate import simulated_quantile


def main() -> None:
    """Sweep the grid and print each cell and the extremes."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", default="1,2,4,8,16")
    parser.add_argument("--utilisations", default="0.1,0.3,0.5,0.7,0.8,0.9")
    parser.add_argument("--cvs", default="0,0.25,0.5,1")
    a = parser.parse_args()
    start = time.perf_counter()
    rows = []
    print("workers  rho   cv  | planned/sim  M/M/c/sim | sim s.e.")
    for c, rho, cv in itertools.product(
        [int(x) for x in a.workers.split(",")],
        [float(x) for x in a.utilisations.split(",")],
        [float(x) for x in a.cvs.split(",")],
    ):
        service = ServiceTime.from_cv(0.05, cv)
        rate = rho * c / service.mean_s
        planned = p90_response_ms(c, 1000 * service.median_s, service.mean_s, rate, service.cv)
        old = 1000 * (service.median_s + wait_quantile_s(c, service.median_s, rate))  # the former bound
        sim = simulated_quantile(c, rate, service, seed=17, replications=12)
        sim_ms = 1000 * sim.value_s
        rows.append((planned / sim_ms, old / sim_ms, c, rho, cv))
        print(
            f"{c:7d} {rho:4.1f} {cv:4.2f} | {planned / sim_ms:11.3f} {old / sim_ms:10.3f} | "
            f"{sim.stderr_s / sim.value_s:.1%}"
        )
    lo, hi = min(rows), max(rows)
    old_lo = min(rows, key=lambda r: r[1])
    print(
        f"\nplanned / simulated: lowest {lo[0]:.3f} (c={lo[2]}, rho={lo[3]}, cv={lo[4]}), "
        f"highest {hi[0]:.3f} (c={hi[2]}, rho={hi[3]}, cv={hi[4]})"
    )
    print(
        f"former M/M/c bound / simulated: lowest {old_lo[1]:.3f} (c={old_lo[2]}, rho={old_lo[3]}, "
        f"cv={old_lo[4]})"
    )
    print(f"{len(rows)} cells in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
