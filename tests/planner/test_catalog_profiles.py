from __future__ import annotations

import json
from pathlib import Path

import pytest

from inferpack.errors import ConfigError, PlanError
from inferpack.planner.catalog import load_catalog
from inferpack.planner.problem import ModelDemand, PlanOptions, build_problem
from inferpack.planner.profiles import (
    OperatingPoint,
    load_profiles,
    parse_profile_file,
    reference_profile_text,
)


def test_shipped_catalog_covers_the_families_with_region_and_date() -> None:
    catalog = load_catalog()
    families = {i.family for i in catalog.instances}
    assert {"c5", "c6i", "c7g", "g4dn", "g5", "inf2"} <= families
    assert "inf1" not in families  # the server cannot run torch-neuron (see test below)
    assert any("us-east-1" in line for line in catalog.provenance)
    graviton = catalog.get("c7g.xlarge")
    assert graviton.architecture == "arm64" and graviton.price_per_hour > 0
    assert catalog.get("inf2.xlarge").target == "neuron"
    assert catalog.get("g5.xlarge").accelerator_count == 1


def test_override_replaces_adds_and_removes(tmp_path: Path) -> None:
    f = tmp_path / "mine.json"
    f.write_text(
        json.dumps(
            {
                "region": "eu-west-1",
                "remove": ["g5.48xlarge"],
                "instances": [
                    {"name": "c6i.large", "vcpus": 2, "memory_mb": 4096, "price_per_hour": 0.01},
                    {"name": "local", "vcpus": 2, "memory_mb": 24576, "price_per_hour": 0.0},
                ],
            }
        )
    )
    catalog = load_catalog([f])
    assert catalog.get("c6i.large").price_per_hour == 0.01
    assert catalog.get("local").vcpus == 2
    assert "g5.48xlarge" not in catalog.names()
    assert catalog.provenance[-1].endswith("(eu-west-1)")
    only = tmp_path / "only.json"
    local = json.loads(catalog.get("local").model_dump_json())
    only.write_text(json.dumps({"replace": True, "instances": [local]}))
    assert load_catalog([only]).names() == ["local"]


def test_bad_catalog_file_is_a_clear_error(tmp_path: Path) -> None:
    f = tmp_path / "bad.json"
    f.write_text('{"instances": [{"name": "x"}]}')
    with pytest.raises(ConfigError, match=r"catalog .* is not valid"):
        load_catalog([f])
    f.write_text('{"remove": ["nope.large"]}')
    with pytest.raises(ConfigError, match="not in the catalog"):
        load_catalog([f])


def test_every_shipped_type_is_one_the_server_can_compute_on() -> None:
    from inferpack.runtime.targets import unservable_reason

    for inst in load_catalog().instances:
        assert unservable_reason(inst.target, inst.accelerator) is None, inst.name


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        ({"name": "inf1.xlarge", "target": "neuron", "accelerator": "aws-inferentia"}, "torch-neuron"),
        ({"name": "g9.xlarge", "target": "cuda", "accelerator": "amd-mi300"}, "nvidia-"),
        ({"name": "inf9.xlarge", "target": "neuron"}, "not none"),
    ],
)
def test_the_planner_refuses_hardware_the_server_cannot_use(
    tmp_path: Path, entry: dict[str, object], why: str
) -> None:
    f = tmp_path / "more.json"
    shape = {"vcpus": 4, "memory_mb": 8192, "accelerator_count": 1, "accelerator_memory_mb": 8192}
    f.write_text(json.dumps({"instances": [{**shape, **entry, "price_per_hour": 0.2}]}))
    with pytest.raises(ConfigError, match=f"{entry['name']}.*cannot be served.*{why}"):
        load_catalog([f])
    trn = {**shape, "name": "trn1.2xlarge", "target": "neuron", "accelerator": "aws-trainium"}
    f.write_text(json.dumps({"instances": [{**trn, "price_per_hour": 1.3}]}))
    assert load_catalog([f]).get("trn1.2xlarge").target == "neuron"


def test_reference_profiles_cover_every_catalog_type_and_cite_sources() -> None:
    profiles = load_profiles()
    for inst in load_catalog().instances:
        prof = profiles.lookup("bert-base", inst.name)
        assert prof is not None, inst.name
        assert prof.source
    assert profiles.lookup("minilm-l6", "local") is not None
    reference = parse_profile_file(reference_profile_text(), "reference")
    assert any("awsdocs-neuron" in line for line in reference.sources)
    assert any(p.estimated for p in profiles.profiles) and any(not p.estimated for p in profiles.profiles)


def test_later_profile_files_win(tmp_path: Path) -> None:
    base = load_profiles()
    mine = json.loads(base.model_dump_json())
    prof = next(p for p in mine["profiles"] if p["instance_types"] == ["inf2.*"])
    prof["points"][0]["latency_ms"] = 1.0
    f = tmp_path / "p.json"
    f.write_text(
        json.dumps(
            {"created_by": "test", "model_classes": list(mine["classes"].values()), "profiles": [prof]}
        )
    )
    merged = load_profiles([f])
    found = merged.lookup("bert-base", "inf2.xlarge")
    assert found is not None and found.points[0].latency_ms == 1.0


