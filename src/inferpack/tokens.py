"""The bearer-token file format, read by the server and the router (the tokens they accept, with each one's
model scope) and by the load generator (the token it sends). Kubernetes mounts the same Secret key
(`tokens`) into all of them.

One token per line; blank lines and `#` comments are ignored. A line is the token, then optionally the
models it may use, separated by spaces:

    tenant-a-secret   acme-*  globex-qa-0001     # acme's models (a prefix) and one more model
    sha256:5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8   beta-*
    ops-secret                                   # no scope: every model

A scope entry ending in `*` is an id prefix, any other entry an exact model id; `*` alone means every
model. The token may be written as `sha256:<hex>` (the SHA-256 of the token) so the file need not hold
the secret itself; the load generator sends the first token written in plain. Pure parsing, no HTTP.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from inferpack.errors import ConfigError

HASH_PREFIX = "sha256:"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_COMMENT = re.compile(r"(^|\s)#.*$")  # a '#' inside a token is part of it


def digest(token: str | bytes) -> bytes:
    """The SHA-256 of a token: what the server keeps and compares (never the token itself)."""
    return hashlib.sha256(token.encode() if isinstance(token, str) else token).digest()


@dataclass(frozen=True)
class Scope:
    """The models a token may use: exact ids and id prefixes. `Scope.everything()` allows all."""

    ids: frozenset[str]
    prefixes: tuple[str, ...]
    unbounded: bool = False

    @classmethod
    def everything(cls) -> Scope:
        """The scope of an unscoped token (and of the admin token)."""
        return cls(frozenset(), (), unbounded=True)

    @classmethod
    def parse(cls, entries: Iterable[str]) -> Scope:
        """A scope from entries like `acme-*` and `globex-qa-0001`; none at all means every model."""
        items = [e for e in entries if e]
        if not items or "*" in items:
            return cls.everything()
        bad = [e for e in items if "*" in e[:-1]]
        if bad:
            raise ConfigError(
                f"token scope entries {bad} have a '*' that is not at the end",
                hint="write model ids, or id prefixes ending in '*' (e.g. acme-*)",
            )
        return cls(
            frozenset(e for e in items if not e.endswith("*")),
            tuple(sorted(e[:-1] for e in items if e.endswith("*"))),
        )

    def allows(self, model_id: str) -> bool:
        """Whether a token of this scope may use (see, call, load) `model_id`."""
        return self.unbounded or model_id in self.ids or model_id.startswith(self.prefixes)

    def describe(self) -> str:
        """The scope as written in a tokens file (for messages and logs)."""
        if self.unbounded:
            return "*"
        return " ".join([*sorted(self.ids), *(p + "*" for p in self.prefixes)])


@dataclass(frozen=True)
class TokenEntry:
    """One accepted token: its SHA-256, its scope, and the token itself when it was written in plain."""

    digest: bytes
    scope: Scope
    plain: str | None


def parse_token_line(line: str, where: str = "token") -> TokenEntry:
    """One tokens-file line (comment already stripped): `TOKEN [SCOPE ...]` or `sha256:HEX [SCOPE ...]`."""
    fields = line.split()
    if not fields:
        raise ConfigError(f"{where}: empty token")
    token, scope = fields[0], Scope.parse(fields[1:])
    if token.startswith(HASH_PREFIX):
        hexdigest = token[len(HASH_PREFIX) :].lower()
        if not _HEX64.match(hexdigest):
            raise ConfigError(
                f"{where}: {HASH_PREFIX} must be followed by 64 hex digits",
                hint="write the token's hash as printed by: printf %s TOKEN | sha256sum",
            )
        return TokenEntry(bytes.fromhex(hexdigest), scope, None)
    return TokenEntry(digest(token), scope, token)


def parse_tokens(lines: Iterable[str], where: str) -> list[TokenEntry]:
    """The entries of tokens-file lines, in order; `#` at a line's start or after a space starts a comment."""
    out = []
    for number, raw in enumerate(lines, 1):
        line = _COMMENT.sub("", raw).strip()
        if line:
            out.append(parse_token_line(line, f"{where} line {number}"))
    return out


def read_token_entries(path: Path) -> list[TokenEntry]:
    """The entries of a tokens file; an unreadable or malformed file raises ConfigError naming it."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"auth tokens file {path} cannot be read: {exc}") from exc
    return parse_tokens(lines, f"auth tokens file {path}")


def read_token_file(path: Path) -> list[str]:
    """The tokens written in plain in a tokens file, in order (what a client can send)."""
    return [e.plain for e in read_token_entries(path) if e.plain is not None]
