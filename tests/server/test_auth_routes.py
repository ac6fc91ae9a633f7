"""Every route of the server app is either a documented open probe or checks the bearer token: a new route
that forgets its auth dependency fails here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from inferpack.server.app import create_app
from inferpack.settings import AuthSettings, ServerSettings

# docs/server.md, "Access control": open for probes and scrapers
OPEN = {"/", "/v2", "/v2/health/live", "/v2/health/ready", "/metrics"}


def _app(repo: Path, **auth: object) -> TestClient:
    settings = ServerSettings(repository=str(repo), auth=AuthSettings(**auth))  # type: ignore[arg-type]
    return TestClient(create_app(settings))  # no lifespan: auth answers before any model is touched


def _calls(client: TestClient) -> list[tuple[str, str]]:
    """Every (method, path) the app serves, from its OpenAPI schema (routers included), with sample ids."""
    calls = []
    for template, operations in client.app.openapi()["paths"].items():  # type: ignore[attr-defined]
        path = re.sub(r"\{version\}", "1", re.sub(r"\{model_id\}", "m-0", template))
        assert "{" not in path, f"give {template} a sample value here"
        calls += [(method.upper(), path) for method in sorted(operations)]
    return calls


def test_every_non_probe_route_rejects_a_missing_or_wrong_token(tmp_path: Path) -> None:
    client = _app(tmp_path, tokens=["tenant-token"], admin_token="admin-token")
    calls = _calls(client)
    assert {p for _, p in calls} >= {"/v2/models/m-0/ready", "/v2/models/m-0/versions/1/ready"}
    open_paths = set()
    for method, path in calls:
        if path in OPEN:
            open_paths.add(path)
            assert client.request(method, path).status_code != 401, path
            continue
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            r = client.request(method, path, headers=headers)
            assert r.status_code == 401, (method, path, r.status_code)
            assert r.headers["www-authenticate"] == "Bearer" and r.json()["error"]
    assert open_paths == OPEN  # the documented probes exist and nothing else is open


@pytest.mark.parametrize("path", ["/v2/models/m-0/ready", "/v2/models/m-0/versions/1/ready"])
def test_model_ready_takes_the_inference_token(tmp_path: Path, path: str) -> None:
    client = _app(tmp_path, tokens=["tenant-token"])
    assert client.get(path).status_code == 401
    r = client.get(path, headers={"Authorization": "Bearer tenant-token"})
    assert r.status_code == 404 and "m-0" in r.json()["error"]  # past auth: the model is unknown here


def test_unknown_model_hint_is_said_in_http(tmp_path: Path) -> None:
    r = _app(tmp_path).get("/predictions/m-0")
    assert r.status_code == 404
    assert r.json()["hint"] == "POST /v2/repository/index lists the models this server knows"
