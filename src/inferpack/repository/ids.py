"""Model ids: what a tenant's model may be called.

An id is 1-128 characters from `A-Z a-z 0-9 . _ -`, starting with a letter or digit, and never `..`-like.
That keeps ids safe as folder names, URL path segments, S3 keys, Kubernetes annotations and metric labels,
and rules out path traversal (`../x`, `a/b`, absolute paths) by construction.
"""

from __future__ import annotations

import re

from inferpack.errors import InvalidModelId

MODEL_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
_MODEL_ID_RE = re.compile(MODEL_ID_PATTERN)


def is_valid_model_id(model_id: str) -> bool:
    """True when `model_id` matches the documented character set and length."""
    return bool(_MODEL_ID_RE.fullmatch(model_id)) and ".." not in model_id


def validate_model_id(model_id: str) -> str:
    """Return `model_id` unchanged, or raise InvalidModelId saying what the rule is."""
    if not is_valid_model_id(model_id):
        shown = model_id if len(model_id) <= 80 else model_id[:77] + "..."
        raise InvalidModelId(
            f"invalid model id {shown!r}",
            hint="ids are 1-128 characters of A-Z a-z 0-9 . _ -, start with a letter or digit, no '..'",
        )
    return model_id
