"""The kubectl driver: every cluster operation is one or more kubectl command lines, built here (pure, so
tests check them) and run by `run` (which prints each command before running it).

Nothing here talks to the Kubernetes API directly: a platform team can read, copy and rerun every command.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from inferpack.deploy.options import LABEL_COMPONENT, LABEL_PART_OF
from inferpack.deploy.render import BENCH_JOB
from inferpack.errors import InferpackError

JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
# kubectl's own words for "there is no cluster to talk to"; mapped to one clear error.
_UNREACHABLE = (
    "unable to connect to the server",
    "connection refused",
    "was refused",
    "no such host",
    "the server could not find the requested resource",
    "no configuration has been provided",
    "couldn't get current server api group list",
    "dial tcp",
    "i/o timeout",
)
_NO_CONTEXT = ("context was not found", "does not exist in kubeconfig", "no context exists")


class KubectlError(InferpackError):
    """kubectl is missing, cannot reach the cluster, or a command it ran failed."""


@dataclass(frozen=True)
class Kubectl:
    """Command lines for one cluster context and namespace."""

    namespace: str = "inferpack"
    context: str | None = None
    kubeconfig: Path | None = None
    binary: str = "kubectl"

    def base(self, *, namespaced: bool = True) -> list[str]:
        """`kubectl [--kubeconfig F] [--context C] [--namespace N]`."""
        cmd = [self.binary]
        if self.kubeconfig is not None:
            cmd += ["--kubeconfig", str(self.kubeconfig)]
        if self.context:
            cmd += ["--context", self.context]
        if namespaced:
            cmd += ["--namespace", self.namespace]
        return cmd

    def apply(self, base_dir: Path, *, server_dry_run: bool = False) -> list[list[str]]:
        """Apply the rendered base, then wait for the router and every server to be rolled out."""
        cmd = [*self.base(namespaced=False), "apply", "-k", str(base_dir)]
        if server_dry_run:
            return [[*cmd, "--dry-run=server"]]
        wait = [*self.base(), "rollout", "status", "deployment", "-l", f"{LABEL_PART_OF}=inferpack"]
        return [cmd, [*wait, "--timeout=30m"]]

    def status(self) -> list[list[str]]:
        """What is running: workloads, pods (with nodes), services, autoscalers, budgets."""
        selector = f"{LABEL_PART_OF}=inferpack"
        kinds = "deployments,daemonsets,jobs,services,hpa,pdb"
        return [
            [*self.base(), "get", kinds, "-l", selector, "-o", "wide"],
            [*self.base(), "get", "pods", "-l", selector, "-o", "wide"],
        ]

    def logs(
        self, *, server: str | None = None, component: str = "server", tail: int = 200
    ) -> list[list[str]]:
        """Logs of one plan server, or of every pod of a component (server, router, bench)."""
        selector = f"inferpack.dev/server={server}" if server else f"{LABEL_COMPONENT}={component}"
        cmd = [*self.base(), "logs", "-l", selector, "--all-containers", "--prefix", f"--tail={tail}"]
        return [[*cmd, "--max-log-requests=50"]]

    def delete(self, base_dir: Path) -> list[list[str]]:
        """Delete what the base (and a load test) created; the Namespace goes last, with everything left."""
        return [
            [*self.base(), "delete", "job", BENCH_JOB, "--ignore-not-found"],
            [*self.base(namespaced=False), "delete", "-k", str(base_dir), "--ignore-not-found"],
        ]

    def bench(self, base_dir: Path, timeout_s: int) -> list[list[str]]:
        """Start the load-test Job afresh (a Job's pod template is immutable) and wait for it to finish."""
        return [
            [*self.base(), "delete", "job", BENCH_JOB, "--ignore-not-found", "--wait=true"],
            [*self.base(namespaced=False), "apply", "-k", str(base_dir / "bench")],
            [*self.base(), "wait", "--for=condition=complete", f"job/{BENCH_JOB}", f"--timeout={timeout_s}s"],
        ]

    def bench_pods(self) -> list[str]:
        """The load-test pods' names, one a line, in completion-index order of creation."""
        return [
            *self.base(), "get", "pods", "-l", f"{JOB_NAME_LABEL}={BENCH_JOB}",
            "-o", "jsonpath={range .items[*]}{.metadata.name}{\"\\n\"}{end}",
        ]  # fmt: skip

    def pod_log(self, pod: str) -> list[str]:
        """One pod's stdout (a worker's last line is its result)."""
        return [*self.base(), "logs", pod, "-c", "worker"]


Runner = Callable[[list[str]], "subprocess.CompletedProcess[str]"]


def _subprocess_runner(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


def explain_failure(cmd: list[str], stderr: str) -> KubectlError:
    """A kubectl failure as a KubectlError whose hint says what to do."""
    text = stderr.strip().splitlines()[-1] if stderr.strip() else "no output"
    low = stderr.lower()
    shown = " ".join(cmd)
    if any(s in low for s in _NO_CONTEXT) or ('context "' in low and "does not exist" in low):
        return KubectlError(f"`{shown}`: {text}", hint="list contexts with `kubectl config get-contexts`")
    if any(s in low for s in _UNREACHABLE):
        return KubectlError(
            f"`{shown}`: no cluster reachable ({text})",
            hint="check --context / KUBECONFIG, e.g. `aws eks update-kubeconfig --name CLUSTER`",
        )
    return KubectlError(f"`{shown}` failed: {text}")


def run(
    commands: list[list[str]],
    *,
    echo: Callable[[str], None] | None = None,
    runner: Runner | None = None,
    capture: bool = False,
) -> list[str]:
    """Run commands in order, printing each first; stop at the first failure with a KubectlError.

    Returns each command's stdout. Without `capture`, stdout is also printed as it comes back.
    """
    if runner is None:
        if commands and shutil.which(commands[0][0]) is None:
            raise KubectlError(
                f"{commands[0][0]} not found on PATH",
                hint="install kubectl (https://kubernetes.io/docs/tasks/tools/) or pass --kubectl PATH",
            )
        runner = _subprocess_runner
    say = echo or (lambda line: print(line, file=sys.stderr))
    outputs = []
    for cmd in commands:
        say("$ " + " ".join(cmd))
        proc = runner(cmd)
        if proc.returncode != 0:
            raise explain_failure(cmd, proc.stderr or proc.stdout or "")
        if not capture and proc.stdout:
            print(proc.stdout, end="" if proc.stdout.endswith("\n") else "\n")
        outputs.append(proc.stdout or "")
    return outputs
