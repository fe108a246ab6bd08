"""The typed kit's pure parts: field messages, aware timestamps, the generated document's shape."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from controlplane.alert_webhook import AlertmanagerWebhook
from controlplane.openapi import all_operations, openapi_document
from controlplane.traffic.schemas import EndpointBody
from registry.boundary import ResponseModel
from registry.errors import InvalidInput, MalformedRequest, NotFound
from registry.fields import Timestamp
from registry.routes import parse_json_model
from registry.schemas import MODEL_PARAM, PromoteRequest


class Stamped(ResponseModel):
    at: Timestamp


@pytest.mark.parametrize(
    ("stored", "expected"),
    [
        (datetime(2026, 12, 2, 1, 0), "2026-12-02T01:00:00+00:00"),  # naive, as SQLite returns it
        (datetime(2026, 12, 2, 2, 0, tzinfo=timezone(timedelta(hours=1))), "2026-12-02T02:00:00+01:00"),
        (1796173200.0, "2026-12-02T01:00:00+00:00"),  # Unix time, as the rollout state keeps it
    ],
)
def test_every_timestamp_is_written_as_rfc3339_with_an_offset(stored: object, expected: str) -> None:
    written = Stamped.model_validate({"at": stored}).model_dump(mode="json")["at"]

    assert written == expected
    assert datetime.fromisoformat(written).tzinfo is not None


def test_a_field_error_names_the_field_with_its_index() -> None:
    alerts = [{"status": "firing", "labels": {}}, {"status": "firing", "labels": {}, "annotations": "x"}]
    raw = json.dumps({"alerts": alerts}).encode()

    with pytest.raises(InvalidInput) as refused:
        parse_json_model(AlertmanagerWebhook, raw, what="the request body")

    assert "alerts[1].annotations: Input should be a valid dictionary" in refused.value.message


@pytest.mark.parametrize(
    ("raw", "error", "says"),
    [
        (b"{not json", MalformedRequest, "not valid JSON"),
        (b"[]", MalformedRequest, "must be a JSON object"),
        (b'{"stage": "prod", "x": ' + b"[" * 100 + b"]" * 100 + b"}", MalformedRequest, "nested"),
        (b'{"stage": ' + b"9" * 5000 + b"}", MalformedRequest, "64-bit"),
        (b'{"stage": "staging"}', InvalidInput, "stage: Input should be 'canary' or 'prod'"),
        (b'{"stage": "prod", "reson": "x"}', InvalidInput, "reson: is not a field of this request"),
    ],
)
def test_bad_json_is_a_400_and_a_bad_field_a_422(raw: bytes, error: type[Exception], says: str) -> None:
    with pytest.raises(error) as refused:
        parse_json_model(PromoteRequest, raw, what="the request body")

    assert says in str(refused.value)


def test_strict_fields_take_no_strings_for_numbers_and_no_names_for_addresses() -> None:
    endpoint = {"model_name": "m", "version": "1", "address": "10.0.0.1", "port": 8080}

    assert EndpointBody.model_validate(endpoint).port == 8080
    for field, value in (("port", "8080"), ("port", True), ("address", "model-server.local")):
        with pytest.raises(InvalidInput):
            raw = json.dumps({**endpoint, field: value}).encode()
            parse_json_model(EndpointBody, raw, what="the request body")


def test_a_path_value_outside_its_enum_is_a_404_and_a_bad_name_a_422() -> None:
    command = next(p for op in all_operations() for p in op.params if p.name == "command")

    with pytest.raises(NotFound):
        command.parse("explode")
    with pytest.raises(InvalidInput) as refused:
        MODEL_PARAM.parse("a..b")
    assert "'..' is not allowed" in refused.value.message


def test_the_document_names_every_model_once_under_components() -> None:
    document = openapi_document()
    schemas = document["components"]["schemas"]

    assert {"Error", "PromoteRequest", "VersionDocument", "RolloutDocument", "XdsNodes"} <= set(schemas)
    assert not [name for name in schemas if name.endswith(("-Input", "-Output"))]
