from __future__ import annotations

from pathlib import Path

import pytest

from inferpack.errors import ConfigError
from inferpack.settings import load_settings


def test_precedence_flag_over_env_over_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "inferpack.toml"
    cfg.write_text("[server]\nport = 7000\nhost = '0.0.0.0'\n[server.batching]\nmax_batch_size = 4\n")
    monkeypatch.setenv("INFERPACK_SERVER__PORT", "7001")
    s = load_settings(cfg)
    assert (s.server.port, s.server.host, s.server.batching.max_batch_size) == (7001, "0.0.0.0", 4)
    s = load_settings(cfg, {"server": {"port": 7002}})
    assert (s.server.port, s.server.host) == (7002, "0.0.0.0")


def test_unknown_key_is_an_error(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[server]\nprot = 1\n")
    with pytest.raises(ConfigError, match="invalid settings"):
        load_settings(cfg)


def test_missing_config_file_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.toml")
