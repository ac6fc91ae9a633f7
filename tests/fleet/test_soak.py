"""The soak benchmark, short: `bench/soak.py` on a real fleet (2 servers, 2 copies, tiny demo models) for
about a minute in all, at half of the capacity it measures first (below: why not 80%). No request may fail, and no process's
memory may keep growing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
INTERVAL_S = 10
# RSS growth from the first sample (taken after the capacity run, so every model is loaded and every
# allocator pool warmed) to the last, per process. Steady traffic should add nothing that stays; what
# settles (glibc arenas, torch's allocator, batches that grow with the rate) was measured on the dev
# machine (2026-12) at 0.1-8 MB a process at 24 req/s under heavy contention and 0.1-18 MB at 164 req/s on
# a quieter one. 40 MB is twice the largest of those, and what two leaked tiny models (~18 MB of weights
# each) or ~12 KB leaked per request (~3,300 requests a server at the higher rate) would add: a bounded,
# not a tight, check; the 10-minute soak in docs/benchmarks.md (steps of settling, then flat) is the finer
# evidence.
MAX_GROWTH_MB = 40.0
# Half of the capacity, not the full soak's 80%: here the capacity is a 4 s measurement and the load
# generator and pytest share the fleet's 2 cores; a dip in the share after that measurement (seen on the
# shared dev machine: capacity 384 req/s measured, then 55 sheds with 503 at 307 req/s) would make 80% an
# overload and the test flaky. What it checks (no errors, no process restarted, RSS bounded under steady
# traffic) does not need the last 30%.
FRACTION = 0.5


def test_one_minute_soak_has_no_errors_and_bounded_rss(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    cmd = [
        sys.executable, str(ROOT / "bench" / "soak.py"),
        "--arch", "tiny", "--models", "4",
        "--duration", "40", "--interval", str(INTERVAL_S),
        "--capacity-duration", "4", "--users", "4", "--fraction", str(FRACTION),
        "--work-dir", str(tmp_path / "work"), "--out", str(out),
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=env, cwd=ROOT)
    print(done.stdout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["requests"] > 0 and report["capacity_rps"] > 0
    assert report["errors"] == 0, report["error_kinds"]
    assert len(report["intervals"]) == 4
    assert all(row["requests"] > 0 for row in report["intervals"])
    growth = report["rss_growth_mb"]
    assert set(growth) == {"supervisor", "router", "server-0", "server-1"}
    assert all(g is not None for g in growth.values()), "a process was restarted during the soak"
    assert max(growth.values()) < MAX_GROWTH_MB, growth
