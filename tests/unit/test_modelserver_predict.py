"""The model's answers: deterministic scores from the artifact's checksum and the input (pure)."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from modelserver.predict import BadPredictionRequest, infer_v2, predict_v1, score

CHECKSUM_A = "a" * 64
CHECKSUM_B = "b" * 64


def expected_score(checksum: str, canonical_json: str) -> float:
    """Computed here by hand from the documented formula, not by the code under test."""
    digest = hashlib.sha256((checksum + canonical_json).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def test_score_is_the_documented_hash_of_checksum_and_canonical_json() -> None:
    assert score(CHECKSUM_A, {"b": 2, "a": [1, 2]}) == expected_score(CHECKSUM_A, '{"a":[1,2],"b":2}')


def test_scores_depend_on_the_artifact_and_the_instance_only() -> None:
    instance = {"x": 1.5}
    assert score(CHECKSUM_A, instance) == score(CHECKSUM_A, {"x": 1.5})
    assert score(CHECKSUM_A, instance) != score(CHECKSUM_B, instance)
    assert score(CHECKSUM_A, instance) != score(CHECKSUM_A, {"x": 2.5})


def test_scores_fall_in_the_unit_interval() -> None:
    values = [score(CHECKSUM_A, i) for i in range(2000)]
    assert all(0.0 <= v < 1.0 for v in values)
    assert min(values) < 0.05 and max(values) > 0.95  # spread over the interval, not stuck


def test_v1_answers_one_score_per_instance_in_order() -> None:
    instances = [[1, 2], {"f": "x"}, 3]
    assert predict_v1(CHECKSUM_A, {"instances": instances}) == [score(CHECKSUM_A, i) for i in instances]


@pytest.mark.parametrize(
    "body",
    [{}, {"instances": []}, {"instances": {"a": 1}}, {"inputs": [[1]]}, {"instances": "1,2"}],
    ids=["missing", "empty", "object", "v2-key", "string"],
)
def test_v1_refuses_bodies_without_a_list_of_instances(body: dict[str, Any]) -> None:
    with pytest.raises(BadPredictionRequest, match="instances"):
        predict_v1(CHECKSUM_A, body)


def test_v2_scores_each_batch_row_across_all_inputs() -> None:
    body = {
        "inputs": [
            {"name": "amount", "shape": [2, 2], "datatype": "FP32", "data": [1.0, 2.0, 3.0, 4.0]},
            {"name": "country", "shape": [2], "datatype": "BYTES", "data": ["fr", "de"]},
        ]
    }
    assert infer_v2(CHECKSUM_A, body) == [
        score(CHECKSUM_A, {"amount": [1.0, 2.0], "country": ["fr"]}),
        score(CHECKSUM_A, {"amount": [3.0, 4.0], "country": ["de"]}),
    ]


def test_v2_accepts_nested_data_as_the_same_tensor_as_flat_data() -> None:
    flat = {"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    nested = {"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3, 4]]}]}
    assert infer_v2(CHECKSUM_A, flat) == infer_v2(CHECKSUM_A, nested)


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (None, "send"),
        ([], "send"),
        (["x"], r"inputs\[0\] must be an object"),
        ([{"shape": [1], "datatype": "FP32", "data": [1]}], r"inputs\[0\].name"),
        ([{"name": "x", "shape": [-1], "datatype": "FP32", "data": [1]}], "shape"),
        ([{"name": "x", "shape": [True], "datatype": "FP32", "data": [1]}], "shape"),
        ([{"name": "x", "shape": [1], "data": [1]}], "datatype"),
        ([{"name": "x", "shape": [1], "datatype": "FP32", "data": 1}], "data must be a list"),
        ([{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3]}], "has 3 values but"),
        (
            [
                {"name": "x", "shape": [2], "datatype": "FP32", "data": [1, 2]},
                {"name": "y", "shape": [3], "datatype": "FP32", "data": [1, 2, 3]},
            ],
            r"same first dimension .*\[2, 3\]",
        ),
    ],
)
def test_v2_refuses_malformed_tensors_saying_which_field(inputs: Any, message: str) -> None:
    with pytest.raises(BadPredictionRequest, match=message):
        infer_v2(CHECKSUM_A, {"inputs": inputs})
