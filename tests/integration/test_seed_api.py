"""The seed-compatible API (the reference's /predictions/{model}) against a real server."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import httpx
import numpy as np
import pytest
from tokenizers import Encoding, Tokenizer

from inferpack.repository import LocalRepository
from inferpack.runtime.tasks import MAX_ANSWER_TOKENS, TextInput, TextTokenizer


def test_health(client: httpx.Client) -> None:
    assert client.get("/").json() == {"Status": "Healthy"}


def test_get_with_defaults_answers_from_the_default_context(client: httpx.Client) -> None:
    r = client.get("/predictions/qa-0000")
    assert r.status_code == 200
    answer = r.json()["detail"]
    assert isinstance(answer, str) and answer
    from inferpack.server.seed import DEFAULT_CONTEXT

    assert answer in DEFAULT_CONTEXT
    assert r.headers["x-inferpack-model-load"] == "warm"


def test_answer_is_a_span_of_the_given_context(client: httpx.Client) -> None:
    context = "Alice planted seven apple trees behind the old mill in the spring of 1999."
    r = client.get("/predictions/qa-0001", params={"seq_0": "How many trees?", "seq_1": context})
    assert r.status_code == 200
    assert r.json()["detail"] in context


def test_post_form_and_json_agree_with_get(client: httpx.Client) -> None:
    params = {"seq_0": "Where is the mill?", "seq_1": "The mill stands by the river, north of the town."}
    via_get = client.get("/predictions/qa-0000", params=params).json()
    via_form = client.post("/predictions/qa-0000", data=params).json()
    via_json = client.post("/predictions/qa-0000", json=params).json()
    assert via_get == via_form == via_json


def test_unknown_model_404_names_it(client: httpx.Client) -> None:
    r = client.get("/predictions/no-such-model")
    assert r.status_code == 404
    assert "no-such-model" in r.json()["error"]


def test_path_like_and_invalid_ids_rejected(client: httpx.Client) -> None:
    r = client.get("/predictions/a..b")
    assert r.status_code == 400 and "invalid model id" in r.json()["error"]
    r = client.get("/predictions/%2E%2E%2Fetc%2Fpasswd")
    assert r.status_code in (400, 404) and "error" in r.json()
    r = client.get("/predictions/" + "x" * 200)
    assert r.status_code == 400


def test_broken_model_reported_others_keep_serving(client: httpx.Client) -> None:
    r = client.get("/predictions/broken-0000")
    assert r.status_code == 503
    assert "broken-0000" in r.json()["error"]
    assert client.get("/predictions/qa-0000").status_code == 200


def test_other_tasks_via_seed_api(numeric_client: httpx.Client) -> None:
    label = numeric_client.get("/predictions/cls-0000", params={"seq_0": "what a lovely day"}).json()
    assert label["detail"] in ("negative", "positive")
    emb = numeric_client.get("/predictions/emb-0000", params={"seq_0": "hello"}).json()["detail"]
    # pooled and normalised in fp32 whatever the compute dtype: unit length to fp32 precision
    assert len(emb) == 384 and abs(sum(x * x for x in emb) - 1.0) < 1e-5


def test_bad_seed_bodies(client: httpx.Client) -> None:
    r = client.post(
        "/predictions/qa-0000", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 400 and "JSON" in r.json()["error"]
    r = client.post("/predictions/qa-0000", content=b"\xff\xfe", headers={"content-type": "text/plain"})
    assert r.status_code == 400
    r = client.post("/predictions/qa-0000", json={"seq_0": 5})
    assert r.status_code == 400 and "seq_0" in r.json()["error"]


def test_very_long_text_is_truncated_not_rejected(client: httpx.Client) -> None:
    context = "The quick brown fox jumps over the lazy dog. " * 400
    r = client.post("/predictions/qa-0000", json={"seq_0": "What jumps?", "seq_1": context})
    assert r.status_code == 200 and r.json()["detail"] in context
    r = client.post("/predictions/qa-0000", json={"seq_0": "why " * 500, "seq_1": "short context here"})
    assert r.status_code == 200


def test_oversized_body_413(client: httpx.Client) -> None:
    r = client.post("/predictions/qa-0000", json={"seq_0": "q", "seq_1": "x" * 2_000_000})
    assert r.status_code == 413 and "limit" in r.json()["error"]
    assert client.get("/predictions/qa-0000").status_code == 200


def _tokens(demo_repo: Path, model_id: str, question: str, context: str) -> Encoding:
    """The request's tokens as the server sees them (same tokenizer file, same length limit)."""
    repo = LocalRepository(demo_repo)
    manifest = repo.manifest(model_id)
    path = repo.resolve_file(model_id, 1, manifest.tokenizer)
    tokenizer = TextTokenizer(Tokenizer.from_file(str(path)), manifest.max_sequence_length)
    return tokenizer.encode([TextInput(question, context)]).encodings[0]


