"""Starting, probing and stopping the fleet's processes: command lines, environments, logs, signals."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import httpx
import psutil

from inferpack.plan import Execution


def python_cli() -> list[str]:
    """How to run the inferpack CLI with this interpreter (works without the entry point on PATH)."""
    return [sys.executable, "-m", "inferpack.cli"]


def server_command(
    *,
    repository: str,
    models: list[str] | None,
    port: int,
    threads: int | None,
    device: str | None = None,
    config: Path | None = None,
    log_level: str = "info",
    extra_args: Sequence[str] = (),
    execution: Execution | None = None,
    latency_objective_ms: float | None = None,
    memory_budget_mb: float | None = None,
    host: str = "127.0.0.1",
    cli: Sequence[str] | None = None,
) -> list[str]:
    """argv of one server process on `host`:`port` holding `models` (None: every model of the repository)
    with `threads` inference threads (None: the server's default) on `device` (None: the server's default);
    `execution` (a plan group's) sets every costed setting, threads, device and engine included;
    `latency_objective_ms` (the plan's, `Plan.server_objective_ms`) the default deadline;
    `memory_budget_mb` a budget over the configured one (`plan.traced_memory_budget_mb`); `extra_args` are
    more `serve` flags; `cli` is how inferpack is invoked (default: `python_cli()`)."""
    if execution is not None:
        threads, device = execution.inference_threads, execution.device
    cmd = [*(python_cli() if cli is None else cli), "serve", "--repository", repository]
    if models is not None:
        cmd += ["--models", ",".join(models)]
    cmd += ["--host", host, "--port", str(port)]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    if device is not None:
        cmd += ["--device", device]
    if execution is not None:
        cmd += ["--intra-op-threads", str(execution.intra_op_threads), "--dtype", execution.dtype]
        cmd += ["--engine", execution.engine]
        fields = execution.server_fields()
        if "trace_after_batches" in fields:  # traced exactly where the plan costed traced graphs
            cmd += ["--trace-after-batches", str(fields["trace_after_batches"])]
        if fields.get("pack_weights"):  # over the packed weights the profile timed
            cmd += ["--pack-weights"]
        cmd += [
            "--max-batch-size",
            str(execution.max_batch_size),
            "--max-batch-latency-ms",  # none: the plan costed batches up to the size
            "0",
            "--max-wait-ms",
            f"{execution.max_wait_ms:g}",
        ]
    if memory_budget_mb is not None:
        cmd += ["--memory-budget-mb", f"{memory_budget_mb:g}"]
    if latency_objective_ms is not None:
        cmd += ["--latency-objective-ms", str(latency_objective_ms)]  # exact: it is the deadline
    cmd += ["--log-level", log_level]
    if config is not None:
        cmd += ["--config", str(config)]
    return [*cmd, *extra_args]


def router_command(
    *,
    plan: Path,
    endpoints: Path,
    port: int,
    upstream_timeout_s: float,
    log_level: str = "info",
    host: str = "127.0.0.1",
    cli: Sequence[str] | None = None,
    config: Path | None = None,
) -> list[str]:
    """argv of the router process (the same command a Kubernetes router pod runs); `config` carries the
    [router] settings (deadlines, ejection, probes) and the servers' auth settings, which it checks too."""
    cmd = [
        *(python_cli() if cli is None else cli),
        "router",
        "--plan", str(plan),
        "--endpoints", str(endpoints),
        "--host", host,
        "--port", str(port),
        "--upstream-timeout", f"{upstream_timeout_s:g}",
        "--log-level", log_level,
    ]  # fmt: skip
    return cmd if config is None else [*cmd, "--config", str(config)]


def child_env(threads: int | None = None, intra_op_threads: int = 1) -> dict[str, str]:
    """Environment of a child: offline model loading, unbuffered logs, and thread pools sized to the split
    (libraries that read these size their pools by core count otherwise, and servers would fight):
    `intra_op_threads` per forward when the server's threads are set."""
    env = dict(os.environ)
    env.update({"PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(intra_op_threads)
        env["MKL_NUM_THREADS"] = str(intra_op_threads)
    return env


def spawn(
    cmd: list[str], log_path: Path, env: dict[str, str], *, new_session: bool = False
) -> subprocess.Popen[bytes]:
    """Start `cmd` with stdout and stderr appended to `log_path` (a header line marks each start)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        log.write(f"==> starting: {' '.join(cmd)}\n".encode())
        log.flush()
        return subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=new_session,
        )


def probe_ready(url: str, timeout_s: float = 0.5) -> bool:
    """True when `url`/v2/health/ready answers 200 (False on any failure)."""
    return probe_readiness(url, timeout_s)[0]


def probe_readiness(url: str, timeout_s: float = 0.5) -> tuple[bool, dict[str, str]]:
    """(ready, failed models): whether `url`/v2/health/ready answers 200, and the models (id -> reason)
    a not-ready server says it must hold but failed to load; those never become ready on their own."""
    try:
        r = httpx.get(f"{url}/v2/health/ready", timeout=timeout_s, trust_env=False)
    except httpx.HTTPError:
        return False, {}
    if r.status_code == 200:
        return True, {}
    try:
        body = r.json()
    except ValueError:
        return False, {}
    if not isinstance(body, dict):
        return False, {}
    failed = body.get("failed_models")
    if isinstance(failed, dict):
        return False, {str(k): str(v) for k, v in failed.items()}
    hidden = body.get("failed_count")  # with auth on, a probe without the metrics token gets a count
    if isinstance(hidden, int) and hidden > 0:
        return False, {f"({hidden} not named)": "the server names them to the metrics token only"}
    return False, {}


def failed_models_message(name: str, failed: dict[str, str]) -> str:
    """One line naming the models a server could not load, with the first reason."""
    first = next(iter(failed.values()), "")
    return f"{name} cannot load required model(s) {', '.join(sorted(failed))}: {first}"


def wait_ready(url: str, proc: subprocess.Popen[bytes] | None = None, timeout_s: float = 120.0) -> None:
    """Poll `url` until it is ready; RuntimeError when `proc` exits first or the time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        ok, failed = probe_readiness(url)
        if ok:
            return
        if failed:
            raise RuntimeError(failed_models_message(f"the server at {url}", failed))
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(
                f"the server at {url} exited with status {proc.returncode} before it was ready"
            )
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server at {url} was not ready within {timeout_s:g} s")
        time.sleep(0.1)


def free_port() -> int:
    """A port free on loopback right now (the OS picks it). Another process may take it before we bind;
    the caller's start-up check catches that."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def port_in_use(port: int) -> bool:
    """True when something listens on loopback `port`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def terminate(procs: Iterable[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    """SIGTERM every process (they drain), wait up to `timeout_s`, SIGKILL the rest; returns the killed."""
    alive: list[psutil.Process] = []
    for proc in procs:
        try:
            proc.send_signal(signal.SIGTERM)
            alive.append(proc)
        except psutil.NoSuchProcess:
            continue
    _, stubborn = psutil.wait_procs(alive, timeout=timeout_s)
    for proc in stubborn:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(stubborn, timeout=5.0)
    return list(stubborn)


def tail(path: Path, lines: int = 40) -> str:
    """The last `lines` lines of a text file ('' when it does not exist)."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            data = f.read()
    except FileNotFoundError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


def metric_sum(text: str, name: str, labels: Mapping[str, str] | None = None) -> float:
    """Sum of every sample of a Prometheus metric in an exposition text: all label sets, or only those
    that include every `labels` pair."""
    total = 0.0
    prefix_braced, prefix_plain = name + "{", name + " "
    wanted = [f'{key}="{value}"' for key, value in (labels or {}).items()]
    for line in text.splitlines():
        if not line.startswith((prefix_braced, prefix_plain)):
            continue
        if wanted:
            label_text = line[len(name) :].partition("}")[0]
            if not all(pair in label_text.lstrip("{").split(",") for pair in wanted):
                continue
        try:
            total += float(line.rsplit(" ", 1)[1])
        except (IndexError, ValueError):
            continue
    return total


def scrape_requests(url: str, metric: str, timeout_s: float = 1.0, token: str | None = None) -> float | None:
    """Sum of a request counter from `url`/metrics (sending `token`, the metrics or admin token, when
    given), or None when the process does not answer it."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        resp = httpx.get(f"{url}/metrics", timeout=timeout_s, trust_env=False, headers=headers)
    except httpx.HTTPError:
        return None
    return metric_sum(resp.text, metric) if resp.status_code == 200 else None
