"""Open Inference Protocol V2 against a real server: raw HTTP and the real tritonclient."""

from __future__ import annotations

import json
import struct

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.integration.conftest import RunningServer


def _qa_inputs(binary: bool, n: int = 1) -> list[triton.InferInput]:
    question = triton.InferInput("question", [n], "BYTES")
    context = triton.InferInput("context", [n], "BYTES")
    question.set_data_from_numpy(np.array([b"Who wrote the letter?"] * n, dtype=object), binary_data=binary)
    context.set_data_from_numpy(
        np.array([b"The letter was written by Margaret, a teacher from Leeds."] * n, dtype=object),
        binary_data=binary,
    )
    return [question, context]


@pytest.fixture
def tc(server: RunningServer) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(server.url.removeprefix("http://"))


def test_server_health_and_metadata(tc: triton.InferenceServerClient) -> None:
    assert tc.is_server_live() and tc.is_server_ready()
    meta = tc.get_server_metadata()
    assert meta["name"] == "inferpack" and "model_repository" in meta["extensions"]
    assert meta["device"]["requested"] == "auto" and meta["device"]["kind"] in ("cpu", "cuda")
    assert tc.is_model_ready("qa-0000") and not tc.is_model_ready("broken-0000")
    model = tc.get_model_metadata("qa-0000")
    assert [i["name"] for i in model["inputs"]] == ["question", "context"]
    assert model["versions"] == ["1"]


def test_tritonclient_default_binary_mode(tc: triton.InferenceServerClient) -> None:
    result = tc.infer("qa-0000", _qa_inputs(binary=True, n=3))
    answers = result.as_numpy("answer")
    assert answers.shape == (3,)
    context = "The letter was written by Margaret, a teacher from Leeds."
    assert all(a.decode() in context for a in answers)
    assert result.as_numpy("score").dtype == np.float32


def test_tritonclient_json_mode_matches_binary(tc: triton.InferenceServerClient) -> None:
    outputs = [
        triton.InferRequestedOutput("answer", binary_data=False),
        triton.InferRequestedOutput("score", binary_data=False),
    ]
    as_json = tc.infer("qa-0000", _qa_inputs(binary=False), outputs=outputs)
    as_binary = tc.infer("qa-0000", _qa_inputs(binary=True))
    answer_json = as_json.as_numpy("answer")[0]
    answer_json = answer_json.decode() if isinstance(answer_json, bytes) else str(answer_json)
    assert answer_json == as_binary.as_numpy("answer")[0].decode()
    assert as_json.as_numpy("score")[0] == pytest.approx(as_binary.as_numpy("score")[0], rel=1e-5)


def test_embeddings_and_classification(numeric_server: RunningServer) -> None:
    tc = triton.InferenceServerClient(numeric_server.url.removeprefix("http://"))
    text = triton.InferInput("text", [2], "BYTES")
    text.set_data_from_numpy(np.array([b"a cat sat", b"a dog ran"], dtype=object))
    emb = tc.infer("emb-0000", [text]).as_numpy("embedding")
    assert emb.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    probs = tc.infer("cls-0000", [text]).as_numpy("probabilities")
    assert probs.shape == (2, 2)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_repository_index_load_unload(tc: triton.InferenceServerClient) -> None:
    index = {m["name"]: m for m in tc.get_model_repository_index()}
    assert index["qa-0001"]["state"] == "READY"
    assert (
        index["broken-0000"]["state"] == "FAILED" and "safetensor" in index["broken-0000"]["reason"].lower()
    )
    tc.unload_model("qa-0001")
    assert not tc.is_model_ready("qa-0001")
    with pytest.raises(InferenceServerException, match="qa-0001"):
        tc.infer("qa-0001", _qa_inputs(binary=True))
    assert tc.infer("qa-0000", _qa_inputs(binary=True)).as_numpy("answer").shape == (1,)  # others unaffected
    tc.load_model("qa-0001")
    assert tc.is_model_ready("qa-0001")
    assert tc.infer("qa-0001", _qa_inputs(binary=True)).as_numpy("answer").shape == (1,)


def test_failed_model_load_is_reported_with_503(client: httpx.Client) -> None:
    r = client.post("/v2/repository/models/broken-0000/load")
    assert r.status_code == 503 and "broken-0000" in r.json()["error"]
    assert client.post("/v2/repository/models/nope/load").status_code == 404