def test_postprocess_false_answers_qa_logits_per_token(client: httpx.Client, demo_repo: Path) -> None:
    question, context = "Who planted the trees?", "Alice planted seven apple trees behind the old mill."
    params = {"seq_0": question, "seq_1": context}
    decoded = client.get("/predictions/qa-0000", params=params).json()["detail"]
    r = client.get("/predictions/qa-0000", params={**params, "postprocess": "false"})
    assert r.status_code == 200 and r.headers["x-inferpack-model-load"] == "warm"
    raw = r.json()["detail"]
    assert set(raw) == {"start_logits", "end_logits"}
    enc = _tokens(demo_repo, "qa-0000", question, context)
    assert len(raw["start_logits"]) == len(raw["end_logits"]) == len(enc.ids)
    # the best span over context tokens (end >= start, bounded length) is the decoded answer
    ctx = [i for i, s in enumerate(enc.sequence_ids) if s == 1]
    start, end = np.array(raw["start_logits"])[ctx], np.array(raw["end_logits"])[ctx]
    first, last = np.indices((len(ctx), len(ctx)))
    scores = np.where(
        (last >= first) & (last - first < MAX_ANSWER_TOKENS), start[:, None] + end[None, :], -np.inf
    )
    i, j = np.unravel_index(int(np.argmax(scores)), scores.shape)
    assert context[enc.offsets[ctx[i]][0] : enc.offsets[ctx[j]][1]] == decoded


def test_postprocess_false_answers_logits_and_embeddings(client: httpx.Client) -> None:
    text = "what a lovely day"
    raw = client.post("/predictions/cls-0000", json={"seq_0": text, "postprocess": False}).json()["detail"]
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [text]}]}
    outputs = {
        o["name"]: o["data"] for o in client.post("/v2/models/cls-0000/infer", json=body).json()["outputs"]
    }
    logits = np.array(raw["logits"])
    np.testing.assert_allclose(np.exp(logits) / np.exp(logits).sum(), outputs["probabilities"], rtol=1e-5)
    assert outputs["label"] == [client.get("/predictions/cls-0000", params={"seq_0": text}).json()["detail"]]
    raw = client.post("/predictions/emb-0000", data={"seq_0": "hello", "postprocess": "0"}).json()["detail"]
    decoded = client.get("/predictions/emb-0000", params={"seq_0": "hello"}).json()["detail"]
    assert set(raw) == {"embedding"} and len(raw["embedding"]) == 384
    np.testing.assert_allclose(raw["embedding"], decoded, rtol=1e-6)


def test_postprocess_accepts_true_false_1_0_in_any_case_and_names_the_field_otherwise(
    client: httpx.Client,
) -> None:
    for value in ("FALSE", "0", "False"):
        r = client.get("/predictions/cls-0000", params={"postprocess": value})
        assert r.status_code == 200 and "logits" in r.json()["detail"], value
    for value in ("TRUE", "1", "true"):
        assert client.get("/predictions/cls-0000", params={"postprocess": value}).json()["detail"] in (
            "negative",
            "positive",
        )
    bad = [
        client.get("/predictions/cls-0000", params={"postprocess": "maybe"}),
        client.post("/predictions/cls-0000", data={"postprocess": "no"}),
        client.post("/predictions/cls-0000", json={"postprocess": "2"}),
        client.post("/predictions/cls-0000", json={"postprocess": None}),
    ]
    for r in bad:
        assert r.status_code == 400 and "postprocess" in r.json()["error"], r.text


def test_each_request_is_logged_at_debug_with_model_status_and_latency(
    client: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    assert not logging.getLogger("inferpack.server.requests").isEnabledFor(logging.DEBUG)  # off by default
    caplog.set_level(logging.DEBUG, logger="inferpack.server.requests")
    assert client.get("/predictions/qa-0000").status_code == 200
    assert client.get("/predictions/no-such-model").status_code == 404
    lines = [r.getMessage() for r in caplog.records if r.name == "inferpack.server.requests"]
    assert any(
        re.fullmatch(r"request model=qa-0000 api=seed status=200 latency_ms=\d+\.\d", m) for m in lines
    )
    assert any("model=no-such-model api=seed status=404" in m for m in lines), lines
