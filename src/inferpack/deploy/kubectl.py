"""The kubectl driver: every cluster operation is one or more kubectl command lines, built here (pure, so
tests check them) and run by `run` (which prints each command before running it).

Nothing here talks to the Kubernetes API directly: a platform team can read, copy and rerun every command.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inferpack.deploy.options import LABEL_COMPONENT, LABEL_PART_OF, LABEL_SERVER
from inferpack.deploy.render import BENCH_JOB, ROUTER
from inferpack.deploy.servers import server_object_name
from inferpack.errors import InferpackError

JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
JOB_INDEX_LABEL = "batch.kubernetes.io/job-completion-index"
# Set by the Job controller on its pods (Kubernetes 1.27+): one run's pods, not a same-named earlier run's.
JOB_UID_LABEL = "batch.kubernetes.io/controller-uid"
# `bench-3`: the load-test pod of completion index 3 (the idle test pod is `bench-0`).
_BENCH_POD = re.compile(r"^bench-(\d+)$")
# Server-side apply: no last-applied-configuration annotation (a copy of the whole object, which the
# placement ConfigMap of ~10,000 models with long ids would push over the 262,144-byte annotation limit).
# inferpack owns these objects: --force-conflicts takes fields back from hand edits, as a client-side apply
# would overwrite them.
SERVER_SIDE_APPLY = ("apply", "--server-side", "--field-manager=inferpack", "--force-conflicts")
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
    bench_namespace: str | None = None  # load tests' own namespace (None: `namespace`)

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

    def bench_base(self) -> list[str]:
        """`base()` in the load tests' namespace."""
        return Kubectl(
            self.bench_namespace or self.namespace, self.context, self.kubeconfig, self.binary
        ).base()

    @property
    def separate_bench_namespace(self) -> bool:
        """True when load tests run in a namespace of their own."""
        return self.bench_namespace is not None and self.bench_namespace != self.namespace

    def apply(
        self,
        base_dir: Path,
        *,
        server_dry_run: bool = False,
        resources: list[str] | None = None,
        waves: list[list[str]] | None = None,
    ) -> list[list[str]]:
        """Apply the rendered base without taking every copy of a model down at once.

        `resources` are the base's files (its kustomization's list) and `waves` the plan's servers in
        rollout waves (`rollout.rollout_waves`). In order: everything but the servers and the router
        (namespace, service account, budgets, policies, pre-pull); then each wave's server files, waiting
        for each of its Deployments to roll out before the next wave; then the router and its placement
        (so it routes to servers that run); then the servers a re-plan removed are deleted (by label: the
        server components whose name is not in the plan). A server-side dry run checks the whole base.
        """
        apply = [*self.base(namespaced=False), *SERVER_SIDE_APPLY]
        if server_dry_run or resources is None or waves is None:
            cmd = [*apply, "-k", str(base_dir)]
            return [[*cmd, "--dry-run=server"]] if server_dry_run else [cmd, *self._wait_all()]
        servers = {f"servers/{name}.yaml" for wave in waves for name in wave}
        router = [r for r in resources if r == "router.yaml"]
        first = [r for r in resources if r not in servers and r not in router]

        def files(names: list[str]) -> list[str]:
            return [arg for name in names for arg in ("-f", str(base_dir / name))]

        commands = [[*apply, *files(first)]] if first else []
        for wave in waves:
            commands.append([*apply, *files([f"servers/{name}.yaml" for name in wave])])
            commands += [self._rollout(f"deployment/{server_object_name(name)}") for name in wave]
        if router:
            commands += [[*apply, *files(router)], self._rollout(f"deployment/{ROUTER}")]
        kept = ",".join(sorted(name for wave in waves for name in wave))
        selector = (
            f"{LABEL_PART_OF}=inferpack,{LABEL_COMPONENT}=server,{LABEL_SERVER},{LABEL_SERVER} notin ({kept})"
        )
        commands.append(
            [
                *self.base(),
                "delete",
                "deployments,services",
                "-l",
                selector,
                "--ignore-not-found",
                "--wait=false",
            ]
        )
        return commands

    def _rollout(self, ref: str) -> list[str]:
        return [*self.base(), "rollout", "status", ref, "--timeout=30m"]

    def _wait_all(self) -> list[list[str]]:
        wait = [*self.base(), "rollout", "status", "deployment", "-l", f"{LABEL_PART_OF}=inferpack"]
        return [[*wait, "--timeout=30m"]]

    def status(self, server: str | None = None) -> list[list[str]]:
        """What is running: workloads, pods (with nodes), services, autoscalers, budgets; or, for one plan
        server, its Deployment, Service and pod, then the pod described (events say why it is not ready)."""
        if server is not None:
            selector = f"{LABEL_SERVER}={server}"
            return [
                [*self.base(), "get", "deployments,services,pods", "-l", selector, "-o", "wide"],
                [*self.base(), "describe", "pods", "-l", selector],
            ]
        selector = f"{LABEL_PART_OF}=inferpack"
        kinds = "deployments,daemonsets,jobs,services,hpa,pdb"
        commands = [
            [*self.base(), "get", kinds, "-l", selector, "-o", "wide"],
            [*self.base(), "get", "pods", "-l", selector, "-o", "wide"],
        ]
        if self.separate_bench_namespace:
            commands.append([*self.bench_base(), "get", "jobs,pods", "-l", selector, "-o", "wide"])
        return commands

    def logs(
        self,
        *,
        server: str | None = None,
        component: str = "server",
        tail: int = 200,
        follow: bool = False,
    ) -> list[list[str]]:
        """Logs of one pod (a plan server, `router`, `bench-INDEX`) or of every pod of a component (server,
        router, bench, prepull); `follow` keeps streaming them."""
        if server is not None:
            base, selector = self._target(server)
        else:
            base = self.bench_base() if component == "bench" else self.base()
            selector = f"{LABEL_COMPONENT}={component}"
        cmd = [*base, "logs", "-l", selector, "--all-containers", "--prefix", f"--tail={tail}"]
        if follow:
            cmd.append("--follow")
        return [[*cmd, "--max-log-requests=50"]]

    def _target(self, target: str) -> tuple[list[str], str]:
        """(kubectl base, label selector) of a plan server, `router` or `bench-INDEX`."""
        if target == ROUTER:
            return self.base(), f"{LABEL_COMPONENT}={ROUTER}"
        if match := _BENCH_POD.match(target):
            return self.bench_base(), f"{JOB_NAME_LABEL}={BENCH_JOB},{JOB_INDEX_LABEL}={match.group(1)}"
        return self.base(), f"{LABEL_SERVER}={target}"

    def exec_pod_lookup(self, target: str) -> list[str] | None:
        """For `bench-INDEX`: the command that names its running pod (`pod/NAME`); None for a server or
        the router, whose Deployment kubectl resolves itself."""
        if not _BENCH_POD.match(target):
            return None
        base, selector = self._target(target)
        return [*base, "get", "pods", "-l", selector, "--field-selector=status.phase=Running", "-o", "name"]

    def exec(self, target: str, command: list[str], *, tty: bool, pod: str | None = None) -> list[str]:
        """`kubectl exec` into a plan server's pod, the router, or (with `pod` from `exec_pod_lookup`) a
        load-test pod; stdin is passed (`-i`), a terminal too when there is one (`-t`)."""
        flags = ["-i", "-t"] if tty else ["-i"]
        if target == ROUTER:
            base, ref, container = self.base(), f"deployment/{ROUTER}", ROUTER
        elif _BENCH_POD.match(target):
            if pod is None:
                raise KubectlError(f"{target}: no pod name given (look it up with exec_pod_lookup)")
            base, ref, container = self.bench_base(), pod, "worker"
        else:
            base, ref, container = self.base(), f"deployment/{server_object_name(target)}", "server"
        return [*base, "exec", *flags, ref, "-c", container, "--", *command]

    def delete(self, base_dir: Path) -> list[list[str]]:
        """Delete what the base (and a load test) created; the Namespace goes last, with everything left
        (and the load tests' own namespace, when they have one)."""
        commands = [[*self.bench_base(), "delete", "job", BENCH_JOB, "--ignore-not-found"]]
        if self.separate_bench_namespace:
            commands.append(
                [*self.base(namespaced=False), "delete", "-k", str(base_dir / "bench"), "--ignore-not-found"]
            )
        commands.append([*self.base(namespaced=False), "delete", "-k", str(base_dir), "--ignore-not-found"])
        return commands

    def bench(self, base_dir: Path) -> list[list[str]]:
        """Start the load-test Job afresh (a Job's pod template is immutable); `wait_for_job` then polls
        it until it completes or fails."""
        return self._replace_job(base_dir / "bench")

    def get_secret(self, name: str) -> list[str]:
        """A Secret of the servers' namespace as JSON (to copy the token Secret to the load tests')."""
        return [*self.base(), "get", "secret", name, "-o", "json"]

    def apply_bench_file(self, path: Path) -> list[str]:
        """Apply one manifest file into the load tests' namespace."""
        return [*self.bench_base(), *SERVER_SIDE_APPLY, "-f", str(path)]

    def bench_job(self) -> list[str]:
        """The load-test Job as JSON (its uid, completions and conditions)."""
        return [*self.bench_base(), "get", "job", BENCH_JOB, "-o", "json"]

    def job_pods(self, uid: str) -> list[str]:
        """The pods of the Job with this uid (never those of an earlier run of the same name), as JSON."""
        return [*self.bench_base(), "get", "pods", "-l", f"{JOB_UID_LABEL}={uid}", "-o", "json"]

    def bench_idle(self, base_dir: Path, timeout_s: int) -> list[list[str]]:
        """Replace any load test by the idle test pod (DIR/bench-idle) and wait until it runs."""
        # The Job exists at once, its pod a moment later: wait on the Job's count of ready pods.
        ready = "--for=jsonpath={.status.ready}=1"
        wait = [*self.bench_base(), "wait", ready, f"job/{BENCH_JOB}", f"--timeout={timeout_s}s"]
        return [*self._replace_job(base_dir / "bench-idle"), wait]

    def _replace_job(self, folder: Path) -> list[list[str]]:
        return [self.bench_stop(), [*self.base(namespaced=False), *SERVER_SIDE_APPLY, "-k", str(folder)]]

    def bench_stop(self) -> list[str]:
        """Delete the load-test Job (a run or the idle pod) and wait until its pods are gone; nothing else."""
        return [
            *self.bench_base(), "delete", "job", BENCH_JOB, "--ignore-not-found",
            "--cascade=foreground", "--wait=true",
        ]  # fmt: skip

    def pod_log(self, pod: str, tail: int | None = None) -> list[str]:
        """One pod's stdout (a worker's last line is its result); `tail`: only its last lines."""
        cmd = [*self.bench_base(), "logs", pod, "-c", "worker"]
        return [*cmd, f"--tail={tail}"] if tail is not None else cmd


