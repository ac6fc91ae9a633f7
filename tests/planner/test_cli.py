from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from inferpack.cli import app
from inferpack.errors import ConfigError, PlanError
from inferpack.plan import load_plan
from inferpack.planner.inputs import read_models_csv, read_repository
from inferpack.planner.naive import SIMPLE_SERVER_OVERHEAD_MB, simple_plan, sized_memory_mb
from inferpack.repository.manifest import Footprint, Manifest, write_manifest

runner = CliRunner()


def _csv(path: Path, n: int) -> Path:
    lines = ["id,memory_mb,rate_rps"] + [f"model-{i},{440 + i},{3.0 / (i + 1):.4f}" for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _version(folder: Path, *, weights_bytes: int = 0, resident_mb: float | None = None) -> None:
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"\0" * weights_bytes)
    footprint = (
        Footprint(resident_mb=resident_mb, load_seconds=0.1, measured_on="test") if resident_mb else None
    )
    manifest = Manifest(format="safetensors", task="feature-extraction", weights="model.safetensors")
    write_manifest(folder / "manifest.json", manifest.model_copy(update={"footprint": footprint}))


def _repo(root: Path) -> Path:
    _version(root / "alpha" / "1", weights_bytes=1)
    _version(root / "alpha" / "2", resident_mb=321.5)
    _version(root / "beta" / "1", weights_bytes=10 * 2**20)
    _version(root / "_shared" / "1")
    _version(root / ".hidden" / "1")
    _version(root / "a..b" / "1")
    (root / "empty").mkdir()
    (root / "no-manifest" / "1").mkdir(parents=True)
    return root


