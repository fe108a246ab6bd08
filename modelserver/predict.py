"""The model itself: KServe v1/v2 request bodies to deterministic scores (pure, no I/O).

A score is a function of the artifact's checksum and the instance only, so two
servers with the same bytes agree, a new version answers differently, and a test
can compute the expected value by hand.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any


class BadPredictionRequest(ValueError):
    """The body is JSON but not a request this protocol accepts; the message says what to send."""


def score(checksum: str, instance: Any) -> float:
    """A value in [0, 1) from sha256(checksum + canonical JSON of the instance)."""
    canonical = json.dumps(instance, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    digest = hashlib.sha256((checksum + canonical).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def predict_v1(checksum: str, body: dict[str, Any]) -> list[float]:
    """KServe v1 `{"instances": [...]}`: one score per instance, in order."""
    instances = body.get("instances")
    if not isinstance(instances, list) or not instances:
        raise BadPredictionRequest('send {"instances": [...]} with at least one instance')
    return [score(checksum, instance) for instance in instances]


@dataclass(frozen=True)
class InferInput:
    name: str
    shape: tuple[int, ...]
    datatype: str
    data: list[Any]

    @classmethod
    def parse(cls, index: int, document: Any) -> InferInput:
        if not isinstance(document, dict):
            raise BadPredictionRequest(f"inputs[{index}] must be an object with name, shape, datatype, data")
        name, shape = document.get("name"), document.get("shape")
        datatype, data = document.get("datatype"), document.get("data")
        if not isinstance(name, str) or not name:
            raise BadPredictionRequest(f"inputs[{index}].name must be a non-empty string")
        if (
            not isinstance(shape, list) or not shape
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)
        ):
            raise BadPredictionRequest(f"inputs[{index}].shape must be a list of non-negative integers")
        if not isinstance(datatype, str) or not datatype:
            raise BadPredictionRequest(f"inputs[{index}].datatype must be a string such as FP32")
        if not isinstance(data, list):
            raise BadPredictionRequest(f"inputs[{index}].data must be a list")
        flat = _flatten(data)
        if len(flat) != math.prod(shape):
            raise BadPredictionRequest(
                f"inputs[{index}] has {len(flat)} values but its shape {shape} needs {math.prod(shape)}"
            )
        return cls(name, tuple(shape), datatype, flat)

    def row(self, index: int) -> list[Any]:
        width = math.prod(self.shape[1:])
        return self.data[index * width:(index + 1) * width]


def infer_v2(checksum: str, body: dict[str, Any]) -> list[float]:
    """KServe v2 `{"inputs": [tensors]}`: one score per batch row (the first dimension).

    Row i is scored as {input name: its i-th row} over all inputs, so every input
    must have the same first dimension.
    """
    documents = body.get("inputs")
    if not isinstance(documents, list) or not documents:
        raise BadPredictionRequest('send {"inputs": [{"name", "shape", "datatype", "data"}, ...]}')
    inputs = [InferInput.parse(index, document) for index, document in enumerate(documents)]
    batch_sizes = {tensor.shape[0] for tensor in inputs}
    if len(batch_sizes) != 1:
        raise BadPredictionRequest(
            f"every input needs the same first dimension (batch size); got {sorted(batch_sizes)}"
        )
    rows = batch_sizes.pop()
    return [score(checksum, {tensor.name: tensor.row(i) for tensor in inputs}) for i in range(rows)]


def _flatten(data: list[Any]) -> list[Any]:
    flat: list[Any] = []
    for item in data:
        if isinstance(item, list):
            flat.extend(_flatten(item))
        else:
            flat.append(item)
    return flat
