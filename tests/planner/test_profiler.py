"""The profiler: grouping by architecture, memory from the second model, the file it writes, and one
real (small) measurement of the demo MiniLM models that the planner then uses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from inferpack.cli import app
from inferpack.plan import load_plan
from inferpack.planner.overhead import overheads_for_repository
from inferpack.planner.profiler import (
    ProfileRequest,
    group_by_architecture,
    profile_repository,
    write_profile,
)
from inferpack.planner.profiles import load_profiles
from inferpack.repository.local import open_repository

runner = CliRunner()


def test_models_of_one_shape_are_measured_once(demo_repo: Path) -> None:
    repo = open_repository(demo_repo)
    groups = group_by_architecture(repo, repo.model_ids())
    # All demo models share the MiniLM shape (heads differ by task, weights by model).
    assert len(groups) == 1
    (ids,) = groups.values()
    assert set(ids) == set(repo.model_ids())


def test_real_profile_skips_the_broken_model_and_feeds_the_planner(demo_repo: Path, tmp_path: Path) -> None:
    repo = open_repository(demo_repo)
    request = ProfileRequest(batch_sizes=[1, 2], threads=[1], dtypes=["fp32"], repeats=1)
    profile, failed = profile_repository(repo, repo.model_ids(), request, when="test")
    assert list(failed) == ["broken-0000"]  # sorted first; the next two models stand in for it
    (prof,) = profile.profiles
    assert prof.instance_types == ["local"] and not prof.estimated
    # each point twice: on the eager forward, and on the graph the server traces a hot model into
    assert [(p.batch_size, p.threads, p.traced) for p in prof.points] == [
        (1, 1, False),
        (2, 1, False),
        (1, 1, True),
        (2, 1, True),
    ]
    assert prof.traced_mb["fp32"] > 0
    assert all(p.latency_ms > 0 for p in prof.points)
    assert prof.resident_mb >= 1 and prof.cold_load_s > 0 and prof.server_overhead_mb > 0
    assert prof.peak_throughput_per_core is not None and prof.peak_throughput_per_core > 0
    assert prof.hardware.cores >= 1 and prof.hardware.torch_version
    assert "second model's RSS delta" in prof.source  # the marginal memory of one more model

    path = tmp_path / "profile.json"
    write_profile(profile, path)
    merged = load_profiles([path], use_reference=False)
    assert merged.lookup(prof.model_class, "local") is not None

    catalog = tmp_path / "local.json"
    local = {"name": "local", "vcpus": 2, "memory_mb": 24576, "price_per_hour": 1.0}
    catalog.write_text(json.dumps({"instances": [local]}))
    out = tmp_path / "plan.json"
    args = ["plan", "--repository", str(demo_repo), "--profiles", str(path), "--no-reference-profiles"]
    args += ["--catalog", str(catalog), "--instance-types", "local", "--model-class", prof.model_class]
    args += ["--rate-rps", "0.5", "--slo-p90-ms", "5000", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    plan = load_plan(out)
    plan.validate_against(repo.model_ids())  # the plan reads the repository: the broken model is in it
    assert {g.instance_type for g in plan.groups} == {"local"}


def test_profile_cli_rejects_unknown_models_and_dtypes(demo_repo: Path) -> None:
    result = runner.invoke(app, ["profile", "--repository", str(demo_repo), "--models", "nope"])
    assert result.exception is not None and "not in" in str(result.exception)
    result = runner.invoke(app, ["profile", "--repository", str(demo_repo), "--dtypes", "int4"])
    assert result.exception is not None and "--dtypes" in str(result.exception)


@pytest.mark.parametrize("flag", ["--batch-sizes", "--threads"])
def test_profile_cli_rejects_bad_integer_lists(demo_repo: Path, flag: str) -> None:
    result = runner.invoke(app, ["profile", "--repository", str(demo_repo), flag, "0,x"])
    assert result.exception is not None and flag in str(result.exception)


@pytest.mark.slow
def test_profile_to_stdout_prints_the_profile_alone_in_the_class_asked_for(demo_repo: Path) -> None:
    """`--out -` (the Kubernetes profile Job's log is the file) and `--model-class` (measured figures
    replace the reference ones of that class for the named family)."""
    args = ["profile", "--repository", str(demo_repo), "--models", "qa-0000,qa-0001"]
    args += ["--batch-sizes", "1", "--threads", "1", "--repeats", "1", "--instance-type", "c7g.*"]
    result = runner.invoke(app, [*args, "--model-class", "minilm-l6", "--out", "-", "--no-server-overhead"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    (prof,) = data["profiles"]
    assert prof["model_class"] == "minilm-l6" and prof["instance_types"] == ["c7g.*"]
    assert prof["points"][0]["source"].startswith("measured: ")
    (cls,) = data["model_classes"]
    assert (cls["layers"], cls["hidden"], cls["intermediate"]) == (6, 384, 1536)  # FLOPs per request known


@pytest.mark.slow
def test_request_overhead_is_measured_through_a_real_server(demo_repo: Path, tmp_path: Path) -> None:
    # A real `inferpack serve` subprocess on a free port holding the models that loaded (the broken one is
    # left out), timed under Poisson load, the bare forward timed in this process around the load; the
    # profile named by --model-class still finds its models.
    repo = open_repository(demo_repo)
    ids = ["broken-0000", "qa-0000", "qa-0001"]
    request = ProfileRequest(batch_sizes=[1], threads=[1], dtypes=["fp32"], repeats=5, model_class="minilm")
    profile, failed = profile_repository(repo, ids, request, when="test")
    assert "broken-0000" in failed
    out = overheads_for_repository(
        profile, demo_repo, repo, ids, failed, requests=20, log_dir=tmp_path, utilisation=0.2
    )
    (prof,) = out.profiles
    assert prof.model_class == "minilm"
    assert prof.request_overhead_ms is not None and prof.request_overhead_ms >= 0
    assert prof.request_overhead_p90_ms is not None
    assert "through `inferpack serve` (2 model(s)" in prof.source and "around the load" in prof.source
    assert prof.points[0].latency_p90_ms is not None
    assert prof.points[0].latency_p90_ms >= prof.points[0].latency_ms
    assert (tmp_path / "profile-server-minilm.log").exists()
