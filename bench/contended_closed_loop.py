"""A few closed-loop clients against one real server while CPU hogs share its cores: every non-200.

    .venv/bin/python bench/contended_closed_loop.py [--users 4] [--duration 20] [--hogs 3] [--models 4]
        [--baseline-src DIR]

Starts `inferpack serve` over tiny demo models (a temporary repository), sends `--users` closed-loop seed
requests with no deadline header (as the SIGSTOP fleet test's load does) for `--duration` seconds while
`--hogs` busy-looping processes compete for the cores, and prints the outcomes, the first failures (status,
error kind, body) and the server's shed counters. A few clients are no overload: a server that answers
them 503/504 here fails its clients because the host is busy. With `--baseline-src`, the same run follows
against that source tree (e.g. `git archive main src | tar -x -C /tmp/base`) under the same hogs, so the
two are compared side by side. Never part of the test run; figures go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

QUESTION = {"seq_0": "Who went home?", "seq_1": "Bob went home after the game."}
HOG = (  # one busy-looping process: a core's worth of demand for `s` seconds
    "import time\nend = time.monotonic() + {s}\n"
    "while time.monotonic() < end:\n    sum(i * i for i in range(10000))\n"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(src: Path | None, repo: Path, models: list[str], users: int, duration: float) -> str:
    """One server from `src` (None: this tree) under `users` closed-loop clients: a report."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if src is not None:
        env["PYTHONPATH"] = str(src)
    port = _free_port()
    cmd = [sys.executable, "-m", "inferpack.cli", "serve", "--repository", str(repo), "--host", "127.0.0.1"]
    proc = subprocess.Popen([*cmd, "--port", str(port), "--log-level", "warning"], env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/v2/health/ready", trust_env=False).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("the server did not get ready within 120 s")
            time.sleep(0.1)
        outcomes: Counter[str] = Counter()
        failures: list[str] = []
        stop = threading.Event()
        started = time.monotonic()

        def user(i: int) -> None:
            with httpx.Client(base_url=url, timeout=30, trust_env=False) as client:
                while not stop.is_set():
                    at = time.monotonic() - started
                    resp = client.get(f"/predictions/{models[i % len(models)]}", params=QUESTION)
                    outcomes[str(resp.status_code)] += 1
                    if resp.status_code != 200:
                        kind = resp.headers.get("inferpack-error-kind")
                        failures.append(f"  +{at:.2f} s {resp.status_code} {kind}: {resp.text[:160]}")
                    i += 1

        threads = [threading.Thread(target=user, args=(i,)) for i in range(users)]
        for t in threads:
            t.start()
        time.sleep(duration)
        stop.set()
        for t in threads:
            t.join()
        metrics = httpx.get(f"{url}/metrics", trust_env=False).text
        shed = [line for line in metrics.splitlines() if line.startswith("inferpack_requests_shed_total")]
        total = sum(outcomes.values())
        lines = [f"{src or 'this tree'}: {total - outcomes['200']}/{total} failed {dict(outcomes)}"]
        return "\n".join([*lines, *failures[:5], *(f"  {s}" for s in shed)])
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=4)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--hogs", type=int, default=3)
    parser.add_argument("--models", type=int, default=4)
    parser.add_argument("--baseline-src", type=Path, default=None)
    args = parser.parse_args()
    from inferpack.repository.demo import make_demo_models

    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        models = make_demo_models(repo, args.models, arch="tiny")
        runs = 2 if args.baseline_src else 1
        span = runs * (args.duration + 15)  # each run: the server's start, the load, its stop
        hogs = [subprocess.Popen([sys.executable, "-c", HOG.format(s=span)]) for _ in range(args.hogs)]
        try:
            print(run(None, repo, models, args.users, args.duration), flush=True)
            if args.baseline_src:
                print(run(args.baseline_src.resolve(), repo, models, args.users, args.duration), flush=True)
        finally:
            for hog in hogs:
                hog.kill()
                hog.wait()


if __name__ == "__main__":
    main()
