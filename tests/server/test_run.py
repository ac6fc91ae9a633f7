"""Starting a server process: a port that is taken is refused before any model loads."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from inferpack.errors import ConfigError
from inferpack.server.run import check_port_free, serve
from inferpack.settings import ServerSettings


def test_a_taken_port_is_refused_before_loading(tmp_path: Path) -> None:
    # uvicorn bound only after every model had loaded, then exited with status 3 and its own ERROR line.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = ServerSettings(repository=str(tmp_path / "absent"), host="127.0.0.1", port=port)
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}") as raised:
            serve(settings)  # the repository does not exist either: the port is checked first
        assert raised.value.hint is not None and "--port" in raised.value.hint


def test_a_free_port_and_port_zero_pass() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    check_port_free("127.0.0.1", port)
    check_port_free("127.0.0.1", 0)
