"""The bearer-token file format, read by the server (the tokens it accepts) and by the load generator (the
token it sends): one token per line, blank lines and `#` comments ignored. Kubernetes mounts the same
Secret key (`tokens`) into both."""

from __future__ import annotations

from pathlib import Path

from inferpack.errors import ConfigError


def read_token_file(path: Path) -> list[str]:
    """The tokens of a tokens file, in order; an unreadable file raises ConfigError naming it."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"auth tokens file {path} cannot be read: {exc}") from exc
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
