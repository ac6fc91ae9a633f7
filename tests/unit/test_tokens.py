"""The tokens-file format: plain and hashed tokens, scopes of ids and prefixes, comments, bad lines."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from inferpack.errors import ConfigError
from inferpack.tokens import Scope, digest, read_token_entries, read_token_file


def test_a_tokens_file_with_scopes_hashes_and_comments(tmp_path: Path) -> None:
    hashed = hashlib.sha256(b"beta-secret").hexdigest()
    path = tmp_path / "tokens"
    path.write_text(
        "# tenants\n"
        "acme-secret  acme-*  globex-qa-0001   # acme's models and one more\n"
        f"sha256:{hashed.upper()}  beta-*\n"
        "\n"
        "ops#1\n"
    )
    acme, beta, ops = read_token_entries(path)
    assert acme.digest == digest("acme-secret") and acme.plain == "acme-secret"
    assert acme.scope.allows("acme-0001") and acme.scope.allows("globex-qa-0001")
    assert not acme.scope.allows("globex-qa-0002") and not acme.scope.allows("acm")
    assert beta.digest == digest("beta-secret") and beta.plain is None and beta.scope.allows("beta-x")
    assert ops.plain == "ops#1" and ops.scope.allows("anything")  # '#' inside a token is kept
    # the load generator can only send tokens written in plain
    assert read_token_file(path) == ["acme-secret", "ops#1"]


def test_scope_entries() -> None:
    assert Scope.parse([]).allows("x") and Scope.parse(["a-*", "*"]).allows("x")
    scope = Scope.parse(["a-*", "b"])
    assert scope.describe() == "b a-*" and not scope.allows("bb")
    with pytest.raises(ConfigError, match="not at the end"):
        Scope.parse(["a*b"])


@pytest.mark.parametrize("line", ["sha256:abc", "sha256:" + "g" * 64])
def test_a_malformed_hash_is_a_config_error_naming_the_line(tmp_path: Path, line: str) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"ok\n{line}\n")
    with pytest.raises(ConfigError, match="line 2"):
        read_token_entries(path)


def test_an_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be read"):
        read_token_entries(tmp_path / "missing")
