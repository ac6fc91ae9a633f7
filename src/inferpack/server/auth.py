"""Optional bearer-token auth: inference tokens, and a separate admin token for the repository API.

Routes get it as a FastAPI dependency on their router (`Depends(auth.require_inference)` /
`Depends(auth.require_admin)`), so a new route cannot forget to check (tests/server/test_auth_routes.py).
"""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Annotated

from fastapi import Header

from inferpack.errors import ConfigError, Forbidden, Unauthorized
from inferpack.settings import AuthSettings


def read_tokens(settings: AuthSettings) -> list[str]:
    """Inference tokens from the settings list and the tokens file (one per line, # comments)."""
    tokens = [t for t in settings.tokens if t]
    if settings.tokens_file is not None:
        path = Path(settings.tokens_file)
        try:
            lines = path.read_text().splitlines()
        except OSError as exc:
            raise ConfigError(f"auth tokens file {path} cannot be read: {exc}") from exc
        tokens += [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
    return tokens


class Authenticator:
    """Checks Authorization headers; no tokens configured means open access."""

    def __init__(self, settings: AuthSettings) -> None:
        self.tokens = [t.encode() for t in read_tokens(settings)]
        self.admin = settings.admin_token.encode() if settings.admin_token else None
        self.repository_api = settings.repository_api

    @staticmethod
    def _bearer(header: str | None) -> bytes | None:
        if not header:
            return None
        scheme, _, value = header.partition(" ")
        return value.strip().encode() if scheme.lower() == "bearer" and value.strip() else None

    @staticmethod
    def _matches(given: bytes, allowed: list[bytes]) -> bool:
        # compare_digest against every token so timing does not reveal which one nearly matched
        return any([hmac.compare_digest(given, t) for t in allowed])

    def check_inference(self, header: str | None) -> None:
        """Raise Unauthorized unless inference is open or the bearer token is valid."""
        if not self.tokens:
            return
        given = self._bearer(header)
        if given is None or not self._matches(given, self.tokens):
            raise Unauthorized(
                "a valid bearer token is required", hint="send 'Authorization: Bearer <token>'"
            )

    def check_admin(self, header: str | None) -> None:
        """The repository API: switched off (403), admin token, or else the inference rule."""
        if not self.repository_api:
            raise Forbidden("the repository load/unload API is switched off on this server")
        if self.admin is None:
            self.check_inference(header)
            return
        given = self._bearer(header)
        if given is None or not hmac.compare_digest(given, self.admin):
            raise Unauthorized("the repository API needs the admin bearer token")

    def require_inference(self, authorization: Annotated[str | None, Header()] = None) -> None:
        """FastAPI dependency: the inference rule on the request's Authorization header."""
        self.check_inference(authorization)

    def require_admin(self, authorization: Annotated[str | None, Header()] = None) -> None:
        """FastAPI dependency: the repository API's rule on the request's Authorization header."""
        self.check_admin(authorization)
