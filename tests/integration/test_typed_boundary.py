"""The typed boundary as a client meets it: bad input is a 4xx naming the field, every
timestamp in every answer is RFC 3339 with an offset, in one format per document."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from controlplane.openapi import openapi_document
from tests.conftest import auth
from tests.integration.conftest import Register, StartClient, upload_form

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

POLICY = """
policies:
  - name: manual
    models: ["held"]
    steps:
      - setWeight: 10
      - pause: {}
"""
DEEP = b'{"x": ' + b"[" * 5000 + b"]" * 5000 + b"}"
HUGE = b'{"x": ' + b"9" * 5000 + b"}"
# Every field that carries a time, in any answer.
TIME_FIELDS = {
    "at", "created_at", "started_at", "acknowledged_at", "acked_at", "first_seen", "last_seen",
    "expires_at", "last_publish_error_at", "analysed_at", "decided_at",
}


@pytest.fixture
async def client(
    make_settings: Any, database_url: str, start_client: StartClient, tmp_path: Path
) -> TestClient[Any, Any]:
    policies = tmp_path / "policies.yaml"
    policies.write_text(POLICY)
    return await start_client(
        make_settings(
            database_url,
            AEGIS_POLICIES=policies,
            AEGIS_ROLLOUT_TICK_SECONDS=0.1,
            AEGIS_XDS_VALIDATE="false",
            AEGIS_XDS_HOLD_SECONDS=0,
            AEGIS_PROMETHEUS_URL="http://127.0.0.1:9",
        )
    )


def times_in(document: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(document, dict):
        for key, value in document.items():
            if key in TIME_FIELDS:
                yield key, value
            yield from times_in(value)
    elif isinstance(document, list):
        for value in document:
            yield from times_in(value)


def assert_rfc3339_with_offset(document: Any, *, expect: set[str]) -> None:
    """Each time is a string with an offset and within a minute of now; `expect` must all be set."""
    now = datetime.now(UTC)
    seen = set()
    for key, value in times_in(document):
        if value is None:
            continue
        assert isinstance(value, str), f"{key} is {value!r}, not an RFC 3339 string"
        parsed = datetime.fromisoformat(value)
        assert parsed.tzinfo is not None, f"{key} {value!r} has no offset"
        assert abs(parsed - now) < timedelta(minutes=1), f"{key} {value!r} is not about now"
        seen.add(key)
    assert expect <= seen, f"missing times: {expect - seen} in {document}"


async def start_acknowledged_rollout(client: TestClient[Any, Any], register: Register) -> dict[str, Any]:
    for version in ("1", "2"):
        assert (await register("held", version, f"held {version}".encode())).status == 201
    for version, stage in (("1", "prod"), ("2", "canary")):
        promoted = await client.post(
            f"/v1/registry/held/{version}/promote", json={"stage": stage}, headers=auth("operator")
        )
        assert promoted.status == 200, await promoted.text()
    for _ in range(100):
        response = await client.get("/v1/rollouts/held", headers=auth("viewer"))
        document: dict[str, Any] = await response.json()
        if document["acknowledged"]:
            return document
        await asyncio.sleep(0.1)
    raise AssertionError(f"the weight was never acknowledged: {document}")


async def test_a_rollout_document_on_sqlite_keeps_the_offset_of_its_times(
    client: TestClient[Any, Any], register: Register
) -> None:
    document = await start_acknowledged_rollout(client, register)

    assert_rfc3339_with_offset(document, expect={"started_at", "acknowledged_at", "at"})
    listed = await (await client.get("/v1/rollouts", headers=auth("viewer"))).json()
    assert_rfc3339_with_offset(listed, expect={"started_at", "acknowledged_at"})


async def test_decisions_give_every_time_in_one_format(
    client: TestClient[Any, Any], register: Register
) -> None:
    document = await start_acknowledged_rollout(client, register)
    paused = await client.post("/v1/rollouts/held/pause", json={}, headers=auth("operator"))
    assert paused.status == 200
    decisions = (await paused.json())["decisions"]

    assert any(d.get("acked_at") is not None for d in decisions), decisions
    assert_rfc3339_with_offset(decisions, expect={"at", "acked_at", "decided_at"})
    assert document["acknowledged_at"] in {d["acked_at"] for d in decisions}
    # Every decision, the start included, says when it was decided: never after it was stored.
    for decision in decisions:
        assert datetime.fromisoformat(decision["decided_at"]) <= datetime.fromisoformat(decision["at"])


async def test_xds_nodes_give_when_they_were_seen_as_rfc3339(client: TestClient[Any, Any]) -> None:
    poll = {"node": {"id": "edge-1", "cluster": "gateway"}, "version_info": ""}
    assert (await client.post("/v3/discovery:clusters", json=poll)).status == 200

    nodes = await (await client.get("/v1/xds/nodes", headers=auth("viewer"))).json()

    assert [node["node_id"] for node in nodes["nodes"]] == ["edge-1"]
    assert_rfc3339_with_offset(nodes, expect={"first_seen", "last_seen"})


def json_operations() -> list[tuple[str, str]]:
    document = openapi_document()
    return [
        (method, path)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if "application/json" in operation.get("requestBody", {}).get("content", {})
    ]


async def test_deep_nesting_and_huge_integers_are_a_4xx_on_every_json_body(
    client: TestClient[Any, Any], register: Register
) -> None:
    assert (await register("m", "1", b"weights")).status == 201
    values = {"model": "m", "version": "1", "command": "pause", "type": "routes"}
    operations = json_operations()
    assert len(operations) >= 9

    for method, path in operations:
        url = path.format(**values)
        for body in (DEEP, HUGE):
            response = await client.request(
                method.upper(), url, data=body, headers={**auth("admin"), "Content-Type": "application/json"}
            )
            assert response.status in (400, 422), f"{method.upper()} {path}: {response.status}"
            assert (await response.json())["error"]["message"], f"{method.upper()} {path}"
    for body in (DEEP, HUGE):
        form = upload_form(body.decode(), b"bytes")
        response = await client.post("/v1/registry/register", data=form, headers=auth("admin"))
        assert response.status == 400, await response.text()


async def test_a_bad_field_is_a_422_that_names_it_and_says_what_to_fix(client: TestClient[Any, Any]) -> None:
    endpoint = {"model_name": "m", "version": "1", "address": "10.0.0.1", "port": 70000}

    response = await client.post("/v1/endpoints", json=endpoint, headers=auth("operator"))

    assert response.status == 422
    message = (await response.json())["error"]["message"]
    assert message == (
        "the request body was not accepted and nothing was recorded: "
        "port: Input should be less than or equal to 65535"
    )
    typo = await client.post(
        "/v1/registry/m/1/promote", json={"stage": "prod", "reson": "x"}, headers=auth("operator")
    )
    assert typo.status == 422
    assert "reson: is not a field of this request" in (await typo.json())["error"]["message"]


async def test_a_second_metadata_part_is_refused_not_last_wins(
    client: TestClient[Any, Any], tmp_path: Path
) -> None:
    form = aiohttp.FormData()
    for version in ("1", "2"):
        metadata = json.dumps({"model_name": "m", "version": version})
        form.add_field("metadata", metadata, content_type="application/json")
    form.add_field("artifact", b"bytes", filename="model.bin")

    response = await client.post("/v1/registry/register", data=form, headers=auth("admin"))

    assert response.status == 400
    assert "a second 'metadata' part" in (await response.json())["error"]["message"]
    listed = await (await client.get("/v1/registry/models", headers=auth("viewer"))).json()
    assert listed["models"] == []


@pytest.mark.parametrize("signature", ["\u00e9" * 64, "zz"])
async def test_a_signature_that_is_not_hex_is_a_422_not_a_500(
    client: TestClient[Any, Any], register: Register, signature: str
) -> None:
    # Found by the fuzz suite: a non-ASCII signature reached hmac.compare_digest (TypeError).
    response = await register("m", "1", b"bytes", signature=signature)

    assert response.status == 422, await response.text()
    assert "signature" in (await response.json())["error"]["message"]


async def test_a_download_url_with_a_non_ascii_signature_is_a_403_not_a_500(
    client: TestClient[Any, Any], register: Register
) -> None:
    # Found by the fuzz suite: the signature reached hmac.compare_digest as a non-ASCII str.
    assert (await register("m", "1", b"bytes")).status == 201

    response = await client.get("/v1/registry/m/1/artifact?expires=9999999999&sig=%F0%A4%B8%8C")

    assert response.status == 403
    assert "signature is not valid" in (await response.json())["error"]["message"]


async def test_a_405_says_which_methods_are_allowed(client: TestClient[Any, Any]) -> None:
    response = await client.delete("/v1/registry/models", headers=auth("admin"))

    assert response.status == 405
    assert {m.strip() for m in response.headers["Allow"].split(",")} == {"GET", "HEAD"}
    assert (await response.json())["error"]["code"] == "method_not_allowed"
