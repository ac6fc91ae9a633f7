"""Schemathesis fuzzes every operation of the server's OpenAPI document against a real server on a real
port, and against the router in front of it, with the demo models' real ids: no answer may be a 5xx
other than a 503 the operation documents, and every answer must match its documented schema.

Bounded: FUZZ_EXAMPLES cases per operation and target (INFERPACK_FUZZ_EXAMPLES raises it), derandomised
so CI runs the same cases each time (INFERPACK_FUZZ_SEED=N runs other ones). The case count is printed (docs/security.md quotes it).
"""

from __future__ import annotations

import copy
import os
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
import uvicorn
from hypothesis import strategies as st
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import response_schema_conformance

from inferpack.fleet.router import create_router_app
from inferpack.plan import Plan, Resources, ServerGroup, ServerPlan
from inferpack.settings import AuthSettings, RouterSettings
from tests.integration.conftest import RunningServer, running_server

pytestmark = pytest.mark.slow
FUZZ_EXAMPLES = int(os.environ.get("INFERPACK_FUZZ_EXAMPLES", "15"))
FUZZ_SEED = os.environ.get("INFERPACK_FUZZ_SEED")  # set: other cases than CI's fixed ones
MODELS = ["qa-0000", "qa-0001", "cls-0000", "emb-0000", "broken-0000"]  # the demo repository's
ADMIN = {"Authorization": "Bearer fuzz-admin"}  # may call every route


def steered(doc: dict[str, Any]) -> dict[str, Any]:
    """The server's document with model ids narrowed to the demo repository's (and one unknown id), so
    positive cases reach real models; the negative cases take the document as it is."""
    doc = copy.deepcopy(doc)
    for operations in doc["paths"].values():
        for operation in operations.values():
            for param in operation.get("parameters", []):
                if param["name"] == "model_id":
                    param["schema"] = {"enum": [*MODELS, "zz-unknown-0000"]}
    return doc


class Thread:
    """An ASGI app on a real port (port 0) in a uvicorn thread."""

    def __init__(self, app: Any) -> None:
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "router did not start"
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.server.servers[0].sockets[0].getsockname()[1]}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="module")
def fleet(demo_repo: Path) -> Iterator[tuple[RunningServer, Thread]]:
    auth = AuthSettings(tokens=["fuzz-token"], admin_token="fuzz-admin")
    with running_server(demo_repo, inference_threads=1, lazy_load=True, auth=auth) as server:
        plan = Plan(
            created_by="test",
            groups=[
                ServerGroup(
                    name="local",
                    resources=Resources(cpu=1, memory_mb=1000),
                    servers=[ServerPlan(name="s0", models=MODELS)],
                )
            ],
        )
        router = Thread(create_router_app(plan, {"s0": server.url}, RouterSettings(), auth=auth))
        try:
            yield server, router
        finally:
            router.stop()


@dataclass
class Outcome:
    """What a fuzz run saw: statuses by operation, and the failures with a curl line to replay each."""

    statuses: dict[str, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))
    failures: list[str] = field(default_factory=list)

    @property
    def cases(self) -> int:
        return sum(sum(c.values()) for c in self.statuses.values())


def strategies(operation: Any, mode: GenerationMode) -> Any:
    """Cases for one operation: generated ones, and in positive mode also the document's own examples
    (the infer examples are well-formed requests that reach the models)."""
    generated = operation.as_strategy(generation_mode=mode)
    if mode is GenerationMode.NEGATIVE:
        return generated
    return st.one_of(generated, *operation.get_strategies_from_examples())


def fuzz(doc: dict[str, Any], base_url: str) -> Outcome:
    """Run every operation's cases against `base_url`: positive ones (valid by the document, real model
    ids) and negative ones (invalid by the document)."""
    outcome = Outcome()
    modes = [
        (schemathesis.openapi.from_dict(steered(doc)), GenerationMode.POSITIVE, FUZZ_EXAMPLES),
        (schemathesis.openapi.from_dict(doc), GenerationMode.NEGATIVE, max(1, FUZZ_EXAMPLES // 2)),
    ]
    with requests.Session() as session:
        for schema, mode, examples in modes:
            for result in schema.get_all_operations():
                fuzz_operation(result.ok(), mode, examples, Target(base_url, session), outcome)
    return outcome


@dataclass(frozen=True)
class Target:
    """Where cases go: a base URL and one keep-alive session."""

    base_url: str
    session: requests.Session


def fuzz_operation(
    operation: Any, mode: GenerationMode, examples: int, target: Target, outcome: Outcome
) -> None:
    """Run one operation's cases; record statuses, and failures: a 5xx other than a documented 503, or an
    answer its document does not describe."""
    documented = {str(code) for code in operation.definition.raw.get("responses", {})}
    seen = outcome.statuses[operation.label]

    @hypothesis.given(case=strategies(operation, mode))
    @hypothesis.seed(int(FUZZ_SEED or 0))
    @hypothesis.settings(
        max_examples=examples,
        deadline=None,
        derandomize=FUZZ_SEED is None,
        database=None,
        suppress_health_check=list(hypothesis.HealthCheck),
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
    )
    def run(case: Any) -> None:
        response = case.call(base_url=target.base_url, session=target.session, headers=ADMIN, timeout=60)
        status = response.status_code
        seen[status] += 1
        replay = case.as_curl_command(headers=ADMIN)
        if status >= 500 and not (status == 503 and "503" in documented):
            outcome.failures.append(f"{status} {response.text[:300]}\n  {replay}")
            return
        try:
            case.validate_response(response, checks=[response_schema_conformance])
        except AssertionError as exc:  # schemathesis raises a subclass naming the mismatch
            outcome.failures.append(f"{status} not as documented: {exc}\n  {replay}")

    try:
        run()
    except hypothesis.errors.Unsatisfiable:
        # an operation with nothing to get wrong (no parameters, no body) has no negative case
        assert mode is GenerationMode.NEGATIVE, operation.label


def test_fuzz_server_and_router(
    fleet: tuple[RunningServer, Thread], capsys: pytest.CaptureFixture[str]
) -> None:
    server, router = fleet
    doc = requests.get(f"{server.url}/openapi.json", timeout=30).json()
    started = time.perf_counter()
    outcomes = {"server": fuzz(doc, server.url), "router": fuzz(doc, router.url)}
    seconds = time.perf_counter() - started
    served = {name: o.statuses["POST /v2/models/{model_id}/infer"][200] for name, o in outcomes.items()}
    with capsys.disabled():
        print(
            f"\nschemathesis: {outcomes['server'].cases} cases against the server, "
            f"{outcomes['router'].cases} against the router ({FUZZ_EXAMPLES} per operation), "
            f"{sum(len(o.failures) for o in outcomes.values())} failures, {seconds:.1f} s"
        )
    problems = [f"[{name}] {f}" for name, o in outcomes.items() for f in o.failures]
    assert not problems, "\n".join(problems[:20])
    assert all(served.values()), f"no fuzzed inference reached a model: {served}"
    assert requests.get(f"{server.url}/v2/health/live", timeout=10).ok  # and it still serves
