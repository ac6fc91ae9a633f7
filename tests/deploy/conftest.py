"""A plan of mixed instance families (x86 CPU, Graviton, GPU, Neuron) shared by the deploy tests."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest

from inferpack.plan import Plan, Resources, ServerGroup, ServerPlan


def mixed_plan() -> Plan:
    """Four groups, seven servers; model m-hot has three copies on three groups."""
    return Plan(
        created_by="test",
        repository="s3://models-bucket/prod/repo",
        groups=[
            ServerGroup(
                name="c7i",
                instance_type="c7i.2xlarge",
                resources=Resources(cpu=7.5, memory_mb=14000),
                price_per_hour=0.357,
                servers=[
                    ServerPlan(name="c7i-0", models=["m-hot", "m-1", "m-2"]),
                    ServerPlan(name="c7i-1", models=["m-3", "m-4"]),
                ],
            ),
            ServerGroup(
                name="c7g",
                instance_type="c7g.xlarge",
                architecture="arm64",
                resources=Resources(cpu=3.5, memory_mb=7000),
                servers=[
                    ServerPlan(name="c7g-0", models=["m-hot", "m-5"]),
                    ServerPlan(name="c7g-1", models=["m-6"]),
                ],
            ),
            ServerGroup(
                name="g5",
                instance_type="g5.xlarge",
                target="cuda",
                resources=Resources(cpu=3, memory_mb=14000, accelerators=1, accelerator_memory_mb=24000),
                servers=[ServerPlan(name="g5-0", models=["m-hot", "m-big"])],
            ),
            ServerGroup(
                name="inf2",
                instance_type="inf2.xlarge",
                target="neuron",
                resources=Resources(cpu=3, memory_mb=14000, accelerators=1),
                servers=[
                    ServerPlan(name="inf2-0", models=["m-7"]),
                    ServerPlan(name="inf2-1", models=["m-7"]),
                ],
            ),
        ],
    )


@pytest.fixture
def plan() -> Plan:
    """The mixed plan."""
    return mixed_plan()


@pytest.fixture
def no_cluster(tmp_path: Path) -> tuple[str, Path]:
    """(the real kubectl, a kubeconfig whose only context `nowhere` points at a closed loopback port):
    kubectl then parses a command fully and fails only when it reaches for the cluster."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed here")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    config = tmp_path / "kubeconfig"
    config.write_text(
        f"""apiVersion: v1
kind: Config
clusters: [{{name: none, cluster: {{server: "https://127.0.0.1:{port}", insecure-skip-tls-verify: true}}}}]
users: [{{name: u, user: {{token: t}}}}]
contexts: [{{name: nowhere, context: {{cluster: none, user: u}}}}]
current-context: nowhere
"""
    )
    return kubectl, config
