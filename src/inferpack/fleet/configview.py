"""`inferpack config show`: every effective setting with where its value came from.

Sources, highest precedence first (as `inferpack.settings` applies them): flag (values a command passes),
env (`INFERPACK_SECTION__KEY`), file (the TOML config), default. The source of a value is the highest one
that sets it or any section above it (an env var holding a whole section as JSON sets all its keys).
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from inferpack.errors import ConfigError
from inferpack.settings import Settings, load_settings, resolve_config_path

Source = Literal["flag", "env", "file", "default"]
ENV_PREFIX = "INFERPACK_"
_NOT_SETTINGS = {"config"}  # INFERPACK_CONFIG names the file; it is not a setting


def flatten(values: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """Nested dicts -> {path: leaf}; lists and scalars are leaves."""
    out: dict[tuple[str, ...], Any] = {}
    for key, value in values.items():
        path = (*prefix, key.lower())
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, path))
        else:
            out[path] = value
    return out


def env_values(environ: Mapping[str, str]) -> dict[tuple[str, ...], Any]:
    """Settings paths set by `INFERPACK_*` variables (nested with `__`; a JSON object sets a section)."""
    out: dict[tuple[str, ...], Any] = {}
    for key, raw in environ.items():
        if not key.upper().startswith(ENV_PREFIX):
            continue
        path = tuple(part.lower() for part in key[len(ENV_PREFIX) :].split("__"))
        if not path[0] or path[0] in _NOT_SETTINGS:
            continue
        value: Any = raw
        if raw.lstrip().startswith("{"):
            try:
                value = json.loads(raw)
            except json.JSONDecodeError:
                value = raw
        if isinstance(value, dict):
            out.update(flatten(value, path))
        else:
            out[path] = value
    return out


def file_values(path: Path | None) -> dict[tuple[str, ...], Any]:
    """Settings paths set by the TOML config file."""
    if path is None:
        return {}
    try:
        with path.open("rb") as f:
            return flatten(tomllib.load(f))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc


def _covered(path: tuple[str, ...], keys: Mapping[tuple[str, ...], Any]) -> bool:
    return any(path[:i] in keys for i in range(1, len(path) + 1))


def provenance(
    settings: Settings,
    *,
    config_path: Path | None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> list[tuple[str, Any, Source]]:
    """(dotted key, effective value, source) for every leaf setting, in declaration order."""
    flags = flatten(overrides or {})
    env = env_values(os.environ if environ is None else environ)
    file = file_values(config_path)
    rows: list[tuple[str, Any, Source]] = []
    for path, value in flatten(settings.model_dump(mode="json")).items():
        source: Source
        if _covered(path, flags):
            source = "flag"
        elif _covered(path, env):
            source = "env"
        elif _covered(path, file):
            source = "file"
        else:
            source = "default"
        rows.append((".".join(path), value, source))
    return rows


def parse_assignments(items: list[str]) -> dict[str, Any]:
    """`section.key=value` pairs (values as JSON when they parse, else strings) -> nested overrides."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = out
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: {part} is both a value and a section")
        node[leaf] = value
    return out


def show(config: Path | None, overrides: dict[str, Any]) -> tuple[Path | None, list[tuple[str, Any, Source]]]:
    """The config file in force and the provenance rows of the effective settings."""
    path = resolve_config_path(config)
    settings = load_settings(config, overrides)
    return path, provenance(settings, config_path=path, overrides=overrides)
