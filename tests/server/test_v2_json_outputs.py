"""V2 outputs of variable-length structures (token-classification's entities): one JSON document per item
in a BYTES tensor, said so by the tensor's `content_type`, in JSON and binary form."""

from __future__ import annotations

import json
import struct

import pytest

from inferpack.errors import InvalidInput
from inferpack.runtime.tasks import OutputSpec
from inferpack.server import v2
from inferpack.server.v2_api import outputs_metadata

ENTITIES = [
    {"entities": [{"entity_group": "PER", "score": 0.5, "word": "Zoë", "start": 0, "end": 3}]},
    {"entities": []},
]


def _request(binary: bool) -> v2.InferRequest:
    return v2.InferRequest(id=None, inputs=[], binary_output=binary, outputs={})


def test_the_metadata_names_the_content_type_of_json_outputs() -> None:
    meta = outputs_metadata([OutputSpec("entities", "json"), OutputSpec("label", "text")])
    assert meta == [
        {
            "name": "entities",
            "datatype": "BYTES",
            "shape": [-1],
            "parameters": {"content_type": "application/json"},
        },
        {"name": "label", "datatype": "BYTES", "shape": [-1]},  # plain text: no parameters
    ]


def test_json_mode_sends_one_json_text_per_item() -> None:
    body, head = v2.build_response(
        "m", 1, _request(False), ENTITIES, outputs_metadata([OutputSpec("entities", "json")])
    )
    assert head is None
    (output,) = json.loads(body)["outputs"]
    assert output["shape"] == [2] and output["parameters"] == {"content_type": "application/json"}
    assert [json.loads(x) for x in output["data"]] == [r["entities"] for r in ENTITIES]


def test_binary_mode_sends_the_same_documents_as_utf8() -> None:
    body, head = v2.build_response(
        "m", 1, _request(True), ENTITIES, outputs_metadata([OutputSpec("entities", "json")])
    )
    assert head is not None
    (output,) = json.loads(body[:head])["outputs"]
    assert output["parameters"]["content_type"] == "application/json"
    blob = body[head:]
    assert len(blob) == output["parameters"]["binary_data_size"]
    documents, pos = [], 0
    while pos < len(blob):
        (n,) = struct.unpack_from("<I", blob, pos)
        documents.append(json.loads(blob[pos + 4 : pos + 4 + n].decode("utf-8")))
        pos += 4 + n
    assert documents == [r["entities"] for r in ENTITIES]  # "Zoë" as UTF-8, not an escape


def test_a_second_text_is_refused_where_the_model_takes_none() -> None:
    text = v2.Tensor("text", "BYTES", [1], ["Ann lives in Paris"])
    pair = v2.Tensor("text_pair", "BYTES", [1], ["and Bob in Rome"])
    assert v2.items_from_inputs([text, pair], False)[0].text_pair == "and Bob in Rome"  # a classifier's
    with pytest.raises(InvalidInput, match="no 'text_pair' input"):
        v2.items_from_inputs([text, pair], False, text_pair=False)
    assert v2.items_from_inputs([text], False, text_pair=False)[0].text_pair is None
