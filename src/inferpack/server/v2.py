"""Open Inference Protocol (KServe V2) tensors: parse requests (JSON and the binary tensor extension) and
build responses. Pure functions over bytes and dicts; no HTTP framework here.

Binary extension: the body is a JSON header of `Inference-Header-Content-Length` bytes followed by raw tensor
data; an input with `parameters.binary_data_size` takes its bytes from there, in input order. BYTES elements
are each a 4-byte little-endian length then the bytes. Outputs go binary when the request asks for it
(`parameters.binary_data_output`, or `binary_data` on a requested output), as tritonclient does by default.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from inferpack.errors import InvalidInput
from inferpack.runtime.tasks import TextInput

HEADER_LENGTH = "Inference-Header-Content-Length"
# A BYTES output whose metadata carries this `content_type` parameter holds one JSON document per item (a
# variable-length structure such as token-classification's entities), encoded as UTF-8 JSON text.
JSON_CONTENT_TYPE = "application/json"
_NUMPY_OF = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32}

# json.loads recurses once per nesting level: a body of a few kB of "[[[[..." exceeds Python's recursion
# limit, which is the client's malformed input (400), not a server fault (it was a 500).
NESTED_TOO_DEEPLY = "request body is not valid JSON: it is nested too deeply"


@dataclass(frozen=True)
class Tensor:
    """One named input tensor: datatype, shape and its elements, flattened."""

    name: str
    datatype: str
    shape: list[int]
    data: list[Any]


@dataclass(frozen=True)
class InferRequest:
    """A parsed V2 inference request."""

    id: str | None
    inputs: list[Tensor]
    binary_output: bool
    outputs: dict[str, bool]  # requested output name -> binary


def parse_request(body: bytes, header_length: str | None) -> InferRequest:
    """Parse a V2 infer body (pure JSON, or JSON + binary tensors); InvalidInput says what is wrong."""
    if header_length is not None:
        try:
            split = int(header_length)
        except ValueError as exc:
            raise InvalidInput(f"{HEADER_LENGTH} must be an integer, got {header_length!r}") from exc
        if not 0 < split <= len(body):
            raise InvalidInput(f"{HEADER_LENGTH} {split} does not fit a body of {len(body)} bytes")
        head, binary = body[:split], body[split:]
    else:
        head, binary = body, b""
    try:
        doc = json.loads(head)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInput(f"request body is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise InvalidInput(NESTED_TOO_DEEPLY) from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list) or not doc["inputs"]:
        raise InvalidInput('request must be a JSON object with a non-empty "inputs" list')
    offset = 0
    inputs = []
    for raw in doc["inputs"]:
        tensor, offset = _parse_input(raw, binary, offset)
        inputs.append(tensor)
    if offset != len(binary):
        raise InvalidInput(f"{len(binary) - offset} bytes of binary data are not claimed by any input")
    params = doc.get("parameters") or {}
    outputs: dict[str, bool] = {}
    for out in doc.get("outputs") or []:
        if not isinstance(out, dict) or not isinstance(out.get("name"), str):
            raise InvalidInput('each requested output needs a "name"')
        outputs[out["name"]] = bool((out.get("parameters") or {}).get("binary_data", False))
    request_id = doc.get("id")
    return InferRequest(
        id=str(request_id) if request_id is not None else None,
        inputs=inputs,
        binary_output=bool(isinstance(params, dict) and params.get("binary_data_output", False)),
        outputs=outputs,
    )


def _parse_input(raw: Any, binary: bytes, offset: int) -> tuple[Tensor, int]:
    if not isinstance(raw, dict):
        raise InvalidInput("each input must be a JSON object")
    name, datatype, shape = raw.get("name"), raw.get("datatype"), raw.get("shape")
    if not isinstance(name, str) or not isinstance(datatype, str):
        raise InvalidInput('each input needs a string "name" and "datatype"')
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise InvalidInput(f'input {name!r}: "shape" must be a list of non-negative integers')
    count = math.prod(shape)
    size = (raw.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size < 0 or offset + size > len(binary):
            raise InvalidInput(f"input {name!r}: binary_data_size {size} exceeds the binary data sent")
        chunk = binary[offset : offset + size]
        data = _decode_binary(name, datatype, chunk)
        offset += size
    else:
        if "data" not in raw:
            raise InvalidInput(f'input {name!r} has neither "data" nor binary_data_size')
        data = _flatten(raw["data"])
    if len(data) != count:
        raise InvalidInput(f"input {name!r}: shape {shape} needs {count} elements, got {len(data)}")
    return Tensor(name, datatype, shape, data), offset


def _flatten(value: Any) -> list[Any]:
    if isinstance(value, list):
        out: list[Any] = []
        for v in value:
            out.extend(_flatten(v))
        return out
    return [value]


def _decode_binary(name: str, datatype: str, chunk: bytes) -> list[Any]:
    if datatype == "BYTES":
        items: list[Any] = []
        pos = 0
        while pos < len(chunk):
            if pos + 4 > len(chunk):
                raise InvalidInput(f"input {name!r}: truncated BYTES element length")
            (n,) = struct.unpack_from("<I", chunk, pos)
            pos += 4
            if pos + n > len(chunk):
                raise InvalidInput(f"input {name!r}: BYTES element of {n} bytes overruns the data")
            items.append(chunk[pos : pos + n])
            pos += n
        return items
    dtype = _NUMPY_OF.get(datatype)
    if dtype is None:
        raise InvalidInput(f"input {name!r}: datatype {datatype} is not supported in binary form")
    if len(chunk) % np.dtype(dtype).itemsize:
        raise InvalidInput(f"input {name!r}: {len(chunk)} bytes is not a whole number of {datatype}")
    return list(np.frombuffer(chunk, dtype=dtype).tolist())


def texts_of(tensor: Tensor) -> list[str]:
    """The tensor's elements as text: BYTES/strings, decoded as strict UTF-8."""
    if tensor.datatype != "BYTES":
        raise InvalidInput(f"input {tensor.name!r} must have datatype BYTES (text), got {tensor.datatype}")
    if len(tensor.shape) > 2 or (len(tensor.shape) == 2 and tensor.shape[1] != 1):
        raise InvalidInput(
            f"input {tensor.name!r}: text shape must be [batch] or [batch, 1], got {tensor.shape}"
        )
    out = []
    for element in tensor.data:
        if isinstance(element, bytes):
            try:
                out.append(element.decode("utf-8"))
            except UnicodeDecodeError as exc:
                raise InvalidInput(f"input {tensor.name!r} holds text that is not valid UTF-8") from exc
        elif isinstance(element, str):
            out.append(element)
        else:
            raise InvalidInput(f"input {tensor.name!r}: BYTES elements must be strings")
    return out