def secret_copy(secret: dict[str, Any], namespace: str) -> dict[str, Any]:
    """The same Secret for another namespace: its type and data only (no uid, resourceVersion, owner or
    last-applied annotation of the original), labelled as inferpack's so `k8s delete` finds it."""
    meta = secret.get("metadata", {})
    if not isinstance(secret.get("data"), dict) or "name" not in meta:
        raise KubectlError("the token Secret read back from the cluster has no name or data")
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": meta["name"],
            "namespace": namespace,
            "labels": {LABEL_PART_OF: "inferpack", LABEL_COMPONENT: "bench"},
        },
        "type": secret.get("type", "Opaque"),
        "data": secret["data"],
    }


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


def _check_binary(binary: str) -> None:
    if shutil.which(binary) is None:
        raise KubectlError(
            f"{binary} not found on PATH",
            hint="install kubectl (https://kubernetes.io/docs/tasks/tools/) or pass --kubectl PATH",
        )


def _attached_runner(cmd: list[str]) -> int:
    try:
        return subprocess.run(cmd, check=False).returncode
    except KeyboardInterrupt:  # Ctrl-C ends `logs -f` (and reached kubectl too): no traceback
        return 130


def run_attached(
    cmd: list[str],
    *,
    echo: Callable[[str], None] | None = None,
    runner: Callable[[list[str]], int] | None = None,
) -> int:
    """Run one command on this terminal (stdin, stdout and stderr passed through: `exec`, `logs -f`),
    printing it first; returns its exit status."""
    if runner is None:
        _check_binary(cmd[0])
        runner = _attached_runner
    (echo or (lambda line: print(line, file=sys.stderr)))("$ " + " ".join(cmd))
    return runner(cmd)


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
        if commands:
            _check_binary(commands[0][0])
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


