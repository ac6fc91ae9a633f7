"""`--workers N`: N local worker processes, each running `inferpack bench worker` (the same command a
Kubernetes Job's container runs), each writing its own result file; then an exact aggregate.

Workers report progress as JSON lines on stdout, wait on stdin for a common "go" so that they start
together, and write their result file before they exit.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any

from inferpack.errors import InferpackError
from inferpack.loadtest.config import BenchConfig, save_config
from inferpack.loadtest.recorder import Snapshot
from inferpack.loadtest.result import BenchResult, aggregate, load_result

WorkerProgressFn = Callable[[int, Snapshot], None]


def snapshot_line(index: int, snap: Snapshot) -> str:
    """A progress JSON line, as a worker prints it."""
    return json.dumps({"event": "progress", "index": index, **asdict(snap)})


def worker_command(
    config_path: Path,
    index: int,
    workers: int,
    out: Path,
    *,
    wait_go: bool = False,
    token_file: Path | None = None,
) -> list[str]:
    """argv of one worker process; in a container, `inferpack bench worker` with the same arguments."""
    cmd = [sys.executable, "-m", "inferpack.loadtest", "worker", "--config", str(config_path)]
    cmd += ["--index", str(index), "--of", str(workers), "--out", str(out), "--progress", "jsonl"]
    if wait_go:
        cmd.append("--wait-go")
    if token_file is not None:
        cmd += ["--token-file", str(token_file)]
    return cmd


def _pump(index: int, stream: IO[str], events: queue.Queue[tuple[int, dict[str, Any] | None]]) -> None:
    for line in stream:
        line = line.strip()
        if line.startswith("{"):
            try:
                events.put((index, json.loads(line)))
            except json.JSONDecodeError:
                continue
    events.put((index, None))


def run_local(
    config: BenchConfig,
    workers: int,
    out_dir: Path,
    progress: WorkerProgressFn | None = None,
    token_file: Path | None = None,
) -> BenchResult:
    """Run `workers` worker processes on this machine and return the aggregate of their results (each
    reads its bearer token from `token_file` itself: the token never goes into an argv or a file here)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    config_path = out_dir / "bench-config.json"
    save_config(config, config_path)
    outs = [out_dir / f"worker-{i}.json" for i in range(workers)]
    logs = [out_dir / f"worker-{i}.log" for i in range(workers)]
    events: queue.Queue[tuple[int, dict[str, Any] | None]] = queue.Queue()
    procs: list[subprocess.Popen[str]] = []
    try:
        for i in range(workers):
            with logs[i].open("w") as log:
                proc = subprocess.Popen(
                    worker_command(config_path, i, workers, outs[i], wait_go=True, token_file=token_file),
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=log,
                    text=True,
                )
            procs.append(proc)
            assert proc.stdout is not None
            threading.Thread(target=_pump, args=(i, proc.stdout, events), daemon=True).start()
        _wait_ready_then_go(procs, events, logs)
        open_streams = workers
        while open_streams:
            index, event = events.get()
            if event is None:
                open_streams -= 1
            elif event.get("event") == "progress" and progress is not None:
                fields = {k: v for k, v in event.items() if k not in ("event", "index")}
                progress(index, Snapshot(**fields))
        for i, proc in enumerate(procs):
            if proc.wait() != 0:
                raise InferpackError(
                    f"bench worker {i} exited with status {proc.returncode}", hint=f"see {logs[i]}"
                )
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return aggregate([load_result(p) for p in outs])


def _wait_ready_then_go(
    procs: list[subprocess.Popen[str]],
    events: queue.Queue[tuple[int, dict[str, Any] | None]],
    logs: list[Path],
) -> None:
    """Wait for every worker's "ready" line (imports done, client built), then release them together."""
    ready: set[int] = set()
    while len(ready) < len(procs):
        try:
            index, event = events.get(timeout=60)
        except queue.Empty as exc:
            raise InferpackError("bench workers did not become ready within 60 s") from exc
        if event is None:
            procs[index].wait()
            raise InferpackError(f"bench worker {index} exited before starting", hint=f"see {logs[index]}")
        if event.get("event") == "ready":
            ready.add(index)
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
        proc.stdin.close()
