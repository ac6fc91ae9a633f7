"""CPU the load generator costs per request: aiohttp against bench/loadgen_raw.py, same server, same load.

bench/overload.py's generator runs on the cores of the server it loads, so its CPU per request is taken
from the server. This starts `inferpack serve` on the overload bench's 6 MiniLM demo models and runs a
closed loop of `--connections` clients for `--duration` s with each generator, alternating `--rounds`
times, and prints req/s and the generator process's CPU per request for each.

    PYTHONPATH=src:bench .venv/bin/python bench/generator_cost.py [--duration 6] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import subprocess
import time

import aiohttp
from bench_server import CONTEXT, QUESTION, ROOT
from loadgen_raw import cpu_seconds
from overload import Target, closed_loop

from inferpack.processes import free_port, server_command, wait_ready
from inferpack.repository.demo import make_demo_models


async def aiohttp_loop(
    url: str, models: list[str], connections: int, seconds: float
) -> tuple[int, float, float]:
    """(requests answered, generator CPU s, wall s) of an aiohttp closed loop."""
    done, rng = 0, random.Random(1)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        stop = time.perf_counter() + seconds

        async def user() -> None:
            nonlocal done
            while time.perf_counter() < stop:
                params = {"seq_0": QUESTION, "seq_1": CONTEXT}
                timeout = aiohttp.ClientTimeout(total=60)
                async with session.get(
                    f"{url}/predictions/{rng.choice(models)}", params=params, timeout=timeout
                ) as r:
                    await r.read()
                done += 1

        cpu0, t0 = cpu_seconds(), time.perf_counter()
        await asyncio.gather(*(user() for _ in range(connections)))
        return done, cpu_seconds() - cpu0, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per generator and round")
    parser.add_argument("--rounds", type=int, default=2, help="times each generator runs, alternating")
    parser.add_argument("--connections", type=int, default=16, help="closed-loop clients")
    args = parser.parse_args()
    ids = make_demo_models(ROOT / "repo", 10, prefix="bench-qa")[:6]
    port = free_port()
    cmd = server_command(
        repository=str(ROOT / "repo"), models=ids, port=port, threads=None, log_level="warning"
    )
    proc = subprocess.Popen(cmd)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, timeout_s=300)
        target = Target("127.0.0.1", port, ids, proc.pid)
        asyncio.run(closed_loop(target, 4, 2.0))  # warm-up
        for _ in range(args.rounds):
            raw = asyncio.run(closed_loop(target, args.connections, args.duration))
            n = max(len(raw.outcomes), 1)
            print(
                f"raw:     {n / raw.seconds:.1f} req/s, "
                f"generator {raw.generator_cpu_s / n * 1e6:.0f} us CPU per request"
            )
            done, cpu, wall = asyncio.run(aiohttp_loop(url, ids, args.connections, args.duration))
            print(
                f"aiohttp: {done / wall:.1f} req/s, "
                f"generator {cpu / max(done, 1) * 1e6:.0f} us CPU per request"
            )
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
