"""`inferpack k8s profile-job`: a Job that profiles one node of a CPU family, valid against the real
Kubernetes schemas, whose command the real CLI accepts, placed on the family's nodes; accelerator
families are refused (the profiler times CPUs only)."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from tests.deploy.test_commands_contract import parse
from typer.testing import CliRunner

from inferpack.cli import app
from inferpack.deploy.options import RenderOptions
from inferpack.deploy.profilejob import render_profile_job
from inferpack.errors import ConfigError
from inferpack.planner.catalog import load_catalog
from inferpack.planner.problem import PlanOptions
from inferpack.planner.solve import group_resources


@pytest.mark.parametrize("name", ["c6i.2xlarge", "c7g.xlarge"])
@pytest.mark.parametrize("version", ["1.29.0", "1.33.0"])
def test_the_profile_job_validates_and_runs_the_profile_command(name: str, version: str) -> None:
    inst = load_catalog().get(name)
    options = RenderOptions(image="registry/inferpack:1", s3_endpoint_url="http://minio:9000")
    job = render_profile_job(
        inst, group_resources(inst, PlanOptions()), "s3://b/repo", options, ("--repeats", "5")
    )
    kubernetes_validate.validate(job, version, strict=True)
    spec = job["spec"]["template"]["spec"]
    assert spec["nodeSelector"]["node.kubernetes.io/instance-type"] == name
    params = parse(spec["containers"][0]["command"]).params
    assert params["repository"] == "s3://b/repo" and str(params["out"]) == "-"
    assert params["instance_type"] == [f"{inst.family}.*"] and params["repeats"] == 5
    # thread counts up to the physical cores (c6i.2xlarge: 8 vCPUs = 4 cores; c7g.xlarge: 4 cores)
    assert params["threads"] == "1,2,4"


def test_accelerator_families_are_refused() -> None:
    inst = load_catalog().get("g5.xlarge")
    with pytest.raises(ConfigError, match="measures CPU latencies only"):
        render_profile_job(inst, group_resources(inst, PlanOptions()), "s3://b/repo", RenderOptions())


def test_the_cli_writes_the_job(tmp_path: Path) -> None:
    out = tmp_path / "job.yaml"
    argv = ["k8s", "profile-job", "--instance-type", "c7g.xlarge", "--repository", "s3://b/r", "-o", str(out)]
    result = CliRunner().invoke(app, [*argv, "--profile-arg=--model-class", "--profile-arg=bert-base"])
    assert result.exit_code == 0, result.output
    job = yaml.safe_load(out.read_text())
    kubernetes_validate.validate(job, "1.33.0", strict=True)
    assert job["spec"]["template"]["spec"]["containers"][0]["command"][-2:] == ["--model-class", "bert-base"]
