"""The router re-reads its plan and endpoints files (SIGHUP in a real router; called directly here, as
TestClient runs the app off the main thread): it routes by the new placement, reports the files' digest
in its readiness body, and keeps the previous placement when the files are broken."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from inferpack.endpoints import ServerEndpoints, save_endpoints
from inferpack.fleet.placementfiles import PlacementFiles, placement_digest
from inferpack.fleet.router import create_router_app
from inferpack.plan import Plan, Resources, ServerGroup, ServerPlan, save_plan
from inferpack.settings import RouterSettings
from tests.fleet.test_router import FakeServers, _plan
from tests.fleet.test_router import fake as fake  # the fixture: two fake fake on loopback ports

SETTINGS = RouterSettings(probe_interval_s=3600, upstream_timeout_s=5)

QUESTION = {"seq_0": "who?", "seq_1": "Bob"}


def _digest(files: PlacementFiles) -> str:
    return placement_digest(files.plan.read_bytes(), files.endpoints.read_bytes())


def test_reload_routes_by_the_new_files_and_keeps_the_old_when_broken(
    fake: FakeServers, tmp_path: Path
) -> None:
    files = PlacementFiles(tmp_path / "plan.json", tmp_path / "endpoints.json")
    save_plan(_plan(), files.plan)
    save_endpoints(ServerEndpoints(servers=fake.urls), files.endpoints)
    app = create_router_app(_plan(), fake.urls, SETTINGS, files=files)
    with TestClient(app) as client:
        assert client.get("/v2/health/ready").json()["placement"] == _digest(files)
        assert client.get("/predictions/b", params=QUESTION).headers["x-served-by"] == "s0"

        moved = Plan(
            created_by="test",
            groups=[
                ServerGroup(
                    name="local",
                    resources=Resources(cpu=1, memory_mb=1000),
                    servers=[ServerPlan(name="s0", models=["a"]), ServerPlan(name="s1", models=["a", "b"])],
                )
            ],
        )
        save_plan(moved, files.plan)
        app.state.reload_placement()
        ready = client.get("/v2/health/ready").json()
        assert ready["placement"] == _digest(files)
        for _ in range(4):
            assert client.get("/predictions/b", params=QUESTION).headers["x-served-by"] == "s1"
        assert client.get("/predictions/c", params=QUESTION).status_code == 404  # no longer placed

        good = _digest(files)
        files.plan.write_text("{not json")
        app.state.reload_placement()
        assert client.get("/v2/health/ready").json()["placement"] == good
        assert client.get("/predictions/b", params=QUESTION).headers["x-served-by"] == "s1"


def test_reload_drops_servers_and_adds_new_ones(fake: FakeServers, tmp_path: Path) -> None:
    files = PlacementFiles(tmp_path / "plan.json", tmp_path / "endpoints.json")
    only_s0 = Plan(
        created_by="test",
        groups=[
            ServerGroup(
                name="local",
                resources=Resources(cpu=1, memory_mb=1000),
                servers=[ServerPlan(name="s0", models=["a", "b", "c"])],
            )
        ],
    )
    save_plan(only_s0, files.plan)
    save_endpoints(ServerEndpoints(servers={"s0": fake.urls["s0"]}), files.endpoints)
    app = create_router_app(only_s0, {"s0": fake.urls["s0"]}, SETTINGS, files=files)
    with TestClient(app) as client:
        assert client.get("/predictions/c", params=QUESTION).headers["x-served-by"] == "s0"
        save_plan(_plan(), files.plan)  # s1 joins (a, c), s0 keeps a, b
        save_endpoints(ServerEndpoints(servers=fake.urls), files.endpoints)
        app.state.reload_placement()
        assert client.get("/predictions/c", params=QUESTION).headers["x-served-by"] == "s1"
        assert set(client.get("/v2/health/ready").json()["servers"]) == {"s0", "s1"}
        metrics = client.get("/metrics").text
        assert 'inferpack_router_forwarded_total{server="s1"} 1.0' in metrics
