"""`inferpack config show`: effective values and where each came from; the fleet settings section."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from inferpack.cli import app
from inferpack.errors import ConfigError
from inferpack.fleet.configview import env_values, parse_assignments, provenance, show
from inferpack.settings import load_settings


def _sources(rows: list[tuple[str, object, str]]) -> dict[str, tuple[object, str]]:
    return {key: (value, source) for key, value, source in rows}


def test_each_value_names_its_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "inferpack.toml"
    cfg.write_text("[fleet]\nservers = 3\ncopies = 3\n[fleet.test]\nusers = 7\n")
    monkeypatch.setenv("INFERPACK_FLEET__COPIES", "1")
    monkeypatch.setenv("INFERPACK_FLEET__TEST", '{"duration_s": 5}')
    path, rows = show(cfg, parse_assignments(["fleet.base_port=0"]))
    got = _sources(rows)
    assert path == cfg
    assert got["fleet.servers"] == (3, "file")
    assert got["fleet.copies"] == (1, "env")
    assert got["fleet.base_port"] == (0, "flag")
    assert got["fleet.test.users"] == (7, "file")
    assert got["fleet.test.duration_s"] == (5.0, "env")
    assert got["fleet.router_port"] == (8100, "default")
    assert got["server.port"] == (8080, "default")


def test_env_parsing_ignores_the_config_variable() -> None:
    env = {"INFERPACK_CONFIG": "x.toml", "INFERPACK_SERVER__PORT": "9", "OTHER": "1"}
    assert env_values(env) == {("server", "port"): "9"}


def test_assignments_nest_and_parse_json() -> None:
    assert parse_assignments(["fleet.servers=4", "fleet.run_dir=/tmp/x", 'server.models=["a"]']) == {
        "fleet": {"servers": 4, "run_dir": "/tmp/x"},
        "server": {"models": ["a"]},
    }
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_assignments(["fleet.servers"])


def test_provenance_defaults_without_sources() -> None:
    rows = provenance(load_settings(None), config_path=None, overrides={}, environ={})
    assert {source for _, _, source in rows} == {"default"}


def test_config_show_command_prints_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("INFERPACK_FLEET__SERVERS", "5")
    result = CliRunner().invoke(app, ["config", "show", "--json", "--set", "fleet.copies=1"])
    assert result.exit_code == 0, result.output
    assert '"fleet.servers",\n   5,\n   "env"' in result.output
    assert '"fleet.copies",\n   1,\n   "flag"' in result.output


def test_fleet_settings_validate(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[fleet]\nservers = 0\n")
    with pytest.raises(ConfigError, match="invalid settings"):
        load_settings(cfg)
