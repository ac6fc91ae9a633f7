"""How wrong could the plan be: the same models re-planned with slower profiles and on one kind of
processor at a time.

A plan's cost rests on its profiles; most reference figures are estimates. So `inferpack plan` also
re-solves with every latency `slower` times longer (the band: what the fleet costs if the profiles
are that optimistic, or `None` where it turns infeasible), and with the instance types restricted to
each processor kind (CPU only, NVIDIA GPUs, Inferentia), each at both speeds. Pure (data in, data
out), except `print_sensitivity`, which prints the block.
"""

from __future__ import annotations

import fnmatch
from collections import Counter
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

from inferpack.errors import PlanError
from inferpack.planner.catalog import Catalog
from inferpack.planner.problem import ModelDemand, PlanOptions, build_problem
from inferpack.planner.profiles import ModelProfile, ProfileSet
from inferpack.planner.solve import Method, solve

KINDS: dict[str, str] = {"cpu": "CPU only", "cuda": "GPU (CUDA) only", "neuron": "Inferentia only"}
DEFAULT_SLOWER = 1.25


def _scale_profile(profile: ModelProfile, factor: float) -> ModelProfile:
    overhead, overhead_p90 = profile.request_overhead_ms, profile.request_overhead_p90_ms
    return profile.model_copy(
        update={
            "points": [p.scaled(factor) for p in profile.points],
            "request_overhead_ms": None if overhead is None else overhead * factor,
            "request_overhead_p90_ms": None if overhead_p90 is None else overhead_p90 * factor,
        }
    )


def slower_profiles(profiles: ProfileSet, factor: float) -> ProfileSet:
    """Every latency (points, P90s, measured request overhead) `factor` times longer."""
    return ProfileSet(
        classes=profiles.classes, profiles=[_scale_profile(p, factor) for p in profiles.profiles]
    )


@dataclass(frozen=True)
class Outcome:
    """One re-plan: its cost and mix, or why no plan exists."""

    cost_per_hour: float | None
    mix: str
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form for the plan's metadata."""
        return {"cost_per_hour": self.cost_per_hour, "mix": self.mix, "infeasible": self.reason or None}


def replan(
    models: list[ModelDemand],
    catalog: Catalog,
    profiles: ProfileSet,
    options: PlanOptions,
    *,
    method: Method,
    time_limit_s: float,
) -> Outcome:
    """Plan again and summarise (PlanError, e.g. a model no allowed type can serve, is the reason)."""
    try:
        problem = build_problem(models, catalog, profiles, options)
        solution = solve(problem, method=method, milp_time_limit_s=time_limit_s, with_naive=False)
    except PlanError as exc:
        return Outcome(None, "-", exc.message)
    mix = Counter(problem.types[s.type_index].name for s in solution.servers)
    return Outcome(solution.cost, ", ".join(f"{n} x {name}" for name, n in sorted(mix.items())))


def kind_types(catalog: Catalog, options: PlanOptions, kind: str) -> list[str]:
    """The allowed catalog types whose processor is `kind` (cpu, cuda, neuron)."""
    allowed = options.instance_types
    return [
        i.name
        for i in catalog.instances
        if i.target == kind and (allowed is None or any(fnmatch.fnmatchcase(i.name, p) for p in allowed))
    ]


def sensitivity(
    models: list[ModelDemand],
    catalog: Catalog,
    profiles: ProfileSet,
    options: PlanOptions,
    *,
    slower: float = DEFAULT_SLOWER,
    method: Method = "auto",
    time_limit_s: float = 30.0,
    chosen: float | None = None,
) -> dict[str, Any]:
    """The plan's metadata block `sensitivity`: for the chosen mix (all allowed types) and each kind,
    the cost at the profiles' speed (`cost_per_hour`) and with every latency `slower` times longer
    (`slower_cost_per_hour`, `slower_mix`, `slower_infeasible`); `None` and the reason (`infeasible`)
    where no plan exists. `chosen` is the main plan's
    cost (not solved again)."""
    slow = slower_profiles(profiles, slower)
    rows: dict[str, Any] = {}
    scopes: list[tuple[str, str, PlanOptions]] = [("chosen", "chosen mix", options)]
    for kind, label in KINDS.items():
        names = kind_types(catalog, options, kind)
        scopes.append((kind, label, options.model_copy(update={"instance_types": names or ["-none-"]})))
    for key, label, opts in scopes:
        if opts.instance_types == ["-none-"]:
            none = Outcome(None, "-", f"no allowed {KINDS[key]} instance type in the catalog")
            rows[key] = {"label": label, **none.as_dict(), **_slower(none)}
            continue
        if key == "chosen" and chosen is not None:
            base = Outcome(chosen, "(the plan)")
        else:
            base = replan(models, catalog, profiles, opts, method=method, time_limit_s=time_limit_s)
        worse = replan(models, catalog, slow, opts, method=method, time_limit_s=time_limit_s)
        rows[key] = {"label": label, **base.as_dict(), **_slower(worse)}
    return {"latency_scale": slower, "rows": rows}


def _slower(outcome: Outcome) -> dict[str, Any]:
    return {f"slower_{k}": v for k, v in outcome.as_dict().items()}


def _cost_cell(cost: float | None, reason: str | None) -> str:
    if cost is None:
        return f"[red]infeasible[/]: {reason}" if reason else "-"
    return f"{cost:.2f}"


def print_sensitivity(console: Console, block: dict[str, Any]) -> None:
    """The cost band and the per-kind costs, next to the chosen mix."""
    scale = block["latency_scale"]
    table = Table(title=f"how wrong could it be: per processor kind, and every latency x{scale:g}")
    for col in ("scope", "USD/h", "mix", f"USD/h at x{scale:g}", f"mix at x{scale:g}"):
        table.add_column(col, justify="right" if col.startswith("USD") else "left")
    for row in block["rows"].values():
        table.add_row(
            row["label"],
            _cost_cell(row["cost_per_hour"], row["infeasible"]),
            row["mix"],
            _cost_cell(row["slower_cost_per_hour"], row["slower_infeasible"]),
            row["slower_mix"],
        )
    console.print(table)
    chosen = block["rows"]["chosen"]
    if chosen["slower_cost_per_hour"] is None:
        console.print(f"[red]warning:[/] with latencies x{scale:g} no plan meets the objective")
    elif chosen["cost_per_hour"]:
        rise = chosen["slower_cost_per_hour"] / chosen["cost_per_hour"] - 1
        console.print(
            f"cost band: {chosen['cost_per_hour']:.2f} - {chosen['slower_cost_per_hour']:.2f} USD/h "
            f"({rise:+.0%} if every profile is x{scale:g} slower)"
        )
