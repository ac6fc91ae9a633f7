"""Day-to-day operations on Kubernetes: the idle test pod, stopping load tests only, load tests in their
own namespace and on their own nodes, `seq` mode through the per-server Services, and the CLI commands
(`k8s exec`, `k8s logs -f`, `k8s status SERVER`, `k8s bench --idle/--stop`) run against a stand-in kubectl
that records its argv (no API server exists here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from inferpack.deploy.eks import ClusterOptions, render_eksctl_config
from inferpack.deploy.kustomize import rendered_bench_namespace
from inferpack.deploy.options import RenderOptions
from inferpack.deploy.render import (
    render_bench_job,
    render_bench_namespace,
    render_idle_bench_job,
    render_manifests,
)
from inferpack.plan import Plan, save_plan
from inferpack.settings import ServerSettings

INFERPACK = str(Path(sys.executable).parent / "inferpack")
Manifest = dict[str, Any]


def _pod(job: Manifest) -> Manifest:
    return dict(job["spec"]["template"]["spec"])


def test_bench_namespace_and_node_selector(plan: Plan) -> None:
    options = RenderOptions(
        namespace="serving",
        bench_namespace="loadtest",
        bench_node_selector={"node.kubernetes.io/instance-type": "c7i.4xlarge"},
    )
    job = render_bench_job(options)
    assert job["metadata"]["namespace"] == "loadtest"
    pod = _pod(job)
    assert pod["nodeSelector"] == {"node.kubernetes.io/instance-type": "c7i.4xlarge"}
    # the servers' ServiceAccount lives in their namespace: the test pods use their own default, tokenless
    assert "serviceAccountName" not in pod and pod["automountServiceAccountToken"] is False
    url = pod["containers"][0]["command"][pod["containers"][0]["command"].index("--url") + 1]
    assert url == "http://router.serving.svc.cluster.local:8080"
    namespace, placement = render_bench_namespace(plan, options)
    assert namespace["kind"] == "Namespace" and namespace["metadata"]["name"] == "loadtest"
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert placement["kind"] == "ConfigMap" and placement["metadata"]["namespace"] == "loadtest"
    base = render_manifests(plan, ServerSettings(), options)
    original = next(m for m in base if m["kind"] == "ConfigMap")
    # the same plan and (fully qualified) server URLs
    assert (placement["data"], placement["binaryData"]) == (original["data"], original["binaryData"])
    netpol = next(m for m in base if m["kind"] == "NetworkPolicy")
    assert netpol["spec"]["ingress"][0]["from"][1] == {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "loadtest"}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/component": "bench"}},
    }
    # by default: the servers' namespace, the clients' ServiceAccount (no IRSA role), the system nodes,
    # nothing extra to render
    same = RenderOptions(namespace="serving")
    assert render_bench_namespace(plan, same) == []
    assert _pod(render_bench_job(same))["serviceAccountName"] == "inferpack-client"
    assert _pod(render_bench_job(same))["nodeSelector"] == {
        "inferpack.dev/role": "system",
        "kubernetes.io/arch": "amd64",
    }
    assert len(next(m for m in render_manifests(plan, ServerSettings(), same) if m["kind"] == "NetworkPolicy")[
        "spec"]["ingress"][0]["from"]) == 1  # fmt: skip


def test_idle_pod_waits_with_the_load_test_pods_access() -> None:
    options = RenderOptions(bench_workers=8, bench_idle_seconds=3600, bench_node_selector={"team": "perf"})
    idle, job = render_idle_bench_job(options), render_bench_job(options)
    assert idle["metadata"]["name"] == job["metadata"]["name"]  # `--stop` and the next run replace it
    assert (idle["spec"]["completions"], idle["spec"]["parallelism"]) == (1, 1)
    c = _pod(idle)["containers"][0]
    assert c["command"] == ["sleep", "3600"]
    assert {"name": "INFERPACK_BENCH_WORKERS", "value": "1"} in c["env"]
    assert {"name": "INFERPACK_ROUTER_URL", "value": "http://router.inferpack.svc.cluster.local:8080"} in c[
        "env"
    ]
    # same labels (the servers' NetworkPolicy admits it), mounts and nodes as the workers
    assert idle["spec"]["template"]["metadata"]["labels"] == job["spec"]["template"]["metadata"]["labels"]
    assert c["volumeMounts"] == _pod(job)["containers"][0]["volumeMounts"]
    assert _pod(idle)["nodeSelector"] == {"team": "perf"}


@pytest.mark.parametrize("args", [("--mode", "seq"), ("--mode=seq", "--users", "2")])
def test_seq_mode_visits_each_server_through_its_service(args: tuple[str, ...]) -> None:
    c = _pod(render_bench_job(RenderOptions(bench_args=args)))["containers"][0]["command"]
    assert "--url" not in c
    assert c[c.index("--endpoints") + 1] == "/etc/inferpack/placement/endpoints.json"
    assert c[c.index("--plan") + 1] == "/etc/inferpack/placement/plan.json.gz"
    other = _pod(render_bench_job(RenderOptions(bench_args=("--mode", "bmk"))))["containers"][0]["command"]
    assert "--url" in other and "--endpoints" not in other


FAKE_KUBECTL = """#!{python}
import json, os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_KUBECTL_LOG"], "a") as log:
    log.write(json.dumps(args) + "\\n")
