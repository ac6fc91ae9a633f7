"""The OpenAPI document describes the V2 and repository routes precisely (what fuzzers and client
generators read), and the repository bodies are checked against the documented models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from inferpack.server import v2
from inferpack.server.app import create_app
from inferpack.server.v2_schema import INFER_BODY, InferenceRequest
from inferpack.settings import ServerSettings


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    return TestClient(create_app(ServerSettings(repository=str(tmp_path))))


def test_the_infer_routes_document_their_json_and_binary_bodies(client: TestClient) -> None:
    doc: dict[str, Any] = client.get("/openapi.json").json()
    for path in ("/v2/models/{model_id}/infer", "/v2/models/{model_id}/versions/{version}/infer"):
        operation = doc["paths"][path]["post"]
        content = operation["requestBody"]["content"]
        assert content["application/json"]["schema"] == {"$ref": "#/components/schemas/InferenceRequest"}
        assert content["application/octet-stream"]["schema"]["format"] == "binary"
        assert any(p["name"] == v2.HEADER_LENGTH for p in operation["parameters"])
        ok = operation["responses"]["200"]["content"]["application/json"]["schema"]
        assert ok == {"$ref": "#/components/schemas/InferenceResponse"}
    assert {"InferenceRequest", "RequestInput", "InferenceResponse"} <= set(doc["components"]["schemas"])
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    for operations in doc["paths"].values():
        for operation in operations.values():
            assert "422" not in operation["responses"]  # invalid requests answer 400 here
            for param in operation.get("parameters", []):
                if param["name"] == "model_id":
                    assert param["schema"]["pattern"].startswith("^[A-Za-z0-9]")


def test_the_documented_examples_are_what_the_parser_takes() -> None:
    for example in INFER_BODY["requestBody"]["content"]["application/json"]["examples"].values():
        InferenceRequest.model_validate(example["value"])
        parsed = v2.parse_request(json.dumps(example["value"]).encode(), None)
        assert [t.data for t in parsed.inputs] == [i["data"] for i in example["value"]["inputs"]]


@pytest.mark.parametrize(
    ("path", "body", "where"),
    [
        ("/v2/repository/models/m-0/load", {"parameters": {"version": "abc"}}, "parameters.version"),
        ("/v2/repository/models/m-0/load", {"parameters": {"version": -1}}, "parameters.version"),
        ("/v2/repository/index", {"ready": "maybe"}, "ready"),
    ],
)
def test_repository_bodies_are_checked_against_their_documents(
    client: TestClient, path: str, body: dict[str, Any], where: str
) -> None:
    r = client.post(path, json=body)
    assert r.status_code == 400 and r.json()["error"].startswith(f"invalid request body: {where}:")


def test_repository_bodies_may_be_empty_or_untyped_json(client: TestClient) -> None:
    assert client.post("/v2/repository/index").json() == []
    # tritonclient sends JSON without a JSON content type
    r = client.post(
        "/v2/repository/index", content=b'{"ready": true}', headers={"content-type": "text/plain"}
    )
    assert r.status_code == 200
    assert client.post("/v2/repository/models/m-0/load", content=b"not json").status_code == 400
