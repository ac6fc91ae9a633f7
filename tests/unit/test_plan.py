from __future__ import annotations

from pathlib import Path

import pytest

from inferpack.errors import ConfigError, PlanError
from inferpack.plan import Plan, Resources, ServerGroup, ServerPlan, load_plan, save_plan


def _plan() -> Plan:
    return Plan(
        created_by="test",
        groups=[
            ServerGroup(
                name="local",
                resources=Resources(cpu=1, memory_mb=1024),
                servers=[ServerPlan(name="s0", models=["a", "b"]), ServerPlan(name="s1", models=["b", "c"])],
            )
        ],
    )


def test_placement_lists_every_copy(tmp_path: Path) -> None:
    plan = _plan()
    assert plan.placement() == {"a": ["s0"], "b": ["s0", "s1"], "c": ["s1"]}
    save_plan(plan, tmp_path / "p.json")
    assert load_plan(tmp_path / "p.json") == plan


def test_duplicate_server_names_rejected() -> None:
    with pytest.raises(ValueError, match="appears twice"):
        Plan(
            created_by="t",
            groups=[
                ServerGroup(
                    name="g",
                    resources=Resources(cpu=1, memory_mb=1),
                    servers=[ServerPlan(name="s", models=[]), ServerPlan(name="s", models=[])],
                )
            ],
        )


def test_validate_against_names_missing_and_extra() -> None:
    with pytest.raises(PlanError, match="not in the repository"):
        _plan().validate_against(["a", "b"])
    with pytest.raises(PlanError, match="misses"):
        _plan().validate_against(["a", "b", "c", "d"])


def test_bad_plan_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "p.json").write_text('{"created_by": "x", "groups": [], "typo": 1}')
    with pytest.raises(ConfigError, match="is not valid"):
        load_plan(tmp_path / "p.json")
    with pytest.raises(ConfigError, match="not found"):
        load_plan(tmp_path / "missing.json")