def test_cpu_cannot_meet_a_tight_objective_but_accelerators_can() -> None:
    models = [ModelDemand("a", 460, 10.0)]
    problem = build_problem(models, load_catalog(), load_profiles(), PlanOptions(slo_p90_ms=15))
    usable = {problem.types[t].family for t in range(problem.n_types) if problem.fits[0, t]}
    assert usable and usable <= {"g4dn", "g5", "inf2"}
    with pytest.raises(PlanError, match="fit no allowed instance type"):
        options = PlanOptions(slo_p90_ms=2, instance_types=["c5.*"])
        build_problem(models, load_catalog(), load_profiles(), options)


def test_unknown_model_class_is_reported() -> None:
    with pytest.raises(PlanError, match="no profile"):
        build_problem([ModelDemand("a", 100, 1, "gpt-x")], load_catalog(), load_profiles(), PlanOptions())


def test_reserved_cpus_and_request_overhead_lower_cpu_capacity() -> None:
    models = [ModelDemand("a", 460, 1.0)]

    def capacity(name: str, **kw: float) -> float:
        problem = build_problem(models, load_catalog(), load_profiles(), PlanOptions(slo_p90_ms=400, **kw))
        t = [i.name for i in problem.types].index(name)
        return 1.0 / float(problem.coef[0, t, 1])

    base = capacity("c6i.4xlarge")
    # 16 vCPUs = 8 physical cores: the workers use the 8 cores, reserved vCPUs come from the hyperthread
    # siblings first, and only past them (a CPU quota under 8) take cores from the workers.
    assert capacity("c6i.4xlarge", reserved_cpus=4) == pytest.approx(base)
    assert capacity("c6i.4xlarge", reserved_cpus=10) < base
    assert capacity("c6i.4xlarge", request_overhead_ms=20) < base
    # On accelerators the host does the overhead: latency grows, device capacity does not shrink much.
    inf2 = capacity("inf2.xlarge")
    assert capacity("inf2.xlarge", request_overhead_ms=20) == pytest.approx(inf2, rel=0.05)
    assert capacity("inf2.xlarge", reserved_cpus=2) == pytest.approx(inf2)


def test_measured_overhead_and_spread_in_a_profile_lower_capacity_and_the_flag_overrides(
    tmp_path: Path,
) -> None:
    # Old profile files (no P90, no overhead) stay readable; the new optional fields change the plan.
    base = load_profiles()
    mine = json.loads(base.model_dump_json(exclude_none=True))
    prof = next(p for p in mine["profiles"] if "c6i.*" in p["instance_types"])
    models = [ModelDemand("a", 460, 1.0)]

    def capacity(profile: dict[str, object], **kw: float) -> float:
        f = tmp_path / "p.json"
        classes = list(mine["classes"].values())
        f.write_text(json.dumps({"created_by": "test", "model_classes": classes, "profiles": [profile]}))
        options = PlanOptions(slo_p90_ms=400, instance_types=["c6i.4xlarge"], **kw)
        problem = build_problem(models, load_catalog(), load_profiles([f]), options)
        return 1.0 / float(problem.coef[0, 0, 1])

    plain = capacity(prof)
    measured = {**prof, "request_overhead_ms": 20.0}
    assert capacity(measured) < plain
    assert capacity(measured, request_overhead_ms=0) == pytest.approx(plain)  # the flag overrides
    assert capacity(prof, request_overhead_ms=20) == pytest.approx(capacity(measured))
    # The overhead's P90 (the service time's P90 under load less the forward's) widens the spread; the
    # flag sets median and P90 alike.
    spread = {**measured, "request_overhead_p90_ms": 80.0}
    assert capacity(spread) < capacity(measured)
    assert capacity(spread, request_overhead_ms=20) == pytest.approx(capacity(measured))
    points = prof["points"]
    assert isinstance(points, list)
    tight = [{**p, "latency_p90_ms": p["latency_ms"] * 1.01} for p in points]
    wide = [{**p, "latency_p90_ms": p["latency_ms"] * 2.0} for p in points]
    assert capacity({**prof, "points": tight}) > plain > capacity({**prof, "points": wide})


def test_a_p90_below_the_median_is_refused() -> None:
    with pytest.raises(ValueError, match="below latency_ms"):
        OperatingPoint(latency_ms=10.0, latency_p90_ms=9.0)


def test_profiles_for_types_the_catalog_lacks_say_which_types_and_what_to_do(tmp_path: Path) -> None:
    # `inferpack profile` records `local` unless told otherwise; the shipped catalog has no such entry.
    mine = json.loads(load_profiles().model_dump_json(exclude_none=True))
    prof = next(p for p in mine["profiles"] if p["model_class"] == "bert-base")
    f = tmp_path / "p.json"
    local = {**prof, "instance_types": ["local"]}
    classes = list(mine["classes"].values())
    f.write_text(json.dumps({"created_by": "test", "model_classes": classes, "profiles": [local]}))
    models = [ModelDemand("a", 460, 1.0, "bert-base")]
    with pytest.raises(PlanError, match="no allowed instance type has a profile") as raised:
        build_problem(models, load_catalog(), load_profiles([f], use_reference=False), PlanOptions())
    assert raised.value.hint is not None
    assert "['local']" in raised.value.hint and "--catalog" in raised.value.hint
