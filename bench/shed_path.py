"""CPU of one early shed in process, without sockets: what the server's Python does per shed request.

`bench/overload.py --shed-cost` measures a shed end to end (uvloop, the kernel's loopback, the generator
on the same cores). This isolates the Python: one server app on one MiniLM QA demo model (one request
served first, so the admission estimate knows a batch's time), then `--requests` hopeless requests (a 1 us
deadline) through each path, CPU time (`time.process_time`) per request, `--rounds` times:
- `asgi app`: the app's ASGI entry called directly (the shed's decision and answer, the app's own layers);
- `uvicorn http`: uvicorn's httptools protocol on a fake transport fed the raw request (parsing, the
  request-response cycle, its asyncio task, the app, uvicorn's `send`);
- `serve's protocol`: the same with `inferpack serve`'s protocol (`server/protocol.py`), when the source
  tree has one.
`--compare-src OTHER/src` also runs this script on another source tree (e.g. `git archive main src | tar -x
-C /tmp/base`), alternating round by round, so contention hits both alike.

    PYTHONPATH=src:bench .venv/bin/python bench/shed_path.py [--requests 20000] [--rounds 3]
        [--compare-src /tmp/base/src]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp, Message, Scope
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from inferpack.repository.demo import make_demo_models
from inferpack.server.app import create_app
from inferpack.settings import ServerSettings

QUERY = "seq_0=What%20is%20it&seq_1=A%20short%20context"


class NullTransport(asyncio.Transport):
    """Swallows what the protocol writes; counts the bytes (a check that answers were written)."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.bytes += len(data)

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def call_app(app: ASGIApp, path: str, headers: list[tuple[bytes, bytes]]) -> list[Message]:
    """One request through the app's ASGI entry; the messages it sent."""
    sent: list[Message] = []
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": QUERY.encode(),
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }
    first = True

    async def receive() -> Message:
        nonlocal first
        if first:
            first = False
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.sleep(3600)  # the client stays: a route's disconnect watch waits here
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


def connection(
    app: ASGIApp, protocol_class: type[HttpToolsProtocol]
) -> tuple[Callable[[bytes], None], ServerState]:
    """A connection of `protocol_class` serving `app` on a NullTransport: (feed, server state)."""
    config = Config(app, access_log=False, lifespan="off", http=protocol_class)
    config.load()
    state = ServerState()
    state.default_headers = [(b"date", b"Wed, 02 Dec 2026 17:00:00 GMT"), (b"server", b"uvicorn")]
    protocol = protocol_class(config=config, server_state=state, app_state={})
    protocol.connection_made(NullTransport())
    return protocol.data_received, state


async def measure(requests: int) -> dict[str, float]:
    """us of CPU per shed through each path this source tree has."""
    repo = Path(tempfile.gettempdir()) / "inferpack-shed-path-repo"
    model = make_demo_models(repo, 1, prefix="qa")[0]
    app = create_app(ServerSettings(repository=str(repo), models=[model], inference_threads=1))
    lifespan: asyncio.Queue[Message] = asyncio.Queue()
    await lifespan.put({"type": "lifespan.startup"})
    started = asyncio.Event()

    async def lifespan_send(message: Message) -> None:
        if message["type"] == "lifespan.startup.complete":
            started.set()

    running = asyncio.create_task(app({"type": "lifespan", "state": {}}, lifespan.get, lifespan_send))
    await started.wait()
    path = f"/predictions/{model}"
    host = [(b"host", b"127.0.0.1")]
    served = await call_app(app, path, host)  # a batch timed: the admission estimate can decide
    assert served[0]["status"] == 200, served
    hopeless = [*host, (b"inferpack-deadline-ms", b"0.001")]
    assert (await call_app(app, path, hopeless))[0]["status"] == 503
    out: dict[str, float] = {}
    cpu0 = time.process_time()
    for _ in range(requests):
        await call_app(app, path, hopeless)
    out["asgi app"] = (time.process_time() - cpu0) / requests * 1e6
    raw = f"GET {path}?{QUERY} HTTP/1.1\r\nHost: 127.0.0.1\r\ninferpack-deadline-ms: 0.001\r\n\r\n".encode()
    protocols: dict[str, type[HttpToolsProtocol]] = {"uvicorn http": HttpToolsProtocol}
    try:
        from inferpack.server.protocol import ShedHttpToolsProtocol

        protocols["serve's protocol"] = ShedHttpToolsProtocol
    except ImportError:  # an older tree: the shed is an ASGI middleware only
        pass
    for name, protocol_class in protocols.items():
        feed, state = connection(app, protocol_class)
        cpu0 = time.process_time()
        for _ in range(requests):
            feed(raw)
            if state.tasks:  # the ASGI path answers in a task
                await asyncio.gather(*state.tasks)
        out[name] = (time.process_time() - cpu0) / requests * 1e6
        assert state.total_requests == requests, (name, state.total_requests)
    await lifespan.put({"type": "lifespan.shutdown"})
    await running
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=20000, help="sheds per path and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per source tree, alternating")
    parser.add_argument("--compare-src", default=None, help="also run on this source tree's src folder")
    parser.add_argument("--once", action="store_true", help=argparse.SUPPRESS)  # one round, this process
    args = parser.parse_args()
    if args.once:
        for name, us in asyncio.run(measure(args.requests)).items():
            print(f"{name}\t{us:.1f}")
        return
    trees = {"this tree": None, "compared": args.compare_src} if args.compare_src else {"this tree": None}
    results: dict[str, dict[str, list[float]]] = {tree: {} for tree in trees}
    for r in range(args.rounds):
        for tree, src in trees.items() if r % 2 == 0 else reversed(trees.items()):
            env = dict(os.environ)
            if src is not None:
                env["PYTHONPATH"] = os.pathsep.join([str(Path(src).resolve()), env.get("PYTHONPATH", "")])
            cmd = [sys.executable, __file__, "--once", "--requests", str(args.requests)]
            out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
            for line in out.splitlines():
                name, value = line.split("\t")
                results[tree].setdefault(name, []).append(float(value))
            print(
                f"round {r + 1}, {tree}: "
                + ", ".join(f"{n} {v[-1]:.1f} us" for n, v in results[tree].items())
            )
    print("us of CPU per shed (in process, no sockets), per round; then the mean:")
    for tree, paths in results.items():
        for name, values in paths.items():
            each = "  ".join(f"{v:.1f}" for v in values)
            print(f"  {tree:<10} {name:<17} {each}   mean {sum(values) / len(values):.1f}")


if __name__ == "__main__":
    main()
