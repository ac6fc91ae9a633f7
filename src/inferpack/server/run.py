"""Run a server process: uvicorn with the app, graceful drain on SIGTERM/SIGINT."""

from __future__ import annotations

import gc
import logging
import socket

import uvicorn

from inferpack.errors import ConfigError
from inferpack.runtime.skeletons import preload_libraries
from inferpack.server.app import create_app
from inferpack.server.protocol import ShedHttpToolsProtocol
from inferpack.settings import ServerSettings

log = logging.getLogger("inferpack.server")


def settle_heap() -> int:
    """Import what serving needs, then move every object alive now out of the cyclic garbage collector's
    sight (`gc.freeze`); returns how many objects that was.

    After the imports the heap holds ~380k objects (torch, transformers, FastAPI, pydantic), nearly all
    alive until the process exits. Without this, every full collection walks them all: measured here,
    220-260 ms of CPU (with 10 models loaded) in which the collecting thread holds the GIL, so the
    inference threads and the event loop stop. Full collections follow allocation-heavy phases (model
    loads and evictions in a lazy server), rarely steady traffic. Frozen, a full collection walks only
    what was made later: models, requests. Called before any model loads, so an unloaded model's
    objects stay collectable; garbage is collected first, so nothing already dead is kept."""
    preload_libraries()
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def check_port_free(host: str, port: int) -> None:
    """ConfigError when `host:port` cannot be bound. uvicorn binds only after start-up, once every model
    has loaded (minutes for a large repository), and then exits with status 3 and its own ERROR line;
    checking first fails at once, saying what to do. (A port taken in between still fails in uvicorn.)"""
    if port == 0:
        return
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc}", hint="pass --host an address") from exc
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind(address)
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                hint="stop what uses the port, or pass another --port (0 picks a free one)",
            ) from exc


def serve(settings: ServerSettings, *, log_level: str = "info") -> None:
    """Serve until SIGTERM/SIGINT: stop accepting, finish in-flight requests (up to the drain timeout),
    drain every model's queue, then exit."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    check_port_free(settings.host, settings.port)
    app = create_app(settings)
    log.debug("%d long-lived objects frozen out of garbage collection", settle_heap())
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        access_log=False,  # one line per request costs more than a MiniLM forward's framework share
        http=ShedHttpToolsProtocol,  # sheds answered by the protocol: no ASGI task, one write
        timeout_graceful_shutdown=int(settings.drain_timeout_s) or None,
        limit_concurrency=None,
        backlog=2048,
    )
    uvicorn.Server(config).run()
