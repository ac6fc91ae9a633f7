"""How a running fleet moves from one placement to another without a model going dark: pure logic.

A placement here is `Holdings`: server name -> the models it holds. `diff(old, new)` returns the change as
*phases* of actions; every action of a phase may run at once, and the next phase starts only when every
action of this one is done (a started server or a loaded copy is *ready*, a route update is *applied by the
router*). The order is what keeps every model served:

1. start the new servers and load the new copies on servers that stay (nothing routes to them yet);
2. route to the union of old and new holders (every copy in it is ready);
3. route to the new holders only (old holders stop getting new requests);
4. unload the copies and stop the servers nothing routes to any more.

So the router only ever routes to ready copies, and a model in both plans keeps, at every moment, at least
min(old copies, new copies) routed ready copies (max during phase 2). A failure in phase 1 is undone by
`undo` (stop what started, unload what loaded) and leaves the old placement untouched.

`rolling_restart` does the same for restarts: route around one server, stop it, start it, route back.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from inferpack.plan import Plan, ServerGroup, ServerPlan

Holdings = Mapping[str, Sequence[str]]  # server name -> models it holds


@dataclass(frozen=True)
class StartServer:
    """Start a server holding `models`; done when it and each of its models are ready."""

    server: str
    models: tuple[str, ...]

    kind: Literal["start"] = "start"


@dataclass(frozen=True)
class LoadModel:
    """Load a copy of `model` on a running `server`; done when the copy is ready."""

    server: str
    model: str

    kind: Literal["load"] = "load"


@dataclass(frozen=True)
class Route:
    """Give the router this placement (server -> models); done when the router has applied it."""

    holdings: tuple[tuple[str, tuple[str, ...]], ...]
    why: str

    kind: Literal["route"] = "route"

    def as_dict(self) -> dict[str, list[str]]:
        """The holdings as a plain dict."""
        return {server: list(models) for server, models in self.holdings}


@dataclass(frozen=True)
class UnloadModel:
    """Unload `model` from `server` (no longer routed there)."""

    server: str
    model: str

    kind: Literal["unload"] = "unload"


@dataclass(frozen=True)
class StopServer:
    """Stop `server` (no longer routed to): SIGTERM, drain, SIGKILL after the stop timeout."""

    server: str

    kind: Literal["stop"] = "stop"


Action = StartServer | LoadModel | Route | UnloadModel | StopServer
Phase = list[Action]


def route(holdings: Holdings, why: str) -> Route:
    """A route action for `holdings` (servers holding nothing are left out: the router never sees them)."""
    return Route(tuple((s, tuple(m)) for s, m in holdings.items() if m), why)


def union(old: Holdings, new: Holdings) -> dict[str, list[str]]:
    """Every copy of either placement: a server's models in old order, then the ones only new has."""
    out = {s: list(models) for s, models in old.items()}
    for server, models in new.items():
        have = out.setdefault(server, [])
        have.extend(m for m in models if m not in have)
    return out


def _routed(holdings: Holdings) -> dict[str, frozenset[str]]:
    return {s: frozenset(m) for s, m in holdings.items() if m}


def diff(old: Holdings, new: Holdings) -> list[Phase]:
    """The phases that move a fleet running `old` to `new` (see the module docstring); [] when equal.
    A server holding nothing counts as absent: it is stopped, not kept idle."""
    was = {s: list(m) for s, m in old.items() if m}
    will = {s: list(m) for s, m in new.items() if m}
    starts: Phase = [StartServer(s, tuple(models)) for s, models in will.items() if s not in was]
    loads: Phase = [
        LoadModel(s, m) for s, models in will.items() if s in was for m in models if m not in was[s]
    ]
    unloads: Phase = [
        UnloadModel(s, m) for s, models in was.items() if s in will for m in models if m not in will[s]
    ]
    stops: Phase = [StopServer(s) for s in was if s not in will]
    both = union(was, will)
    phases: list[Phase] = [starts + loads]
    if _routed(both) != _routed(was):
        phases.append([route(both, "add the new holders")])
    if _routed(will) != _routed(both):
        phases.append([route(will, "remove the old holders")])
    phases.append(unloads + stops)
    return [p for p in phases if p]


def undo(done: Iterable[Action]) -> Phase:
    """What reverts the finished actions of a failed phase 1: stop the started servers, unload the loads."""
    out: Phase = []
    for action in done:
        if isinstance(action, StartServer):
            out.append(StopServer(action.server))
        elif isinstance(action, LoadModel):
            out.append(UnloadModel(action.server, action.model))
    return out


def dark_models(holdings: Holdings, server: str) -> list[str]:
    """Models `server` holds that no other server holds: what goes dark while it restarts."""
    others = {m for s, models in holdings.items() if s != server for m in models}
    return sorted(m for m in holdings.get(server, []) if m not in others)


def rolling_restart(holdings: Holdings, servers: Sequence[str]) -> list[Phase]:
    """One server at a time: route around it (keeping only the models no one else holds, so their requests
    get "unavailable" rather than "unknown model"), stop it, start it, wait until ready, route back."""
    phases: list[Phase] = []
    for server in servers:
        models = tuple(holdings[server])
        around = {
            s: (list(dark_models(holdings, s)) if s == server else list(m)) for s, m in holdings.items()
        }
        if _routed(around) != _routed(holdings):
            phases.append([route(around, f"route around {server}")])
        phases += [[StopServer(server)], [StartServer(server, models)]]
        if _routed(around) != _routed(holdings):
            phases.append([route(holdings, f"route to {server} again")])
    return phases


def plan_for(holdings: Holdings, plans: Sequence[Plan]) -> Plan:
    """A plan file for the router holding exactly `holdings`: each server keeps its group (machine kind)
    from the first of `plans` that names it; servers holding nothing are left out. The other fields are
    the first plan's."""
    home: dict[str, ServerGroup] = {}
    for plan in reversed(plans):
        for group in plan.groups:
            home.update((s.name, group) for s in group.servers)
    placed: dict[str, list[ServerPlan]] = {}
    for server, models in holdings.items():
        if not models:
            continue
        if server not in home:
            raise ValueError(f"server {server!r} is in none of the plans")
        placed.setdefault(home[server].name, []).append(ServerPlan(name=server, models=list(models)))
    groups: dict[str, ServerGroup] = {}
    for plan in plans:
        for group in plan.groups:
            if group.name in placed and group.name not in groups:
                groups[group.name] = group.model_copy(update={"servers": placed[group.name]})
    return plans[0].model_copy(update={"groups": list(groups.values())})
