"""The kubectl driver: the exact command lines, the order they run in, and the errors a missing kubectl or
an unreachable cluster give (with the real kubectl where it is installed; no API server exists here)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from inferpack.deploy.kubectl import (
    SERVER_SIDE_APPLY,
    Kubectl,
    KubectlError,
    explain_failure,
    run,
    run_attached,
    wait_for_job,
)


def test_base_flags() -> None:
    k = Kubectl(namespace="serving", context="prod-eks", kubeconfig=Path("/k/config"))
    assert k.base() == [
        "kubectl",
        "--kubeconfig",
        "/k/config",
        "--context",
        "prod-eks",
        "--namespace",
        "serving",
    ]
    assert Kubectl().base(namespaced=False) == ["kubectl"]


def test_apply_status_logs_delete_command_lines() -> None:
    k = Kubectl(namespace="serving", context="c1")
    base = Path("out/k8s")
    assert SERVER_SIDE_APPLY == ("apply", "--server-side", "--field-manager=inferpack", "--force-conflicts")
    assert k.apply(base) == [
        ["kubectl", "--context", "c1", *SERVER_SIDE_APPLY, "-k", "out/k8s"],
        [
            "kubectl", "--context", "c1", "--namespace", "serving", "rollout", "status", "deployment",
            "-l", "app.kubernetes.io/part-of=inferpack", "--timeout=30m",
        ],
    ]  # fmt: skip
    assert k.apply(base, server_dry_run=True) == [
        ["kubectl", "--context", "c1", *SERVER_SIDE_APPLY, "-k", "out/k8s", "--dry-run=server"]
    ]
    status = k.status()
    assert status[0][5:8] == ["get", "deployments,daemonsets,jobs,services,hpa,pdb", "-l"]
    assert status[1][5:7] == ["get", "pods"]
    assert "inferpack.dev/server=c7i-0" in k.logs(server="c7i-0")[0]
    assert "app.kubernetes.io/component=router" in k.logs(component="router")[0]
    assert k.delete(base) == [
        [
            "kubectl",
            "--context",
            "c1",
            "--namespace",
            "serving",
            "delete",
            "job",
            "inferpack-bench",
            "--ignore-not-found",
        ],
        ["kubectl", "--context", "c1", "delete", "-k", "out/k8s", "--ignore-not-found"],
    ]


def test_bench_replaces_the_job_then_waits() -> None:
    cmds = Kubectl(namespace="serving").bench(Path("k8s"))
    assert cmds[0] == [
        "kubectl", "--namespace", "serving", "delete", "job", "inferpack-bench",
        "--ignore-not-found", "--cascade=foreground", "--wait=true",
    ]  # fmt: skip
    assert cmds[1] == ["kubectl", *SERVER_SIDE_APPLY, "-k", "k8s/bench"]
    assert len(cmds) == 2  # then `wait_for_job` polls the Job (a failed one ends the wait at once)


def test_bench_stop_removes_only_the_job_and_its_pods() -> None:
    k = Kubectl(namespace="serving", context="c1")
    assert k.bench_stop() == [
        "kubectl", "--context", "c1", "--namespace", "serving", "delete", "job", "inferpack-bench",
        "--ignore-not-found", "--cascade=foreground", "--wait=true",
    ]  # fmt: skip
    # the base (servers, router, namespace) is never named: `delete -k` is only in `delete`
    assert "-k" not in k.bench_stop()


def test_bench_idle_replaces_the_job_by_the_waiting_pod() -> None:
    cmds = Kubectl(namespace="serving").bench_idle(Path("k8s"), 300)
    assert cmds[0] == Kubectl(namespace="serving").bench_stop()
    assert cmds[1] == ["kubectl", *SERVER_SIDE_APPLY, "-k", "k8s/bench-idle"]
    assert cmds[2] == [
        "kubectl", "--namespace", "serving", "wait", "--for=jsonpath={.status.ready}=1",
        "job/inferpack-bench", "--timeout=300s",
    ]  # fmt: skip


def test_a_bench_namespace_of_its_own() -> None:
    k = Kubectl(namespace="serving", bench_namespace="loadtest")
    assert k.bench_stop()[1:3] == ["--namespace", "loadtest"]
    run_cmds = k.bench(Path("k8s"))
    assert run_cmds[0][1:3] == ["--namespace", "loadtest"] and k.bench_job()[1:3] == [
        "--namespace",
        "loadtest",
    ]
    assert k.job_pods("u")[1:3] == ["--namespace", "loadtest"]
    assert k.pod_log("p-0")[1:3] == ["--namespace", "loadtest"]
    assert k.logs(component="bench")[0][1:3] == ["--namespace", "loadtest"]
    assert k.logs(component="router")[0][1:3] == ["--namespace", "serving"]
    # delete: the Job, then the bench folder (its Namespace and placement copy), then the base
    assert k.delete(Path("k8s")) == [
        ["kubectl", "--namespace", "loadtest", "delete", "job", "inferpack-bench", "--ignore-not-found"],
        ["kubectl", "delete", "-k", "k8s/bench", "--ignore-not-found"],
        ["kubectl", "delete", "-k", "k8s", "--ignore-not-found"],
    ]
    assert k.status()[-1] == [
        "kubectl", "--namespace", "loadtest", "get", "jobs,pods", "-l", "app.kubernetes.io/part-of=inferpack",
        "-o", "wide",
    ]  # fmt: skip
    same = Kubectl(namespace="serving", bench_namespace="serving")
    assert len(same.delete(Path("k8s"))) == 2 and len(same.status()) == 2


def test_exec_into_a_server_the_router_or_a_bench_pod() -> None:
    k = Kubectl(namespace="serving", context="c1")
    assert k.exec("c7i-0", ["bash"], tty=True) == [
        "kubectl", "--context", "c1", "--namespace", "serving", "exec", "-i", "-t",
        "deployment/srv-c7i-0", "-c", "server", "--", "bash",
    ]  # fmt: skip
    assert k.exec_pod_lookup("c7i-0") is None and k.exec_pod_lookup("router") is None
    assert k.exec("router", ["ls", "/tmp"], tty=False)[5:] == [
        "exec", "-i", "deployment/router", "-c", "router", "--", "ls", "/tmp",
    ]  # fmt: skip
    lookup = k.exec_pod_lookup("bench-3")
    assert lookup == [
        "kubectl", "--context", "c1", "--namespace", "serving", "get", "pods", "-l",
        "batch.kubernetes.io/job-name=inferpack-bench,batch.kubernetes.io/job-completion-index=3",
        "--field-selector=status.phase=Running", "-o", "name",
    ]  # fmt: skip
    assert k.exec("bench-3", ["sh"], tty=False, pod="pod/inferpack-bench-3-x7")[5:] == [
        "exec", "-i", "pod/inferpack-bench-3-x7", "-c", "worker", "--", "sh",
    ]  # fmt: skip
    with pytest.raises(KubectlError):
        k.exec("bench-3", ["sh"], tty=False)


def test_logs_follow_one_target_and_status_of_one_server() -> None:
    k = Kubectl(namespace="serving")
    follow = k.logs(server="c7i-0", follow=True, tail=20)[0]
    assert follow == [
        "kubectl", "--namespace", "serving", "logs", "-l", "inferpack.dev/server=c7i-0", "--all-containers",
        "--prefix", "--tail=20", "--follow", "--max-log-requests=50",
    ]  # fmt: skip
    assert "--follow" not in k.logs(server="c7i-0")[0]
    assert "app.kubernetes.io/component=router" in k.logs(server="router")[0]
    bench = k.logs(server="bench-1")[0]
    assert "batch.kubernetes.io/job-name=inferpack-bench,batch.kubernetes.io/job-completion-index=1" in bench
    assert k.status("c7i-0") == [
        [
            "kubectl", "--namespace", "serving", "get", "deployments,services,pods",
            "-l", "inferpack.dev/server=c7i-0", "-o", "wide",
        ],
        ["kubectl", "--namespace", "serving", "describe", "pods", "-l", "inferpack.dev/server=c7i-0"],
    ]  # fmt: skip


def test_run_attached_passes_the_terminal_and_the_exit_status() -> None:
    seen: list[list[str]] = []
    echoed: list[str] = []

    def runner(cmd: list[str]) -> int:
        seen.append(cmd)
        return 7

    assert run_attached(["kubectl", "exec", "x"], echo=echoed.append, runner=runner) == 7
    assert seen == [["kubectl", "exec", "x"]] and echoed == ["$ kubectl exec x"]
    with pytest.raises(KubectlError, match="not found on PATH"):
        run_attached(["/nonexistent/kubectl", "exec", "x"])


class FakeKubectl:
    """Records what run() asks for and answers from a script (no cluster exists here)."""

    def __init__(self, answers: list[tuple[int, str, str]]) -> None:
        self.answers = answers
        self.calls: list[list[str]] = []

    def __call__(self, cmd: list[str]) -> subprocess.CompletedProcess[str]:
        self.calls.append(cmd)
        rc, out, err = self.answers.pop(0)
        return subprocess.CompletedProcess(cmd, rc, out, err)


def test_run_prints_each_command_and_stops_at_the_first_failure(capsys: pytest.CaptureFixture[str]) -> None:
    fake = FakeKubectl([(0, "ok\n", ""), (1, "", "Error from server (Forbidden): nope"), (0, "", "")])
    echoed: list[str] = []
    cmds = [["kubectl", "a"], ["kubectl", "b"], ["kubectl", "c"]]
    with pytest.raises(KubectlError, match="Forbidden"):
        run(cmds, runner=fake, echo=echoed.append)
    assert fake.calls == cmds[:2]
    assert echoed == ["$ kubectl a", "$ kubectl b"]
    assert capsys.readouterr().out == "ok\n"


def test_failures_are_explained() -> None:
    unreachable = explain_failure(
        ["kubectl", "get", "pods"], "The connection to the server localhost:8080 was refused"
    )
    assert (
        "no cluster reachable" in unreachable.message and unreachable.hint and "context" in unreachable.hint
    )
    no_ctx = explain_failure(["kubectl"], 'error: context "x" does not exist in kubeconfig')
    assert no_ctx.hint == "list contexts with `kubectl config get-contexts`"


def test_missing_kubectl_is_a_clear_error() -> None:
    with pytest.raises(KubectlError, match="not found on PATH"):
        run([["/nonexistent/kubectl", "get", "pods"]])


def test_real_kubectl_against_no_cluster(no_cluster: tuple[str, Path]) -> None:
    """The real kubectl, pointed at a closed loopback port: the driver reports 'no cluster reachable'."""
    kubectl, config = no_cluster
    k = Kubectl(context="nowhere", kubeconfig=config, binary=kubectl)
    with pytest.raises(KubectlError, match="no cluster reachable"):
        run([[*k.status()[0], "--request-timeout=5s"]], echo=lambda _line: None)
    with pytest.raises(KubectlError) as missing:
        run(
            [Kubectl(context="absent", kubeconfig=config, binary=kubectl).status()[0]],
            echo=lambda _line: None,
        )
    assert missing.value.hint == "list contexts with `kubectl config get-contexts`"


def _job(condition: str | None, reason: str = "") -> str:
    conditions = (
        [{"type": condition, "status": "True", "reason": reason, "message": "m"}] if condition else []
    )
    return json.dumps(
        {"metadata": {"uid": "uid-7"}, "spec": {"completions": 2}, "status": {"conditions": conditions}}
    )


def test_wait_for_job_polls_until_complete_with_an_injected_clock() -> None:
    states = iter([_job(None), _job(None), _job("Complete")])
    calls: list[list[str]] = []
    slept: list[float] = []

    def runner(cmd: list[str]) -> subprocess.CompletedProcess[str]:
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, next(states), "")

    k = Kubectl(namespace="serving")
    job = wait_for_job(
        k, 600, poll_s=5, runner=runner, echo=lambda _l: None, clock=lambda: 0.0, sleep=slept.append
    )
    assert job["metadata"]["uid"] == "uid-7"
    assert calls == [k.bench_job()] * 3
    assert calls[0] == ["kubectl", "--namespace", "serving", "get", "job", "inferpack-bench", "-o", "json"]
    assert slept == [5, 5]


def test_a_failed_job_stops_the_wait_at_once_with_the_failing_pods_log() -> None:
    pods = {
        "items": [
            {"metadata": {"name": "inferpack-bench-0-a"}, "status": {"phase": "Succeeded"}},
            {"metadata": {"name": "inferpack-bench-1-b"}, "status": {"phase": "Failed"}},
        ]
    }
    calls: list[list[str]] = []

    def runner(cmd: list[str]) -> subprocess.CompletedProcess[str]:
        calls.append(cmd)
        if "job" in cmd:
            return subprocess.CompletedProcess(cmd, 0, _job("Failed", "BackoffLimitExceeded"), "")
        if "pods" in cmd:
            return subprocess.CompletedProcess(cmd, 0, json.dumps(pods), "")
        return subprocess.CompletedProcess(cmd, 0, "Traceback\nConfigError: bad --rate\n", "")

    k = Kubectl(namespace="serving")
    slept: list[float] = []
    with pytest.raises(KubectlError) as failed:
        wait_for_job(k, 3600, runner=runner, echo=lambda _l: None, clock=lambda: 0.0, sleep=slept.append)
    assert slept == []  # not one poll more
    assert calls == [
        k.bench_job(),
        ["kubectl", "--namespace", "serving", "get", "pods", "-l", "batch.kubernetes.io/controller-uid=uid-7",
         "-o", "json"],
        ["kubectl", "--namespace", "serving", "logs", "inferpack-bench-1-b", "-c", "worker", "--tail=40"],
    ]  # fmt: skip
    message = failed.value.message
    assert "BackoffLimitExceeded" in message and "inferpack-bench-1-b" in message
    assert "ConfigError: bad --rate" in message


def test_wait_for_job_gives_up_at_the_timeout() -> None:
    now = [0.0]

    def runner(cmd: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(cmd, 0, _job(None), "")

    def sleep(seconds: float) -> None:
        now[0] += seconds

    with pytest.raises(KubectlError, match="did not finish within 12s"):
        wait_for_job(
            Kubectl(), 12, poll_s=5, runner=runner, echo=lambda _l: None, clock=lambda: now[0], sleep=sleep
        )
    assert now[0] == 15