if "get" in args and args[-2:] == ["-o", "name"]:
    print(os.environ.get("FAKE_KUBECTL_PODS", ""))
if "get" in args and args[-2:] == ["-o", "json"]:
    kind = "JOB" if "job" in args else "SECRET" if "secret" in args else "PODS_JSON"
    print(os.environ.get("FAKE_KUBECTL_" + kind, "{{}}"))
if "-f" in args and os.environ.get("FAKE_KUBECTL_FILES"):  # keep what was applied (temporary files)
    source = args[args.index("-f") + 1]
    with open(source) as f, open(os.path.join(os.environ["FAKE_KUBECTL_FILES"], "applied.json"), "w") as out:
        out.write(f.read())
if "logs" in args and os.environ.get("FAKE_KUBECTL_LOG_TEXT"):
    print(os.environ["FAKE_KUBECTL_LOG_TEXT"])
sys.exit(int(os.environ.get("FAKE_KUBECTL_EXIT", "0")) if "exec" in args else 0)
"""


@pytest.fixture
def fake_kubectl(tmp_path: Path) -> tuple[Path, Path]:
    """A kubectl stand-in that records each argv (one JSON list a line) and names one bench pod."""
    script = tmp_path / "kubectl"
    script.write_text(FAKE_KUBECTL.format(python=sys.executable))
    script.chmod(0o755)
    return script, tmp_path / "calls.jsonl"


def _cli(
    fake: tuple[Path, Path],
    *args: str,
    pods: str = "pod/inferpack-bench-0-abcde",
    exit_code: int = 0,
    extra_env: dict[str, str] | None = None,
) -> tuple[subprocess.CompletedProcess[str], list[list[str]]]:
    script, log = fake
    log.unlink(missing_ok=True)
    env = {
        **os.environ,
        **(extra_env or {}),
        "FAKE_KUBECTL_LOG": str(log),
        "FAKE_KUBECTL_PODS": pods,
        "FAKE_KUBECTL_EXIT": str(exit_code),
        "COLUMNS": "200",
    }
    proc = subprocess.run(
        [INFERPACK, "k8s", args[0], "--kubectl", str(script), *args[1:]],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        env=env,
        check=False,
    )
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return proc, calls


def test_cli_exec_runs_kubectl_exec_with_the_command_after_dashes(
    fake_kubectl: tuple[Path, Path], tmp_path: Path
) -> None:
    # the options go before `--`: everything after it is the command, its own flags included
    proc, calls = _cli(fake_kubectl, "exec", "c7i-0", "-n", "serving", "--", "ls", "-la", "/tmp")
    assert proc.returncode == 0, proc.stderr
    assert calls == [
        ["--namespace", "serving", "exec", "-i", "deployment/srv-c7i-0", "-c", "server", "--", "ls", "-la",
         "/tmp"],
    ]  # fmt: skip
    assert "$ " + str(fake_kubectl[0]) + " --namespace serving exec" in proc.stderr
    # the remote command's exit status is ours
    proc, _ = _cli(fake_kubectl, "exec", "router", "--", "false", exit_code=3)
    assert proc.returncode == 3
    # no command: a shell
    _, calls = _cli(fake_kubectl, "exec", "c7i-0")
    assert calls[0][-2:] == ["--", "bash"]
    # a bench pod: its running pod is looked up by completion index first
    _, calls = _cli(fake_kubectl, "exec", "bench-0", "--bench-namespace", "loadtest", "--", "env")
    assert calls[0][:4] == ["--namespace", "loadtest", "get", "pods"]
    assert "batch.kubernetes.io/job-completion-index=0" in calls[0][5]
    assert calls[1] == [
        "--namespace", "loadtest", "exec", "-i", "pod/inferpack-bench-0-abcde", "-c", "worker", "--", "env",
    ]  # fmt: skip
    proc, calls = _cli(fake_kubectl, "exec", "bench-0", pods="")
    assert proc.returncode == 2 and "no running pod for bench-0" in proc.stderr
    assert len(calls) == 1


def test_cli_logs_follow_status_server_and_bench_stop_idle(
    fake_kubectl: tuple[Path, Path], plan: Plan, tmp_path: Path
) -> None:
    proc, calls = _cli(fake_kubectl, "logs", "c7i-0", "-f", "--tail", "5")
    assert proc.returncode == 0, proc.stderr
    assert calls == [
        ["--namespace", "inferpack", "logs", "-l", "inferpack.dev/server=c7i-0", "--all-containers",
         "--prefix", "--tail=5", "--follow", "--max-log-requests=50"],
    ]  # fmt: skip
    _, calls = _cli(fake_kubectl, "status", "c7i-0")
    assert [c[2:4] for c in calls] == [["get", "deployments,services,pods"], ["describe", "pods"]]

    # render with a bench namespace: bench/stop/idle/delete find it in the rendered folder
    plan_file, out = tmp_path / "plan.json", tmp_path / "k8s"
    save_plan(plan, plan_file)
    render = subprocess.run(
        [
            INFERPACK, "k8s", "render", "--plan", str(plan_file), "--out", str(out), "--bench-namespace",
            "loadtest", "--bench-instance-type", "c7i.4xlarge", "--bench-node-selector", "team=perf",
            "--bench-idle-timeout", "600",
        ],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert render.returncode == 0, render.stderr
    assert rendered_bench_namespace(out) == "loadtest"
    idle = next(d for d in yaml.safe_load_all((out / "bench-idle" / "job.yaml").read_text()) if d)
    assert idle["spec"]["template"]["spec"]["nodeSelector"] == {
        "team": "perf",
        "node.kubernetes.io/instance-type": "c7i.4xlarge",
    }
    assert idle["spec"]["template"]["spec"]["containers"][0]["command"] == ["sleep", "600"]
    assert yaml.safe_load((out / "bench" / "kustomization.yaml").read_text())["resources"] == [
        "job.yaml",
        "namespace.yaml",
    ]

    proc, calls = _cli(fake_kubectl, "bench", "--stop", "--dir", str(out))
    assert proc.returncode == 0, proc.stderr
    assert calls == [
        ["--namespace", "loadtest", "delete", "job", "inferpack-bench", "--ignore-not-found",
         "--cascade=foreground", "--wait=true"],
    ]  # fmt: skip
    # --stop needs no rendered folder: the flag or -n names the namespace
    _, calls = _cli(fake_kubectl, "bench", "--stop", "--dir", str(tmp_path / "none"), "-n", "serving")
    assert calls[0][:2] == ["--namespace", "serving"]

    proc, calls = _cli(fake_kubectl, "bench", "--idle", "--dir", str(out))
    assert proc.returncode == 0, proc.stderr
    assert [c[2:4] if c[0] == "--namespace" else c[:2] for c in calls] == [
        ["delete", "job"],
        ["apply", "--server-side"],
        ["wait", "--for=jsonpath={.status.ready}=1"],
    ]
    assert calls[1][-1] == str(out / "bench-idle")
    assert "inferpack k8s exec bench-0" in proc.stderr

    _, calls = _cli(fake_kubectl, "delete", "--dir", str(out))
    assert calls[0][:2] == ["--namespace", "loadtest"]
    assert calls[1] == ["delete", "-k", str(out / "bench"), "--ignore-not-found"]
    assert calls[2] == ["delete", "-k", str(out), "--ignore-not-found"]

    both, _ = _cli(fake_kubectl, "bench", "--idle", "--stop", "--dir", str(out))
    assert both.returncode == 2


def test_eks_config_gives_load_tests_their_own_node_group(plan: Plan) -> None:
    config = render_eksctl_config(plan, ClusterOptions(bench_instance_type="c7i.4xlarge", bench_nodes=2))
    bench = next(g for g in config["managedNodeGroups"] if g["name"] == "bench")
    assert bench["instanceType"] == "c7i.4xlarge" and bench["labels"] == {"inferpack.dev/role": "bench"}
    assert (bench["desiredCapacity"], bench["minSize"], bench["maxSize"]) == (2, 0, 2)
    plain = render_eksctl_config(plan)
    assert all(g["name"] != "bench" for g in plain["managedNodeGroups"])


def test_the_real_kubectl_accepts_every_new_command_line(
    no_cluster: tuple[str, Path], tmp_path: Path
) -> None:
    """Each new command line, run by the real kubectl against a closed port, gets as far as trying to
    reach the cluster: no flag, argument or `--for` condition is refused on the client side."""
    from inferpack.deploy.kubectl import Kubectl, KubectlError, run

    kubectl, config = no_cluster
    k = Kubectl(kubeconfig=config, binary=kubectl, bench_namespace="loadtest")
    lookup = k.exec_pod_lookup("bench-2")
    assert lookup is not None
    commands = [
        k.exec("c7i-0", ["ls", "-la"], tty=False),
        k.exec("bench-2", ["sh"], tty=False, pod="pod/inferpack-bench-2-x"),
        lookup,
        *k.logs(server="c7i-0", follow=True),
        *k.status("c7i-0"),
        k.bench_stop(),
        k.bench_job(),
        k.job_pods("0b1c2d3e-uid"),
        k.pod_log("inferpack-bench-1-x", tail=40),
        k.bench_idle(tmp_path, 5)[2],
        k.apply(_tiny_base(tmp_path / "base"))[
            0
        ],  # server-side apply, its field manager and --force-conflicts
    ]
    for cmd in commands:
        with pytest.raises(KubectlError, match="no cluster reachable"):
            run([[*cmd[:1], "--request-timeout=5s", *cmd[1:]]], echo=lambda _line: None)
    # the check is real: kubectl refuses a bad flag or condition before it tries the cluster
    for bad in (
        [*k.bench_stop(), "--no-such-flag"],
        [*k.bench_idle(tmp_path, 5)[2][:-3], "--for=jsonpath={.status.ready", "job/x"],
    ):
        with pytest.raises(KubectlError) as refused:
            run([bad], echo=lambda _line: None)
        assert "no cluster reachable" not in refused.value.message


def _tiny_base(folder: Path) -> Path:
    """A kustomize folder of one object, for `apply -k` (kubectl builds it before reaching the cluster)."""
    folder.mkdir()
    (folder / "cm.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata: {a: b}\n")
    (folder / "kustomization.yaml").write_text("resources: [cm.yaml]\n")
    return folder


def test_cli_bench_fails_at_once_with_the_failing_pods_log(
    fake_kubectl: tuple[Path, Path], plan: Plan, tmp_path: Path
) -> None:
    plan_file, out = tmp_path / "plan.json", tmp_path / "k8s"
    save_plan(plan, plan_file)
    render = subprocess.run(
        [INFERPACK, "k8s", "render", "--plan", str(plan_file), "--out", str(out)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert render.returncode == 0, render.stderr
    failed = {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "too many"}
    job = {"metadata": {"uid": "u-9"}, "spec": {"completions": 4}, "status": {"conditions": [failed]}}
    pods = {"items": [{"metadata": {"name": "inferpack-bench-2-q"}, "status": {"phase": "Failed"}}]}
    env = {
        "FAKE_KUBECTL_JOB": json.dumps(job),
        "FAKE_KUBECTL_PODS_JSON": json.dumps(pods),
        "FAKE_KUBECTL_LOG_TEXT": "error: connection refused to the router",
    }
    assert yaml.safe_load((out / "bench" / "kustomization.yaml").read_text())["patches"] == [
        {"path": "start-at.yaml"}
    ]
    before = time.time()
    proc, calls = _cli(
        fake_kubectl, "bench", "--dir", str(out), "--timeout", "3600", "--start-delay", "90", extra_env=env
    )
    patch = next(d for d in yaml.safe_load_all((out / "bench" / "start-at.yaml").read_text()) if d)
    start_at = float(patch["spec"]["template"]["metadata"]["annotations"]["inferpack.dev/start-at"])
    assert before + 90 <= start_at <= time.time() + 90  # one common start, set just before the apply
    assert proc.returncode == 2
    assert "BackoffLimitExceeded" in proc.stderr and "inferpack-bench-2-q" in proc.stderr
    assert "connection refused to the router" in proc.stderr
    assert [c[2:4] if c[0] == "--namespace" else c[:2] for c in calls] == [
        ["delete", "job"],
        ["apply", "--server-side"],
        ["get", "job"],  # one poll: Failed stops it
        ["get", "pods"],
        ["logs", "inferpack-bench-2-q"],
    ]
    assert "batch.kubernetes.io/controller-uid=u-9" in calls[3]


def test_cli_bench_copies_the_token_secret_to_the_load_tests_namespace(
    fake_kubectl: tuple[Path, Path], plan: Plan, tmp_path: Path
) -> None:
    """`--auth-secret` with `--bench-namespace`: a pod cannot mount another namespace's Secret, so
    `k8s bench` copies the servers' Secret (data and type only) before starting the workers."""
    plan_file, out, kept = tmp_path / "plan.json", tmp_path / "k8s", tmp_path / "kept"
    kept.mkdir()
    save_plan(plan, plan_file)
    render = subprocess.run(
        [INFERPACK, "k8s", "render", "--plan", str(plan_file), "--out", str(out), "-n", "serving",
         "--auth-secret", "tokens", "--bench-namespace", "loadtest"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert render.returncode == 0, render.stderr
    original = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "tokens", "namespace": "serving", "uid": "x-1", "resourceVersion": "7"},
        "type": "Opaque",
        "data": {"tokens": "c2VjcmV0LTE="},
    }
    done = {"metadata": {"uid": "u-1"}, "spec": {"completions": 1}, "status": {"succeeded": 1,
            "conditions": [{"type": "Complete", "status": "True"}]}}  # fmt: skip
    env = {"FAKE_KUBECTL_SECRET": json.dumps(original), "FAKE_KUBECTL_FILES": str(kept),
           "FAKE_KUBECTL_JOB": json.dumps(done)}  # fmt: skip
    args = ("--dir", str(out), "-n", "serving", "--start-delay", "0")
    proc, calls = _cli(fake_kubectl, "bench", *args, extra_env=env)
    assert proc.returncode == 0, proc.stderr
    get, apply = calls[0], calls[1]
    assert get == ["--namespace", "serving", "get", "secret", "tokens", "-o", "json"]
    assert apply[:2] == ["--namespace", "loadtest"] and apply[2] == "apply"
    copy = json.loads((kept / "applied.json").read_text())
    assert copy["metadata"]["namespace"] == "loadtest" and "uid" not in copy["metadata"]
    assert (copy["data"], copy["type"]) == (original["data"], "Opaque")
    assert calls[2][2:4] == ["delete", "job"]  # then the Job as before
    # servers and load tests in one namespace: nothing copied
    same = tmp_path / "same"
    subprocess.run(
        [INFERPACK, "k8s", "render", "--plan", str(plan_file), "--out", str(same), "--auth-secret", "tokens"],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    proc, calls = _cli(fake_kubectl, "bench", "--dir", str(same), "--start-delay", "0", extra_env=env)
    assert proc.returncode == 0, proc.stderr
    assert not any("secret" in c for c in calls)
