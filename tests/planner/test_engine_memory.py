"""The memory the planner costs follows the engine: an ONNX Runtime session holds its own copy of the
weights (bench/bench_ort_memory.py), so a plan on onnxruntime points packs by the session's figure."""

from __future__ import annotations

import pytest

from inferpack.planner.catalog import load_catalog
from inferpack.planner.problem import ModelDemand, PlanOptions, build_problem
from inferpack.planner.profiles import (
    ModelProfile,
    ProfileSet,
    load_profiles,
    session_resident_mb,
)
from inferpack.planner.solve import solve
from inferpack.repository.footprint import ORT_SESSION_FACTOR

INSTANCE = "c6i.2xlarge"


def _profile(**update: object) -> ModelProfile:
    prof = load_profiles().lookup("minilm-l6", "local")
    assert prof is not None
    return prof.model_copy(update=update)


def test_an_onnx_session_costs_its_own_copy_of_the_weights() -> None:
    """Eager figures are unchanged; onnxruntime takes its own figure, else the session's derived from the
    parameters (never below the eager fp32 figure), else the fp32 figure x the measured factor."""
    prof = _profile(resident_mb=40.0, memory_by_dtype={"fp32": 40.0, "bf16": 25.0})
    assert prof.resident_for("bf16") == 25.0
    assert prof.resident_for("fp32", "eager", 22_700_000) == 40.0
    session = session_resident_mb(22_700_000)
    assert session == pytest.approx(22_700_000 * 4 / 2**20 * ORT_SESSION_FACTOR)
    assert prof.resident_for("fp32", "onnxruntime", 22_700_000) == pytest.approx(session)
    assert prof.resident_for("fp32", "onnxruntime") == pytest.approx(40.0 * ORT_SESSION_FACTOR)
    big = _profile(resident_mb=500.0, memory_by_dtype={})
    assert big.resident_for("fp32", "onnxruntime", 22_700_000) == 500.0
    own = _profile(memory_by_engine={"onnxruntime": 123.0})
    assert own.resident_for("fp32", "onnxruntime", 22_700_000) == 123.0


def test_a_profile_file_names_engine_memory_only_when_it_has_some() -> None:
    """Readers from before the field reject unknown fields: an eager profile's file stays readable."""
    assert "memory_by_engine" not in _profile().model_dump_json()
    assert (
        '"memory_by_engine":{"onnxruntime":123.0}'
        in _profile(memory_by_engine={"onnxruntime": 123.0}).model_dump_json()
    )


def _with_points(engine: str, session_mb: float | None) -> ProfileSet:
    """The reference profiles with MiniLM on c6i.2xlarge measured on `engine` only (same speed), its eager
    fp32 figure a model's touched pages (40 MB) and, on onnxruntime, the session's `session_mb`."""
    profiles = load_profiles()
    prof = profiles.lookup("minilm-l6", "local")
    assert prof is not None
    points = [p.model_copy(update={"engine": engine}) for p in prof.points if p.dtype == "fp32"]
    update: dict[str, object] = {
        "instance_types": [INSTANCE],
        "points": points,
        "resident_mb": 40.0,
        "memory_by_dtype": {"fp32": 40.0},
        "memory_by_engine": {} if session_mb is None else {"onnxruntime": session_mb},
    }
    return profiles.model_copy(update={"profiles": [*profiles.profiles, prof.model_copy(update=update)]})


@pytest.mark.parametrize("session_mb", [None, 120.0])
def test_onnx_points_pack_fewer_models_per_server_when_memory_binds(session_mb: float | None) -> None:
    """Many cold models (memory binds, not compute): the same points on onnxruntime need more servers, as
    each model's session is costed, not its eager pages."""
    classes = load_profiles().classes
    models = [
        ModelDemand(f"m{i}", classes["minilm-l6"].reference_memory_mb, 0.0, "minilm-l6") for i in range(400)
    ]
    options = PlanOptions(instance_types=[INSTANCE])

    def most_per_server(engine: str) -> int:
        problem = build_problem(models, load_catalog(), _with_points(engine, session_mb), options)
        assert {ch.point.engine for ch in problem.choices.values()} == {engine}
        solution = solve(problem, method="heuristic", with_naive=False)
        return max(len(s.models) for s in solution.servers)

    eager, onnx = most_per_server("eager"), most_per_server("onnxruntime")
    assert onnx < eager
    expected = session_mb or session_resident_mb(classes["minilm-l6"].parameters or 0)
    assert onnx / eager == pytest.approx(40.0 / expected, rel=0.05)
