"""Run a server process: uvicorn with the app, graceful drain on SIGTERM/SIGINT."""

from __future__ import annotations

import logging

import uvicorn

from inferpack.server.app import create_app
from inferpack.settings import ServerSettings


def serve(settings: ServerSettings, *, log_level: str = "info") -> None:
    """Serve until SIGTERM/SIGINT: stop accepting, finish in-flight requests (up to the drain timeout),
    drain every model's queue, then exit."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        access_log=False,  # one line per request costs more than a MiniLM forward's framework share
        timeout_graceful_shutdown=int(settings.drain_timeout_s) or None,
        limit_concurrency=None,
        backlog=2048,
    )
    uvicorn.Server(config).run()