_ALIASES = {"question": ("question", "seq_0"), "context": ("context", "seq_1"), "text": ("text", "seq_0")}


def items_from_inputs(inputs: list[Tensor], pair_input: bool, *, text_pair: bool = True) -> list[TextInput]:
    """Map V2 input tensors to task items (QA: question + context; else text [+ text_pair]). `text_pair`:
    whether the model takes an optional second text; one that does not (a tagger, an embedder: their
    metadata lists `text` alone) refuses a `text_pair` input instead of silently encoding it with the text."""
    by_name = {t.name: t for t in inputs}
    if not pair_input and not text_pair and "text_pair" in by_name:
        raise InvalidInput("this model takes one text per item (input 'text'); it has no 'text_pair' input")

    def pick(role: str, required: bool) -> list[str] | None:
        for name in _ALIASES.get(role, (role,)):
            if name in by_name:
                return texts_of(by_name[name])
        if role == "text" and len(inputs) == 1:  # a lone text input may have any name
            return texts_of(inputs[0])
        if required:
            raise InvalidInput(f"missing input {role!r} (BYTES); got {sorted(by_name)}")
        return None

    if pair_input:
        first, second = pick("question", True), pick("context", True)
    else:
        first, second = pick("text", True), pick("text_pair", False)
    assert first is not None
    if second is not None and len(second) != len(first):
        raise InvalidInput(f"inputs have different batch sizes: {len(first)} and {len(second)}")
    if not first:
        raise InvalidInput("the batch is empty")
    return [TextInput(t, second[i] if second is not None else None) for i, t in enumerate(first)]


def build_response(
    model_name: str,
    version: int,
    request: InferRequest,
    results: list[dict[str, Any]],
    outputs_meta: list[dict[str, Any]],
) -> tuple[bytes, int | None]:
    """Encode results as a V2 response; returns the body and the JSON header length when binary."""
    wanted = [m for m in outputs_meta if not request.outputs or m["name"] in request.outputs]
    unknown = set(request.outputs) - {m["name"] for m in outputs_meta}
    if unknown:
        raise InvalidInput(
            f"unknown requested outputs {sorted(unknown)}; this model has {[m['name'] for m in outputs_meta]}"
        )
    json_outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for meta in wanted:
        name, datatype = meta["name"], meta["datatype"]
        values = [r[name] for r in results]
        binary = request.outputs.get(name, request.binary_output)
        parameters: dict[str, Any] = dict(meta.get("parameters") or {})  # e.g. the JSON content type
        if datatype == "BYTES":
            shape = [len(values)]
            texts = [_as_text(v, parameters.get("content_type")) for v in values]
            if binary:
                blob = b"".join(struct.pack("<I", len(b)) + b for b in (t.encode() for t in texts))
            else:
                data: list[Any] = texts
        else:
            array = np.asarray(values, dtype=_NUMPY_OF[datatype])
            shape = list(array.shape)
            if binary:
                blob = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()
            else:
                data = array.reshape(-1).tolist()
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
        if binary:
            parameters["binary_data_size"] = len(blob)
            blobs.append(blob)
        else:
            entry["data"] = data
        if parameters:
            entry["parameters"] = parameters
        json_outputs.append(entry)
    doc: dict[str, Any] = {"model_name": model_name, "model_version": str(version), "outputs": json_outputs}
    if request.id is not None:
        doc["id"] = request.id
    head = json.dumps(doc).encode()
    if not blobs:
        return head, None
    return head + b"".join(blobs), len(head)


def _as_text(value: Any, content_type: object) -> str:
    """One BYTES element's text: a JSON document for an output of the JSON content type (ensure_ascii off:
    the text's own characters, UTF-8 on the wire), else the value as a string."""
    if content_type == JSON_CONTENT_TYPE:
        return json.dumps(value, ensure_ascii=False)
    return str(value)
