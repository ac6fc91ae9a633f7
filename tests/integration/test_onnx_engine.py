"""The onnxruntime engine through real servers on port 0: ONNX versions answer as eager fp32 does, a cold
model answers from its eager source until its session takes over (no failed request), and an unloaded
model starts over."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import running_server
from tests.onnx_models import QUESTIONS, onnx_repo


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("onnx-server")
    _, ids = onnx_repo(root, count=2)
    return root, ids


def _ask(c: httpx.Client, model_id: str) -> list[object]:
    """The seed API's answers (the QA span) to every question."""
    out = []
    for q in QUESTIONS:
        r = c.get(f"/predictions/{model_id}", params={"seq_0": q.text, "seq_1": q.text_pair})
        assert r.status_code == 200, r.text
        out.append(r.json())
    return out


def _swaps(c: httpx.Client) -> float:
    found = re.search(r"^inferpack_runtime_swaps_total (\S+)$", c.get("/metrics").text, re.M)
    assert found, "the swap counter is exported"
    return float(found.group(1))


def _until_swaps(c: httpx.Client, count: float, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while _swaps(c) < count:
        assert time.monotonic() < deadline, "the ONNX Runtime session never took over"
        time.sleep(0.05)


@pytest.mark.slow
def test_onnx_engine_answers_as_eager_through_the_tier_swap_and_after_unload(
    repo: tuple[Path, list[str]],
) -> None:
    root, ids = repo
    with (
        running_server(root, models=ids[:1], engine="eager", dtype="fp32") as eager,
        httpx.Client(base_url=eager.url, timeout=60) as c,
    ):
        expected = _ask(c, ids[0])
        assert c.get(f"/v2/models/{ids[0]}").json()["platform"] == "pytorch_safetensors"
    with (
        running_server(root, models=[], lazy_load=True, engine="onnxruntime") as s,
        httpx.Client(base_url=s.url, timeout=60) as c,
    ):
        first = c.get(
            f"/predictions/{ids[0]}", params={"seq_0": QUESTIONS[0].text, "seq_1": QUESTIONS[0].text_pair}
        )
        assert first.headers["x-inferpack-model-load"] == "cold"
        meta = c.get(f"/v2/models/{ids[0]}").json()
        assert (meta["platform"], meta["versions"][-1], meta["parameters"]["dtype"]) == (
            "onnxruntime_onnx",
            "2",
            "fp32",
        )
        during = []
        while _swaps(c) < 1:  # answers while the session is prepared, then after it took over
            during.append(_ask(c, ids[0]))
        after = _ask(c, ids[0])
        assert all(got == expected for got in [*during, after])  # the same answer spans throughout
        # the other model still loads and swaps on its own
        _ask(c, ids[1])
        _until_swaps(c, 2)
        # unloading frees both runtimes; the next request is cold again and the tier starts over
        assert c.post(f"/v2/repository/models/{ids[0]}/unload").status_code == 200
        again = c.get(
            f"/predictions/{ids[0]}", params={"seq_0": QUESTIONS[0].text, "seq_1": QUESTIONS[0].text_pair}
        )
        assert again.headers["x-inferpack-model-load"] == "cold"
        _until_swaps(c, 3)
        assert _ask(c, ids[0]) == expected


def _mixed_batches(c: httpx.Client) -> dict[str, float]:
    found = re.findall(r'^inferpack_mixed_batches\{runtime="(\w+)"\} (\S+)$', c.get("/metrics").text, re.M)
    return {runtime: float(count) for runtime, count in found}


@pytest.mark.slow
def test_the_default_engine_runs_sessions_beside_eager_with_the_same_answers(
    repo: tuple[Path, list[str]],
) -> None:
    root, ids = repo
    with (
        running_server(root, models=ids, engine="eager", dtype="fp32") as eager,
        httpx.Client(base_url=eager.url, timeout=60) as c,
    ):
        expected = {m: _ask(c, m) for m in ids}
    with (
        running_server(root, models=ids, dtype="fp32") as s,  # the default engine: auto -> mixed here
        httpx.Client(base_url=s.url, timeout=60) as c,
    ):
        _until_swaps(c, len(ids))  # every model's session joined its eager module
        meta = c.get(f"/v2/models/{ids[0]}").json()
        assert (meta["platform"], meta["versions"]) == ("pytorch_safetensors", ["1", "2"])  # eager's version
        for _ in range(4):  # enough batches of one for both runtimes to be measured and chosen
            for model_id in ids:
                assert _ask(c, model_id) == expected[model_id]
        runs = _mixed_batches(c)
        assert set(runs) == {"eager", "onnxruntime"} and min(runs.values()) >= 3 * len(ids)
