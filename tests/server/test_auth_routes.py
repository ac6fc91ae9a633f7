"""Who may see and call what: every route of the server's OpenAPI schema, walked with no token, a wrong
token, a scoped token (in and out of its scope), an unscoped token, the metrics token and the admin token
(docs/security.md). A new route that forgets its auth dependency fails here."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from inferpack.server.app import create_app
from inferpack.settings import AuthSettings, ServerSettings

# Open for kubelets, which send no token (docs/security.md, "Metrics and probes").
PROBES = {"/", "/v2", "/v2/health/live", "/v2/health/ready"}
SCOPED = "qa-* emb-0000"  # one tenant: a prefix and one exact id
IN_SCOPE = ["qa-0000", "qa-9999"]  # a model that exists, and one that does not
OUT_OF_SCOPE = ["cls-0000", "zz-none"]  # the same: the answer must not tell them apart
TOKENS = {
    "none": None,
    "wrong": "wrong",
    "scoped": "acme-token",
    "unscoped": "all-token",
    "metrics": "metrics-token",
    "admin": "admin-token",
}


def _client(repo: Path, models: list[str] | None = None, **auth: object) -> TestClient:
    """A client of a server app on `repo` holding `models` (none by default); enter it to start it."""
    auth_settings = AuthSettings(**auth)  # type: ignore[arg-type]
    settings = ServerSettings(repository=str(repo), models=models or [], auth=auth_settings)
    return TestClient(create_app(settings))


@pytest.fixture(scope="module")
def client(demo_repo: Path) -> Iterator[TestClient]:
    hashed = hashlib.sha256(b"acme-token").hexdigest()  # the scoped token is given by its hash
    app = _client(
        demo_repo,
        ["qa-0000", "broken-0000"],  # the broken one fails to load: the server reports it, not ready
        tokens=["all-token", f"sha256:{hashed} {SCOPED}"],
        admin_token="admin-token",
        metrics_token="metrics-token",
    )
    with app as started:
        yield started


def _calls(client: TestClient) -> list[tuple[str, str, str | None]]:
    """Every (method, path, model id) the app serves, from its OpenAPI schema, for each sample model."""
    calls: list[tuple[str, str, str | None]] = []
    for template, operations in client.app.openapi()["paths"].items():  # type: ignore[attr-defined]
        models: list[str | None] = [*IN_SCOPE, *OUT_OF_SCOPE] if "{model_id}" in template else [None]
        for model in models:
            path = template.replace("{version}", "1").replace("{model_id}", model or "")
            assert "{" not in path, f"give {template} a sample value here"
            calls += [(method.upper(), path, model) for method in sorted(operations)]
    return calls


def expected(path: str, model: str | None, who: str) -> int | None:
    """The refusal this caller must get (401 or 403), or None when auth lets the request through."""
    if path in PROBES:
        return None
    if path == "/metrics":
        return None if who in ("metrics", "admin") else 401
    if path.startswith("/v2/repository/models/"):  # load/unload: the admin token only
        return None if who == "admin" else 401
    if who in ("none", "wrong", "metrics"):
        return 401
    if who == "scoped" and model in OUT_OF_SCOPE:
        return 403
    return None  # the index, and every model route within the token's scope


def test_every_route_with_every_kind_of_token(client: TestClient) -> None:
    calls = _calls(client)
    paths = {re.sub(r"[a-z]+-[0-9a-z]+", "M", p) for _, p, _ in calls}
    assert {"/v2/models/M/ready", "/v2/models/M/infer", "/predictions/M", "/metrics"} <= paths
    assert paths >= PROBES
    checked = 0
    for method, path, model in calls:
        for who, token in TOKENS.items():
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            r = client.request(method, path, headers=headers)
            refusal = expected(path, model, who)
            where = (method, path, who, r.status_code, r.text[:200])
            if refusal is None:
                assert r.status_code not in (401, 403), where
                assert r.status_code < 500 or r.status_code == 503, where
            else:
                assert r.status_code == refusal, where
                assert r.json()["error"], where
            if refusal == 401:
                assert r.headers["www-authenticate"] == "Bearer", where
            if refusal == 403:  # names the model asked for, whether or not it exists
                assert r.json()["error"] == f"this token may not use model {model!r}", where
            checked += 1
    assert checked == len(calls) * len(TOKENS)


def test_the_index_shows_a_scoped_token_only_its_models(client: TestClient) -> None:
    def names(token: str) -> list[str]:
        r = client.post("/v2/repository/index", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200, r.text
        return [e["name"] for e in r.json()]

    assert names("acme-token") == ["emb-0000", "qa-0000", "qa-0001"]
    everything = ["broken-0000", "cls-0000", "emb-0000", "qa-0000", "qa-0001"]
    assert names("all-token") == names("admin-token") == everything


def test_readiness_names_failed_models_only_to_the_metrics_token(client: TestClient) -> None:
    # broken-0000 failed to load: not ready, and who may read model names learns which model failed
    anonymous = client.get("/v2/health/ready")
    assert anonymous.status_code == 503
    assert "failed_models" not in anonymous.json() and anonymous.json()["failed_count"] == 1
    operator = client.get("/v2/health/ready", headers={"Authorization": "Bearer metrics-token"})
    assert operator.status_code == 503 and list(operator.json()["failed_models"]) == ["broken-0000"]


def test_without_an_admin_token_load_follows_the_scope(demo_repo: Path) -> None:
    bearer = {"Authorization": "Bearer acme-token"}
    with _client(demo_repo, tokens=["acme-token qa-*"]) as client:
        r = client.post("/v2/repository/models/cls-0000/unload", headers=bearer)
        assert r.status_code == 403 and "cls-0000" in r.json()["error"]
        assert client.post("/v2/repository/models/qa-0000/unload", headers=bearer).status_code == 200


def test_metrics_stay_open_without_tokens_or_when_made_public(demo_repo: Path) -> None:
    assert _client(demo_repo).get("/metrics").status_code == 200
    # only an admin token: inference is open, so model names are not protected
    assert _client(demo_repo, admin_token="admin-token").get("/metrics").status_code == 200
    assert _client(demo_repo, tokens=["t"]).get("/metrics").status_code == 401
    assert _client(demo_repo, tokens=["t"], metrics_public=True).get("/metrics").status_code == 200


def test_repository_api_switched_off_refuses_load_but_lists(demo_repo: Path) -> None:
    client = _client(demo_repo, tokens=["t"], repository_api=False)
    bearer = {"Authorization": "Bearer t"}
    r = client.post("/v2/repository/models/qa-0000/load", headers=bearer)
    assert r.status_code == 403 and "switched off" in r.json()["error"]
    assert client.post("/v2/repository/index", headers=bearer).status_code == 200


def test_unknown_model_hint_is_said_in_http(tmp_path: Path) -> None:
    r = _client(tmp_path).get("/predictions/m-0")
    assert r.status_code == 404
    assert r.json()["hint"] == "POST /v2/repository/index lists the models this server knows"


def test_a_shed_answers_only_callers_the_auth_rules_let_through(client: TestClient) -> None:
    """The early shed (server/shed.py) runs before the routes: it must not tell a stranger, by a 503 with
    the model's name, that a model exists and is loaded."""
    admin = {"Authorization": "Bearer admin-token"}
    assert (
        client.post("/v2/repository/models/qa-0000/load", headers=admin).status_code == 200
    )  # the walk unloads
    first = client.get("/predictions/qa-0000", headers=admin)
    assert first.status_code == 200, first.text  # a batch is timed
    hopeless = {"inferpack-deadline-ms": "0.001"}
    for who in ("none", "wrong", "metrics"):
        token = TOKENS[who]
        headers = hopeless | ({"Authorization": f"Bearer {token}"} if token else {})
        assert client.get("/predictions/qa-0000", headers=headers).status_code == 401, who
    for who in ("scoped", "unscoped", "admin"):
        r = client.get("/predictions/qa-0000", headers=hopeless | {"Authorization": f"Bearer {TOKENS[who]}"})
        assert r.status_code == 503 and r.json()["model"] == "qa-0000", (who, r.text)
