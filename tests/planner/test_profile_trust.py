"""Profiles you can trust: every shipped figure names its source, none beats the hardware's peak, x86 vCPUs
count as hyperthreads, dtypes are costed only where native (with their memory), and measured figures from
`inferpack profile` replace the estimates for the family they ran on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from inferpack.errors import ConfigError
from inferpack.planner.catalog import load_catalog
from inferpack.planner.problem import ModelDemand, PlanOptions, build_problem
from inferpack.planner.profiler import Measured, ProfileRequest, to_profile_file
from inferpack.planner.profiles import (
    HardwareTag,
    OperatingPoint,
    load_profiles,
    parse_profile_file,
    peak_violations,
    reference_profile_text,
    unchecked,
)
from inferpack.planner.solve import solve, to_plan

PREFIXES = ("published: ", "measured: ", "derived: ")


def reference() -> dict:  # type: ignore[type-arg]
    data: dict = json.loads(reference_profile_text())  # type: ignore[type-arg]
    return data


def test_every_shipped_point_names_its_source_or_the_rule_it_was_derived_by() -> None:
    for prof in parse_profile_file(reference_profile_text(), "reference").profiles:
        for point in prof.points:
            where = f"{prof.instance_types} {point}"
            assert point.source is not None and point.source.startswith(PREFIXES), where
            if point.source.startswith("derived: "):
                assert " from " in point.source, where


def test_no_shipped_point_beats_its_hardware_peak_and_every_one_is_checked() -> None:
    profiles = load_profiles()
    assert peak_violations(profiles) == []
    assert unchecked(profiles) == []  # a processor for every family, a shape for every class


def test_bert_base_costs_about_22_gflop_per_request_at_128_tokens() -> None:
    gflop = load_profiles().classes["bert-base"].gflops_per_request()
    assert gflop is not None and 22.0 < gflop < 23.0


def test_a_point_faster_than_peak_is_refused_when_profiles_load(tmp_path: Path) -> None:
    """The former Graviton3 figure, 230 ms fp32 on one core: 97 GFLOPS on a core whose peak is 83."""
    data = reference()
    graviton = next(p for p in data["profiles"] if "c7g.*" in p["instance_types"])
    too_fast = {**graviton, "points": [{"threads": 1, "dtype": "fp32", "latency_ms": 230.0, "source": "x"}]}
    path = tmp_path / "fast.json"
    path.write_text(json.dumps({**data, "profiles": [too_fast]}))
    with pytest.raises(ConfigError, match=r"faster than the hardware's peak.*c7g.*Graviton3"):
        load_profiles([path])


def test_x86_vcpus_are_hyperthreads_and_graviton_vcpus_are_cores() -> None:
    catalog = load_catalog()
    assert catalog.get("c6i.2xlarge").physical_cores == 4
    assert catalog.get("c5.xlarge").physical_cores == 2
    assert catalog.get("c7g.2xlarge").physical_cores == 8
    models = [ModelDemand("a", 460.0, 1.0)]
    problem = build_problem(models, catalog, load_profiles(), PlanOptions(instance_types=["c6i.2xlarge"]))
    choice = problem.choices[(0, 0)]
    assert choice.workers * choice.point.threads <= 4


def test_bf16_is_costed_only_where_native_and_halves_the_memory(tmp_path: Path) -> None:
    data = reference()
    c6i = next(p for p in data["profiles"] if "c6i.*" in p["instance_types"])
    fake_bf16 = {"threads": 4, "dtype": "bf16", "latency_ms": 40.0, "source": "derived: test from c6i"}
    path = tmp_path / "c6i-bf16.json"
    path.write_text(json.dumps({**data, "profiles": [{**c6i, "points": [*c6i["points"], fake_bf16]}]}))
    models = [ModelDemand(f"m{i}", 460.0, 0.5) for i in range(4)]
    ice_lake = build_problem(
        models, load_catalog(), load_profiles([path]), PlanOptions(instance_types=["c6i.*"])
    )
    assert {ch.point.dtype for ch in ice_lake.choices.values()} == {"fp32"}  # Ice Lake: no native bf16
    graviton = build_problem(
        models, load_catalog(), load_profiles(), PlanOptions(instance_types=["c7g.4xlarge"], slo_p90_ms=300)
    )
    fp32_only = build_problem(
        models,
        load_catalog(),
        load_profiles(),
        PlanOptions(instance_types=["c7g.4xlarge"], dtypes=["fp32"], slo_p90_ms=300),
    )
    assert graviton.choices[(0, 0)].point.dtype == "bf16"
    assert graviton.coef[0, 0, 0] == pytest.approx(fp32_only.coef[0, 0, 0] * 242 / 460)


def test_measured_profiles_replace_the_estimates_for_their_family(tmp_path: Path) -> None:
    tag = HardwareTag(cpu_model="Intel Xeon Platinum 8375C", architecture="x86_64", cores=8)
    point = OperatingPoint(threads=4, latency_ms=70.0)  # slower than the reference's 54 ms
    shape = {"layers": 12, "hidden": 768, "intermediate": 3072, "sequence_length": 128}
    measured = Measured("bert-l12-h768", ["m-0"], 0.5, 430.0, True, 110_000_000, [point], {}, shape)
    request = ProfileRequest([1], [4], ["fp32", "bf16"], instance_types=["c6i.*"], model_class="bert-base")
    path = tmp_path / "measured.json"
    path.write_text(to_profile_file([measured], 300.0, request, tag, "today").model_dump_json())
    profiles = load_profiles([path])
    prof = profiles.lookup("bert-base", "c6i.2xlarge")
    assert prof is not None and prof.points[0].source and prof.points[0].source.startswith("measured: ")
    assert prof.memory_by_dtype == {"fp32": 430.0, "bf16": pytest.approx(430.0 - 110_000_000 * 2 / 2**20)}
    assert unchecked(profiles) == []  # the measured class keeps a shape: its points are peak-checked too
    assert profiles.lookup("bert-base", "c7g.2xlarge") is not None  # other families keep the reference
    models = [ModelDemand("a", 460.0, 1.0)]
    options = PlanOptions(instance_types=["c6i.2xlarge"])
    problem = build_problem(models, load_catalog(), profiles, options)
    plan = to_plan(problem, solve(problem, method="heuristic", with_naive=False), options)
    ex = plan.groups[0].execution
    assert ex is not None and ex.latency_ms == 70.0 and (ex.profile_source or "").startswith("measured: ")
