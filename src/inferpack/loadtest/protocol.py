"""What is sent and how the answer is classified, for the two APIs the generator speaks.

- seed: `GET /predictions/{model}?seq_0=<question>&seq_1=<context>` -> 200 `{"detail": "..."}`.
- v2 (Open Inference Protocol): `POST /v2/models/{model}/infer` with two BYTES inputs.
The server marks each answer with `X-Inferpack-Model-Load: cold|warm` (cold: it triggered a model load).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote, urlencode

Api = Literal["seed", "v2"]
MODEL_LOAD_HEADER = "x-inferpack-model-load"

DEFAULT_QUESTION = "What does inferpack serve?"
DEFAULT_CONTEXT = (
    "inferpack serves thousands of unique PyTorch models behind one API on the cheapest set of machines."
)


@dataclass(frozen=True)
class Request:
    """One prepared HTTP request."""

    method: Literal["GET", "POST"]
    url: str
    body: bytes | None


class RequestBuilder:
    """Builds requests for one API; the query string or body is encoded once, not per request."""

    def __init__(self, api: Api, question: str = DEFAULT_QUESTION, context: str = DEFAULT_CONTEXT) -> None:
        self.api = api
        self._query = urlencode({"seq_0": question, "seq_1": context})
        self._body = json.dumps(
            {
                "inputs": [
                    {"name": "question", "datatype": "BYTES", "shape": [1], "data": [question]},
                    {"name": "context", "datatype": "BYTES", "shape": [1], "data": [context]},
                ]
            }
        ).encode()

    def build(self, base_url: str, model: str) -> Request:
        """The request for `model` at `base_url` (model ids are path-quoted)."""
        quoted = quote(model, safe="")
        if self.api == "seed":
            return Request("GET", f"{base_url}/predictions/{quoted}?{self._query}", None)
        return Request("POST", f"{base_url}/v2/models/{quoted}/infer", self._body)


def status_key(status: int) -> str | None:
    """Error key for an HTTP status, or None for success (2xx)."""
    return None if 200 <= status < 300 else f"http {status}"


def model_load(header_value: str | None) -> Literal["cold", "warm"] | None:
    """The server's cold/warm mark, None when absent or unknown."""
    if header_value is None:
        return None
    value = header_value.strip().lower()
    if value == "cold":
        return "cold"
    if value == "warm":
        return "warm"
    return None