def test_plan_from_csv_writes_a_valid_plan_and_reports_gap_and_naive(tmp_path: Path) -> None:
    out = tmp_path / "plan.json"
    result = runner.invoke(app, ["plan", "--models", str(_csv(tmp_path / "m.csv", 60)), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "lower bound" in result.output and "naive packing" in result.output
    plan = load_plan(out)
    plan.validate_against([f"model-{i}" for i in range(60)])
    assert plan.cost_per_hour is not None and plan.lower_bound_per_hour is not None
    assert plan.lower_bound_per_hour <= plan.cost_per_hour + 1e-9
    assert plan.metadata["solve_time_s"] >= 0
    assert all(g.price_per_hour is not None and g.instance_type != "local" for g in plan.groups)


def test_plan_milp_with_copies_and_allowed_types(tmp_path: Path) -> None:
    out = tmp_path / "plan.json"
    args = ["plan", "--models", str(_csv(tmp_path / "m.csv", 6)), "--out", str(out), "--method", "milp"]
    args += ["--min-copies", "2", "--instance-types", "c6i.*,c7g.*", "--slo-p90-ms", "300"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    plan = load_plan(out)
    assert plan.created_by == "milp"
    assert all(len(servers) == 2 for servers in plan.placement().values())
    assert all(g.instance_type.split(".")[0] in ("c6i", "c7g") for g in plan.groups)


def test_simple_plan_fills_servers_evenly_with_copies_apart(tmp_path: Path) -> None:
    out = tmp_path / "plan.json"
    args = ["plan", "--simple", "--servers", "3", "--copies", "2", "--repository", str(_repo(tmp_path / "r"))]
    result = runner.invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    plan = load_plan(out)
    assert plan.created_by == "simple"
    assert [g.instance_type for g in plan.groups] == ["local"]
    assert plan.placement() == {"alpha": ["server-0", "server-1"], "beta": ["server-0", "server-2"]}
    # sized from the models (alpha 321.5 MB measured, beta ~10 MB of weights), never the host's memory
    memory = plan.groups[0].resources.memory_mb
    assert memory == sized_memory_mb([["alpha", "beta"]], {"alpha": 321.5, "beta": 10.2})
    assert memory == 64 * -(-(SIMPLE_SERVER_OVERHEAD_MB + 331.7) * 1.25 // 64) < 2048
    assert f"{memory} MiB" in result.output


def test_simple_plan_even_counts_and_errors() -> None:
    plan = simple_plan([f"m{i}" for i in range(10)], 4, 3, cpu_per_server=0.5, memory_mb_per_server=1000)
    counts = [len(s.models) for s in plan.servers()]
    assert sum(counts) == 30 and max(counts) - min(counts) <= 1
    assert all(len(set(v)) == 3 for v in plan.placement().values())
    with pytest.raises(PlanError, match="no models"):
        simple_plan([], 2, 1, cpu_per_server=1, memory_mb_per_server=1)
    with pytest.raises(PlanError, match="memory"):
        simple_plan(["a"], 1, 1, cpu_per_server=1)


def test_simple_plan_memory_follows_the_fullest_server() -> None:
    memory = {"a": 400.0, "b": 100.0, "c": 100.0}
    plan = simple_plan(["a", "b", "c"], 2, 1, cpu_per_server=1, model_memory_mb=memory)
    assert [s.models for s in plan.servers()] == [["a", "c"], ["b"]]
    # the server holding a and c: (512 idle + 500) x 1.25 = 1265 -> 1280 MiB (64 MiB steps)
    assert plan.groups[0].resources.memory_mb == 1280


def test_simple_plan_caps_copies_at_one_per_server() -> None:
    plan = simple_plan(["a", "b"], 2, 3, cpu_per_server=1, memory_mb_per_server=1)
    assert plan.placement() == {"a": ["server-0", "server-1"], "b": ["server-0", "server-1"]}
    assert plan.metadata == {"servers": 2, "copies": 2, "copies_requested": 3}
    exact = simple_plan(["a"], 2, 2, cpu_per_server=1, memory_mb_per_server=1)
    assert "copies_requested" not in exact.metadata


def test_the_cli_says_when_copies_are_capped(tmp_path: Path) -> None:
    out = tmp_path / "plan.json"
    args = ["plan", "--simple", "--servers", "2", "--copies", "5", "--repository", str(_repo(tmp_path / "r"))]
    result = runner.invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "5 copies asked for, 2 placed" in result.output
    assert all(len(s) == 2 for s in load_plan(out).placement().values())


def test_cli_errors_are_inferpack_errors(tmp_path: Path) -> None:
    csv = _csv(tmp_path / "m.csv", 3)
    result = runner.invoke(app, ["plan", "--simple", "--models", str(csv)])
    assert isinstance(result.exception, ConfigError)
    result = runner.invoke(app, ["plan", "--models", str(csv), "--repository", str(tmp_path)])
    assert isinstance(result.exception, ConfigError)
    args = ["plan", "--models", str(csv), "--instance-types", "c5.*", "--slo-p90-ms", "5"]
    result = runner.invoke(app, args)
    assert isinstance(result.exception, PlanError)


def test_repository_reading_uses_manifest_footprint_else_file_size(tmp_path: Path) -> None:
    models = read_repository(_repo(tmp_path / "r"), "bert-base", 2.0)
    # Only what the repository API lists: valid ids ("a..b" is not one) with a version holding a manifest.
    assert [m.id for m in models] == ["alpha", "beta"]
    assert models[0].memory_mb == 321.5  # the newest version's measured footprint
    # The server's estimate (repository.footprint): the weights with a 1% margin and 64 KiB.
    assert models[1].memory_mb == pytest.approx(10 * 1.01 + 1 / 16)
    assert all(m.rate_rps == 2.0 for m in models)


def test_csv_errors_name_the_line(tmp_path: Path) -> None:
    f = tmp_path / "m.csv"
    f.write_text("id,memory_mb,rate_rps\na,100,1\nb,lots,1\n")
    with pytest.raises(ConfigError, match=":3:"):
        read_models_csv(f, "bert-base")
    f.write_text("id,memory\na,1\n")
    with pytest.raises(ConfigError, match="header"):
        read_models_csv(f, "bert-base")
    for bad in ("../x", "a..b"):  # the server's id rule (repository.ids), `..` included
        f.write_text(f"id,memory_mb,rate_rps,model_class\n{bad},100,1,minilm-l6\n")
        with pytest.raises(ConfigError, match="invalid model id"):
            read_models_csv(f, "bert-base")


def test_exact_milp_refuses_huge_problems(tmp_path: Path) -> None:
    args = ["plan", "--models", str(_csv(tmp_path / "m.csv", 800)), "--method", "milp"]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "p.json")])
    assert isinstance(result.exception, PlanError)
    assert "binaries" in str(result.exception)