def _infer(client: httpx.Client, model: str, body: object) -> httpx.Response:
    return client.post(f"/v2/models/{model}/infer", content=json.dumps(body).encode())


def test_v2_bad_inputs(client: httpx.Client) -> None:
    ok = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["fine"]}]}
    assert _infer(client, "cls-0000", ok).status_code == 200
    cases = {
        "not json": b"{",
        "no inputs": json.dumps({"inputs": []}).encode(),
        "shape mismatch": json.dumps(
            {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [3], "data": ["a"]}]}
        ).encode(),
        "wrong datatype": json.dumps(
            {"inputs": [{"name": "text", "datatype": "FP32", "shape": [1], "data": [1.0]}]}
        ).encode(),
        "bad shape": json.dumps(
            {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1, 2], "data": ["a", "b"]}]}
        ).encode(),
        "missing context": json.dumps(
            {"inputs": [{"name": "question", "datatype": "BYTES", "shape": [1], "data": ["q"]}]}
        ).encode(),
    }
    for name, body in cases.items():
        model = "qa-0000" if name == "missing context" else "cls-0000"
        r = client.post(f"/v2/models/{model}/infer", content=body)
        assert r.status_code == 400, name
        assert r.json()["error"], name


def test_deeply_nested_json_is_a_client_error(client: httpx.Client) -> None:
    # Deep nesting made json.loads raise RecursionError: a 500 "internal error".
    deep = b"[" * 100_000 + b"]" * 100_000
    for path in ("/v2/models/cls-0000/infer", "/predictions/cls-0000"):
        r = client.post(path, content=deep, headers={"content-type": "application/json"})
        assert r.status_code == 400, (path, r.text)
        assert "nested too deeply" in r.json()["error"]
    assert client.get("/predictions/cls-0000").status_code == 200


def test_v2_more_items_than_the_queue_holds_is_413(client: httpx.Client) -> None:
    # It was shed as 503 "0 requests queued (limit 64)" with Retry-After, though never admissible.
    texts = ["hello"] * 65  # the default server.batching.max_queue is 64
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}]}
    r = _infer(client, "cls-0000", body)
    assert r.status_code == 413, r.text
    assert "65 items" in r.json()["error"] and "at most 64 items per request" in r.json()["hint"]
    body["inputs"][0]["shape"], body["inputs"][0]["data"] = [64], texts[:64]
    assert _infer(client, "cls-0000", body).status_code == 200


def test_v2_non_utf8_binary_text_rejected(client: httpx.Client) -> None:
    raw = b"\xff\xfe\xfd"
    blob = struct.pack("<I", len(raw)) + raw
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "text",
                    "datatype": "BYTES",
                    "shape": [1],
                    "parameters": {"binary_data_size": len(blob)},
                }
            ]
        }
    ).encode()
    r = client.post(
        "/v2/models/cls-0000/infer",
        content=head + blob,
        headers={"Inference-Header-Content-Length": str(len(head))},
    )
    assert r.status_code == 400 and "UTF-8" in r.json()["error"]


def test_v2_versions_and_unknowns(client: httpx.Client) -> None:
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["x"]}]}
    assert client.post("/v2/models/cls-0000/versions/1/infer", content=json.dumps(body)).status_code == 200
    assert client.post("/v2/models/cls-0000/versions/7/infer", content=json.dumps(body)).status_code == 404
    assert client.get("/v2/models/cls-0000/versions/7").status_code == 404
    assert _infer(client, "missing-model", body).status_code == 404
    r = _infer(client, "cls-0000", {**body, "outputs": [{"name": "nope"}]})
    assert r.status_code == 400 and "nope" in r.json()["error"]


def test_metrics_count_requests(client: httpx.Client) -> None:
    client.get("/predictions/qa-0000")
    text = client.get("/metrics").text
    assert 'inferpack_requests_total{api="seed",code="200",model="qa-0000"}' in text
    assert "inferpack_batch_size_bucket" in text
    assert "inferpack_batch_rows_bucket" in text and "inferpack_batch_models_bucket" in text
    assert "inferpack_models_loaded" in text
