"""The seed-compatible API (the reference's `/predictions/{model}`): its parsing, defaults and answers.

`seq_0` / `seq_1` come from query parameters, form fields or a JSON object; QA answers `seq_0` about the
context `seq_1`, other tasks take `seq_0` as their text. The answer is `{"detail": ...}`: the answer text,
the label, the entities (token-classification) or the embedding, or with `postprocess=false` the model's
own output tensors by name.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from inferpack.errors import InvalidInput
from inferpack.repository.manifest import Task
from inferpack.runtime.tasks import Result, TextInput
from inferpack.server.auth import Authenticator
from inferpack.server.dataplane import DataPlane, InferenceOptions, InferenceRequest
from inferpack.server.http import load_header, optional_json, request_deadline, timed, until_disconnect
from inferpack.server.metrics import ServerMetrics
from inferpack.server.v2_schema import errors

# The reference server's defaults when seq_0 / seq_1 are absent: a question and a context to answer from.
DEFAULT_QUESTION = "What does the little engine say?"
DEFAULT_CONTEXT = (
    "In the children's story, a small blue engine is asked to pull a long train over a steep mountain. "
    "The big engines refuse, but the little engine agrees and climbs, saying 'I think I can, I think I can'."
)
TEXT_FIELDS = ("seq_0", "seq_1")
_FLAGS = {"true": True, "1": True, "false": False, "0": False}


def seed_routes(plane: DataPlane, metrics: ServerMetrics, auth: Authenticator) -> APIRouter:
    """The `/predictions/{model}` routes; every one needs the inference token (when tokens are set), and
    a scoped token only for the models of its scope."""
    router = APIRouter(
        dependencies=[Depends(auth.require_model)], responses=errors(400, 401, 403, 404, 413, 503)
    )

    async def answer(request: Request, model_id: str, fields: dict[str, Any], arrived: float) -> Response:
        async def call() -> Response:
            question = validate_text(fields.get("seq_0", DEFAULT_QUESTION), "seq_0")
            context = validate_text(fields.get("seq_1", DEFAULT_CONTEXT), "seq_1")
            postprocess = (
                parse_flag(fields["postprocess"], "postprocess") if "postprocess" in fields else True
            )
            deadline = request_deadline(request, arrived)
            model = plane.describe(model_id)
            item = TextInput(question, context if model.pair_input else None)
            options = InferenceOptions(postprocess=postprocess)
            prediction = await until_disconnect(
                request, plane.infer(InferenceRequest(model_id, [item], options=options, deadline=deadline))
            )
            detail = detail_of(model.task, prediction.results[0], postprocess)
            headers = load_header(
                prediction.cold,
                prediction.expected_wait_s,
                prediction.expected_service_s,
                prediction.lateness,
            )
            return JSONResponse({"detail": detail}, headers=headers)

        return await timed(metrics, model_id, "seed", call)

    @router.get("/predictions/{model_id}", summary="Seed-compatible prediction (query parameters)")
    async def predict_get(
        request: Request,
        model_id: str,
        seq_0: str | None = None,
        seq_1: str | None = None,
        postprocess: str | None = None,
    ) -> Response:
        arrived = time.perf_counter()
        given = {"seq_0": seq_0, "seq_1": seq_1, "postprocess": postprocess}
        return await answer(request, model_id, {k: v for k, v in given.items() if v is not None}, arrived)

    @router.post("/predictions/{model_id}", summary="Seed-compatible prediction (form fields or JSON)")
    async def predict_post(request: Request, model_id: str) -> Response:
        arrived = time.perf_counter()
        return await answer(request, model_id, await seed_fields(request), arrived)

    return router


async def seed_fields(request: Request) -> dict[str, Any]:
    """seq_0, seq_1 and postprocess from a JSON body or form fields (urlencoded or multipart); query
    parameters as fallback. Texts must be strings; the flag is checked by `parse_flag`."""
    kind = request.headers.get("content-type", "")
    fields: dict[str, Any] = dict(request.query_params)
    if kind.startswith("application/json"):
        fields.update(await optional_json(request))
    elif kind.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
        form = await request.form()
        fields.update({k: v for k, v in form.items() if isinstance(v, str)})
    elif (await request.body()).strip():
        raise InvalidInput(f"unsupported content type {kind!r}; send JSON or form fields seq_0 and seq_1")
    for key in TEXT_FIELDS:
        if key in fields and not isinstance(fields[key], str):
            raise InvalidInput(f"{key} must be a string")
    return {k: fields[k] for k in (*TEXT_FIELDS, "postprocess") if k in fields}


def validate_text(value: str, field: str) -> str:
    """Reject text the tokenizer cannot take (NUL characters); truncation handles length."""
    if "\x00" in value:
        raise InvalidInput(f"{field} contains a NUL character")
    return value


def parse_flag(value: object, field: str) -> bool:
    """A boolean field's value: true/false/1/0 (any case) or a JSON boolean; anything else is InvalidInput."""
    if isinstance(value, bool):
        return value
    flag = _FLAGS.get(str(value).lower()) if isinstance(value, str | int) else None
    if flag is None:
        raise InvalidInput(f"{field} must be true or false (or 1 or 0), got {value!r}")
    return flag


def detail_of(task: Task, result: Result, postprocess: bool) -> Any:
    """The seed answer: QA's answer text, the label, the entities (a list of {entity_group, score, word,
    start, end}) or the embedding; raw outputs as nested lists."""
    if not postprocess:
        return {name: np.asarray(value).tolist() for name, value in result.items()}
    if task == "question-answering":
        return result["answer"]
    if task == "text-classification":
        return result["label"]
    if task == "token-classification":
        return result["entities"]
    return [float(x) for x in result["embedding"]]
