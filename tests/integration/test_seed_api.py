"""The seed-compatible API (the reference's /predictions/{model}) against a real server."""

from __future__ import annotations

import httpx


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


def test_other_tasks_via_seed_api(client: httpx.Client) -> None:
    label = client.get("/predictions/cls-0000", params={"seq_0": "what a lovely day"}).json()["detail"]
    assert label in ("negative", "positive")
    emb = client.get("/predictions/emb-0000", params={"seq_0": "hello"}).json()["detail"]
    assert len(emb) == 384 and abs(sum(x * x for x in emb) - 1.0) < 1e-3


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
