"""The strict JSON parser every request body goes through: refusals are 400s that say why."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from registry.errors import MalformedRequest
from registry.strict_json import INT64_MAX, INT64_MIN, MAX_DEPTH, json_object, parse_json


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def _nested_list(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'{"a": [1, 2.5, "x", null, true]}', {"a": [1, 2.5, "x", None, True]}),
        (str(INT64_MAX).encode(), INT64_MAX),
        (str(INT64_MIN).encode(), INT64_MIN),
        (b"1e308", 1e308),
        (b"0." + b"0" * 5000 + b"1", 0.0),  # long decimals are floats: no digit limit applies
        (nested(MAX_DEPTH), _nested_list(MAX_DEPTH)),
        ('{"name": "métadata"}'.encode(), {"name": "métadata"}),
    ],
)
def test_ordinary_json_parses_as_json_loads_would(raw: bytes, expected: Any) -> None:
    assert parse_json(raw, what="the body") == expected


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (nested(MAX_DEPTH + 1), "nested more than 64 levels deep"),
        (nested(5000), "nested more than 64 levels deep"),
        (nested(sys.getrecursionlimit() * 10), "nested more than 64 levels deep"),
        (b'{"a":' * 5000 + b"1" + b"}" * 5000, "nested more than 64 levels deep"),
        (b"9" * 5000, "(5000 characters) is outside the 64-bit range"),
        (b"-" + b"9" * 5000, "outside the 64-bit range"),
        (str(INT64_MAX + 1).encode(), "the integer 9223372036854775808 is outside the 64-bit range"),
        (str(INT64_MIN - 1).encode(), "outside the 64-bit range"),
        (b"[NaN]", "NaN is not a JSON number"),
        (b"Infinity", "Infinity is not a JSON number"),
        (b"-Infinity", "-Infinity is not a JSON number"),
        (b"1e999", "too large for a 64-bit float"),
        (b"{", "is not valid JSON"),
        (b"\xff\xfe", "is not valid JSON"),
        (b"", "is not valid JSON"),
    ],
)
def test_hostile_json_is_a_400_that_names_the_input_and_the_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(MalformedRequest) as refused:
        parse_json(raw, what="the body")
    assert refused.value.status == 400
    assert refused.value.message.startswith("the body ")
    assert reason in refused.value.message


def test_the_object_check_is_separate_from_parsing() -> None:
    assert parse_json(b"[1]", what="x") == [1]
    with pytest.raises(MalformedRequest, match="x must be a JSON object"):
        json_object([1], what="x")
    assert json_object({"a": 1}, what="x") == {"a": 1}


def test_without_the_depth_walk_only_pathological_nesting_is_refused() -> None:
    assert parse_json(b"[" * 200 + b"]" * 200, what="the poll", max_depth=None) is not None
    with pytest.raises(MalformedRequest, match="nested more than"):
        parse_json(b"[" * 5000 + b"]" * 5000, what="the poll", max_depth=None)
