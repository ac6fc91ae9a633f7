"""What a request costs the server besides its forward: no route hops to FastAPI's thread pool, and a
serving process keeps its long-lived heap out of the garbage collector's full collections."""

from __future__ import annotations

import inspect
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from inferpack.server.app import create_app
from inferpack.settings import AuthSettings, ServerSettings


def _routes(routes: list[Any]) -> Iterator[APIRoute]:
    """Every API route, those of included routers too (FastAPI 0.165 keeps them in `original_router`)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from _routes(included.routes)


def _calls(dependant: Dependant) -> Iterator[tuple[str, Any]]:
    """Every callable FastAPI runs for a route: the endpoint and its dependencies, nested ones too."""
    if dependant.call is not None:
        yield getattr(dependant.call, "__qualname__", repr(dependant.call)), dependant.call
    for sub in dependant.dependencies:
        yield from _calls(sub)


def _runs_on_the_loop(call: Any) -> bool:
    """FastAPI awaits coroutine functions (and objects whose __call__ is one) on the event loop; anything
    else it sends to its thread pool."""
    plain = inspect.isfunction(call) or inspect.ismethod(call)
    return inspect.iscoroutinefunction(call if plain else type(call).__call__)


def test_no_route_runs_anything_on_the_thread_pool(demo_repo: Path) -> None:
    # tokens set, so every auth rule is in play (the dependencies are the same without them)
    settings = ServerSettings(
        repository=str(demo_repo),
        models=[],
        auth=AuthSettings(tokens=["t"], admin_token="a", metrics_token="m"),
    )
    app = create_app(settings)
    routes = list(_routes(app.routes))
    assert any(r.path == "/predictions/{model_id}" for r in routes)
    assert any(r.path == "/v2/models/{model_id}/infer" for r in routes)
    checked = 0
    for route in routes:
        for name, call in _calls(route.dependant):
            assert _runs_on_the_loop(call), f"{route.path}: {name} is not async: FastAPI runs it on a thread"
            checked += 1
    assert checked > 2 * len(routes)  # the auth rules and their bearer scheme were walked too


def test_a_serving_process_freezes_its_long_lived_heap() -> None:
    # in a child process: freezing the test process's own heap would outlive this test
    code = textwrap.dedent(
        """
        import gc
        from inferpack.server.run import settle_heap
        frozen = settle_heap()
        assert frozen == gc.get_freeze_count() > 100_000, frozen
        import transformers  # imported by settle_heap: nothing for a first request to import
        gc.collect()
        print(frozen, len(gc.get_objects(generation=2)))
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    frozen, oldest = (int(x) for x in done.stdout.split())
    # a full collection walks the oldest generation: it now holds a sliver of what was frozen
    assert oldest < frozen / 20, (oldest, frozen)
