"""The router applies the servers' auth rules itself before it looks a model up (docs/security.md): a scoped
token learns nothing about models outside its scope from the router's own answers (404, index, readiness),
and refused requests never reach a server. Real fake upstreams on loopback ports (tests/fleet/test_router)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from inferpack.fleet.router import create_router_app
from inferpack.settings import AuthSettings, RouterSettings
from tests.fleet.test_router import FakeServers, _plan
from tests.fleet.test_router import fake as fake  # the fixture: two fake upstreams on loopback ports

AUTH = AuthSettings(tokens=["tenant-a a", "all"], admin_token="admin", metrics_token="scrape")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def client(fake: FakeServers) -> Iterator[TestClient]:
    settings = RouterSettings(probe_interval_s=3600, upstream_timeout_s=5)  # no probe during a test
    app = create_router_app(_plan(), fake.urls, settings, auth=AUTH)
    with TestClient(app) as c:
        yield c


def test_refusals_are_answered_by_the_router_and_never_forwarded(
    client: TestClient, fake: FakeServers
) -> None:
    assert client.post("/v2/models/a/infer", content=b"{}").status_code == 401
    assert client.get("/predictions/a", headers=bearer("wrong")).status_code == 401
    for model in ("b", "zz-unknown"):  # held by the fleet or not: the same 403 naming the model
        r = client.get(f"/v2/models/{model}/ready", headers=bearer("tenant-a"))
        assert r.status_code == 403 and r.json()["error"] == f"this token may not use model {model!r}"
    assert fake.seen == []
    assert client.get("/v2/models/zz-unknown/ready", headers=bearer("all")).status_code == 404


def test_a_request_in_scope_is_forwarded_with_its_token(client: TestClient, fake: FakeServers) -> None:
    r = client.post("/v2/models/a/infer", content=b"{}", headers=bearer("tenant-a"))
    assert r.status_code == 200
    assert [s.headers["authorization"] for s in fake.seen] == ["Bearer tenant-a"]  # the server checks too


def test_the_merged_index_shows_a_scoped_token_only_its_models(client: TestClient) -> None:
    def names(token: str) -> list[str]:
        r = client.post("/v2/repository/index", headers=bearer(token))
        assert r.status_code == 200, r.text
        return [e["name"] for e in r.json()]

    assert names("tenant-a") == ["a"]
    assert names("all") == names("admin") == ["a", "b", "c"]
    assert client.post("/v2/repository/index").status_code == 401


def test_load_takes_the_admin_token(client: TestClient, fake: FakeServers) -> None:
    assert client.post("/v2/repository/models/a/load", headers=bearer("all")).status_code == 401
    assert client.post("/v2/repository/models/a/load", headers=bearer("admin")).status_code == 200
    assert {s.server for s in fake.seen} == {"s0", "s1"}


def test_metrics_and_readiness_names_follow_the_metrics_token(client: TestClient, fake: FakeServers) -> None:
    assert client.get("/metrics", headers=bearer("all")).status_code == 401
    assert client.get("/metrics", headers=bearer("scrape")).status_code == 200
    fake.kill("s1")  # c loses its only copy once the router notices
    client.post("/v2/models/c/infer", content=b"{}", headers=bearer("all"))
    anonymous = client.get("/v2/health/ready").json()
    assert anonymous["ready"] is True and "unavailable_models" not in anonymous
    operator = client.get("/v2/health/ready", headers=bearer("scrape")).json()
    assert operator["unavailable_models"] == ["c"]
