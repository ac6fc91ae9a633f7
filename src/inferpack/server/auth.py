"""Optional bearer-token auth, shared by the server and the router (docs/security.md).

- Inference tokens (`tokens`, `tokens_file`), each with a scope: the model ids and id prefixes it may use.
  A scoped token asking for a model outside its scope gets 403 naming that model, whether or not the
  model exists, so a token cannot probe which models exist beyond its own.
- The admin token: the repository load/unload API; it may also call every model and read metrics.
- The metrics token: `/metrics` and the model names in readiness answers (Prometheus sends it).
- With no inference tokens, inference is open (and the admin token, when set, guards only the
  repository API). Liveness and the bare readiness status always stay open: kubelets send no token.

Routes get the rules as FastAPI dependencies on their router (`Depends(auth.require_model)`, ...), so a
new route cannot forget to check (tests/server/test_auth_routes.py walks every route of the schema).
Tokens are kept and compared as SHA-256 digests (the tokens file may hold only the digests).
"""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from inferpack.errors import Forbidden, Unauthorized
from inferpack.settings import AuthSettings
from inferpack.tokens import Scope, TokenEntry, digest, parse_tokens, read_token_entries

EVERYTHING = Scope.everything()


def read_tokens(settings: AuthSettings) -> list[TokenEntry]:
    """Inference tokens from the settings list and the tokens file (the same line syntax in both)."""
    entries = parse_tokens(settings.tokens, "auth.tokens entry")
    if settings.tokens_file is not None:
        entries += read_token_entries(Path(settings.tokens_file))
    return entries


def out_of_scope(model_id: str) -> Forbidden:
    """The refusal a scoped token gets for any model outside its scope (existing or not)."""
    return Forbidden(
        f"this token may not use model {model_id!r}",
        hint="use a token whose scope includes this model (docs/security.md, 'Scoped tokens')",
    )


class Authenticator:
    """Checks Authorization headers against the auth settings; no tokens configured means open access."""

    def __init__(self, settings: AuthSettings) -> None:
        self.entries = read_tokens(settings)
        self.by_digest = {e.digest: e for e in self.entries}
        self.admin = digest(settings.admin_token) if settings.admin_token else None
        self.metrics = digest(settings.metrics_token) if settings.metrics_token else None
        self.metrics_public = settings.metrics_public
        self.repository_api = settings.repository_api
        # Model names are worth hiding only where inference itself is closed, or the operator asked.
        self.protects_names = bool(self.entries) or self.metrics is not None

    # the caller ---------------------------------------------------------------------------------------
    @staticmethod
    def _digest(header: str | None) -> bytes | None:
        if not header:
            return None
        scheme, _, value = header.partition(" ")
        return digest(value.strip()) if scheme.lower() == "bearer" and value.strip() else None

    @staticmethod
    def _is(given: bytes | None, expected: bytes | None) -> bool:
        return given is not None and expected is not None and hmac.compare_digest(given, expected)

    def _entry(self, given: bytes) -> TokenEntry | None:
        # A dict lookup by digest: its timing can only tell how much of a SHA-256 matched, which does
        # not help find a token; and it stays O(1) with a token per tenant (thousands), on every request.
        return self.by_digest.get(given)

    # the rules ----------------------------------------------------------------------------------------
    def inference_scope(self, header: str | None) -> Scope:
        """The models the caller may use; Unauthorized unless inference is open or the token is valid."""
        if not self.entries:
            return EVERYTHING
        given = self._digest(header)
        if given is not None:
            if self._is(given, self.admin):
                return EVERYTHING
            entry = self._entry(given)
            if entry is not None:
                return entry.scope
        raise Unauthorized("a valid bearer token is required", hint="send 'Authorization: Bearer <token>'")

    def check_model(self, header: str | None, model_id: str) -> None:
        """The inference rule for one model: 401 without a valid token, 403 outside the token's scope."""
        if not self.inference_scope(header).allows(model_id):
            raise out_of_scope(model_id)

    def admin_scope(self, header: str | None) -> Scope:
        """The repository API: switched off (403), the admin token, or else the inference rule."""
        if not self.repository_api:
            raise Forbidden("the repository load/unload API is switched off on this server")
        if self.admin is None:
            return self.inference_scope(header)
        if not self._is(self._digest(header), self.admin):
            raise Unauthorized("the repository API needs the admin bearer token")
        return EVERYTHING

    def sees_operations(self, header: str | None) -> bool:
        """Whether the caller may read what names models outside a request: metrics, failed models."""
        if not self.protects_names:
            return True
        given = self._digest(header)
        return self._is(given, self.metrics) or self._is(given, self.admin)

    def check_metrics(self, header: str | None) -> None:
        """/metrics: open without auth or with `metrics_public`, else the metrics or admin token."""
        if not (self.metrics_public or self.sees_operations(header)):
            raise Unauthorized(
                "/metrics needs the metrics bearer token",
                hint="give Prometheus auth.metrics_token (docs/security.md, 'Metrics and probes')",
            )

    # FastAPI dependencies: the OpenAPI document shows them as one HTTP bearer security scheme. They are
    # coroutines although they never wait: FastAPI runs a plain `def` dependency on its thread pool, a hop
    # to another thread and back on every request (two wake-ups, each waiting for the GIL that the
    # inference threads hold between kernels) for a few microseconds of work --------------------------------
    async def require_model(self, model_id: str, credentials: Credentials = None) -> None:
        """Dependency of model routes: the inference rule for the path's model."""
        self.check_model(_header(credentials), model_id)

    async def require_admin_model(self, model_id: str, credentials: Credentials = None) -> None:
        """Dependency of load/unload: the repository API's rule, then the scope for the path's model."""
        if not self.admin_scope(_header(credentials)).allows(model_id):
            raise out_of_scope(model_id)

    async def require_listing(self, credentials: Credentials = None) -> Scope:
        """Dependency of the index: the inference rule; its scope filters what the caller sees."""
        return self.inference_scope(_header(credentials))

    async def require_metrics(self, credentials: Credentials = None) -> None:
        """Dependency of /metrics."""
        self.check_metrics(_header(credentials))

    async def require_operations(self, credentials: Credentials = None) -> bool:
        """Dependency of readiness: whether the answer may name models."""
        return self.sees_operations(_header(credentials))


# auto_error=False: a missing token is this module's decision (open access, or 401 with our error body)
BEARER = HTTPBearer(auto_error=False, description="An inference, metrics or admin token (docs/security.md).")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]


def _header(credentials: HTTPAuthorizationCredentials | None) -> str | None:
    return None if credentials is None else f"Bearer {credentials.credentials}"