def job_condition(job: dict[str, Any]) -> str | None:
    """ "Complete" or "Failed" when the Job has finished (that condition is True), else None."""
    for condition in job.get("status", {}).get("conditions") or []:
        if condition.get("type") in ("Complete", "Failed") and condition.get("status") == "True":
            return str(condition["type"])
    return None


def failed_pod(pods: dict[str, Any]) -> str | None:
    """The name of a failed pod in a `get pods -o json` listing (the first by name), else None."""
    names = sorted(
        p["metadata"]["name"] for p in pods.get("items", []) if p.get("status", {}).get("phase") == "Failed"
    )
    return names[0] if names else None


def wait_for_job(
    kubectl: Kubectl,
    timeout_s: float,
    *,
    poll_s: float = 5.0,
    runner: Runner | None = None,
    echo: Callable[[str], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    log_tail: int = 40,
) -> dict[str, Any]:
    """Poll the load-test Job until it completes (returns it as JSON). When it fails, stop at once with a
    KubectlError carrying the reason and the failing pod's last log lines; past `timeout_s`, also fail."""
    quiet = echo or (lambda _line: None)
    deadline = clock() + timeout_s
    first = True
    while True:
        job = json.loads(
            run([kubectl.bench_job()], runner=runner, echo=echo if first else quiet, capture=True)[0]
        )
        first = False
        state = job_condition(job)
        if state == "Complete":
            return dict(job)
        if state == "Failed":
            raise _job_failed(kubectl, job, runner, echo, log_tail)
        if clock() >= deadline:
            raise KubectlError(
                f"the load-test Job did not finish within {timeout_s:g}s",
                hint="see `inferpack k8s logs --component bench`; give `k8s bench` a longer --timeout",
            )
        sleep(poll_s)


def _job_failed(
    kubectl: Kubectl,
    job: dict[str, Any],
    runner: Runner | None,
    echo: Callable[[str], None] | None,
    tail: int,
) -> KubectlError:
    reason = next(
        (
            f"{c.get('reason', '')}: {c.get('message', '')}".strip(": ")
            for c in job.get("status", {}).get("conditions") or []
            if c.get("type") == "Failed"
        ),
        "",
    )
    uid = str(job.get("metadata", {}).get("uid", ""))
    pods = json.loads(run([kubectl.job_pods(uid)], runner=runner, echo=echo, capture=True)[0] or "{}")
    pod = failed_pod(pods)
    log = ""
    if pod is not None:
        try:
            log = run([kubectl.pod_log(pod, tail=tail)], runner=runner, echo=echo, capture=True)[0]
        except KubectlError as exc:
            log = f"(no log: {exc.message})"
    where = f"; pod {pod}, its last {tail} log lines:\n{log.rstrip()}" if pod else " (no failed pod found)"
    return KubectlError(
        f"the load-test Job failed ({reason or 'no reason given'}){where}",
        hint="fix it, rerun `inferpack k8s bench`; all logs: `inferpack k8s logs --component bench`",
    )
