"""Request bodies over real sockets: read whole, bounded (413), timed out when stalled (408),
and hostile JSON answered 400, never 500, on every JSON endpoint."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from controlplane.alerts import MAX_WEBHOOK_BYTES
from controlplane.xds.server import MAX_POLL_BYTES
from registry.http import MAX_JSON_BODY_BYTES
from tests.conftest import TOKENS, auth
from tests.integration.conftest import Register, StartClient
from tests.raw_http import chunked, json_body, port_of, read_response, request_head, send_in_pieces

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

STALL_SECONDS = 1.0

# name: (method, path, role or None for no token, a small valid body, the endpoint's limit)
ENDPOINTS: dict[str, tuple[str, str, str | None, dict[str, Any], int]] = {
    "promote": ("POST", "/v1/registry/m/1/promote", "operator", {"stage": "prod"}, MAX_JSON_BODY_BYTES),
    "traffic": ("PUT", "/v1/traffic/m", "operator", {"weights": {"1": 100}}, MAX_JSON_BODY_BYTES),
    "endpoints": (
        "POST", "/v1/endpoints", "operator",
        {"model_name": "m", "version": "1", "address": "127.0.0.1", "port": 9000, "ttl_seconds": 60},
        MAX_JSON_BODY_BYTES,
    ),
    "alerts": (
        "POST", "/v1/alerts/alertmanager", "operator", {"version": "4", "alerts": []}, MAX_WEBHOOK_BYTES
    ),
    "rollout-command": ("POST", "/v1/rollouts/m/pause", "operator", {"reason": "r"}, MAX_JSON_BODY_BYTES),
    **{
        f"xds-{kind}": ("POST", f"/v3/discovery:{kind}", None, {"node": {"id": "n1"}}, MAX_POLL_BYTES)
        for kind in ("listeners", "clusters", "routes", "endpoints")
    },
}


@pytest.fixture
async def client(make_settings: Any, database_url: str, start_client: StartClient) -> TestClient[Any, Any]:
    settings = make_settings(
        database_url,
        AEGIS_BODY_READ_TIMEOUT_SECONDS=STALL_SECONDS,
        AEGIS_XDS_HOLD_SECONDS=0.2,
        AEGIS_XDS_VALIDATE="false",
    )
    return await start_client(settings)


@pytest.fixture
async def model(client: TestClient[Any, Any], register: Register) -> None:
    """m/1 in prod (so traffic can be set), m/2 in staging."""
    for version in ("1", "2"):
        assert (await register("m", version, f"weights {version}".encode())).status == 201
    promoted = await client.post("/v1/registry/m/1/promote", json={"stage": "prod"}, headers=auth("operator"))
    assert promoted.status == 200


def headers_for(role: str | None) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if role is not None:
        headers["Authorization"] = f"Bearer {TOKENS[role]}"
    return headers


def outcome(status: int, body: bytes | dict[str, Any]) -> tuple[int, str | None]:
    """Success or the error code: a repeated request may answer 200 where the first got 201."""
    document = body if isinstance(body, dict) else json.loads(body or b"{}")
    return status // 100, document.get("error", {}).get("code")


async def answer_to_small_body(client: TestClient[Any, Any], name: str) -> tuple[int, str | None]:
    method, path, role, document, _ = ENDPOINTS[name]
    response = await client.request(method, path, json=document, headers=headers_for(role))
    return outcome(response.status, await response.read())


@pytest.mark.parametrize("name", sorted(ENDPOINTS))
async def test_a_body_sent_in_two_writes_is_read_whole(
    client: TestClient[Any, Any], model: None, name: str
) -> None:
    method, path, role, document, _ = ENDPOINTS[name]
    body = json_body(document, padding=80_000)
    half = len(body) // 2
    split = await send_in_pieces(
        port_of(client), method, path, [body[:half], body[half:]], headers=headers_for(role)
    )
    assert b"not valid JSON" not in split.body
    # The same document, sent small and whole, gets the same answer.
    assert outcome(split.status, split.body) == await answer_to_small_body(client, name)


@pytest.mark.parametrize("name", sorted(ENDPOINTS))
async def test_a_500_kb_body_is_read_whole_or_refused_413_by_its_limit(
    client: TestClient[Any, Any], model: None, name: str
) -> None:
    method, path, role, document, limit = ENDPOINTS[name]
    body = json_body(document, padding=500_000)
    answer = await send_in_pieces(port_of(client), method, path, [body], headers=headers_for(role))
    if len(body) > limit:
        assert answer.status == 413
    else:
        assert outcome(answer.status, answer.body) == await answer_to_small_body(client, name)


@pytest.mark.parametrize("name", sorted(ENDPOINTS))
@pytest.mark.parametrize("transfer", ["content-length", "chunked"])
async def test_a_body_over_the_endpoint_limit_is_413_with_the_limit(
    client: TestClient[Any, Any], model: None, name: str, transfer: str
) -> None:
    method, path, role, document, limit = ENDPOINTS[name]
    body = json_body(document, padding=limit)
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    try:
        if transfer == "content-length":
            # Refused from the declared length, before a byte of the body is sent.
            writer.write(request_head(method, path, headers=headers_for(role), content_length=len(body)))
        else:
            writer.write(request_head(method, path, headers=headers_for(role)) + chunked(body))
        await writer.drain()
        answer = await read_response(reader)
    finally:
        writer.close()
    assert answer.status == 413
    assert answer.json()["error"]["code"] == "payload_too_large"
    assert f"limit of {limit} bytes" in answer.message


async def test_a_stalled_json_body_gets_408_and_the_connection_is_closed(
    client: TestClient[Any, Any], model: None
) -> None:
    body = json_body({"stage": "prod"})
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    try:
        writer.write(
            request_head(
                "POST", "/v1/registry/m/2/promote", headers=headers_for("operator"),
                content_length=len(body) + 100,
            )
            + body
        )
        await writer.drain()
        answer = await read_response(reader)
        assert answer.status == 408
        assert "AEGIS_BODY_READ_TIMEOUT_SECONDS" in answer.message
        assert answer.headers["connection"] == "close"
        # Released at once: aiohttp would otherwise linger 10 s reading the rest.
        assert await asyncio.wait_for(reader.read(), 5) == b""
    finally:
        writer.close()
    version = await client.get("/v1/registry/m/2", headers=auth("viewer"))
    assert (await version.json())["stage"] == "staging"


async def test_a_slow_but_steady_body_is_not_timed_out(client: TestClient[Any, Any], model: None) -> None:
    method, path, role, document, _ = ENDPOINTS["endpoints"]
    body = json_body(document)
    pieces = [body[i : i + 20] for i in range(0, len(body), 20)]
    # Each pause is well under the idle timeout; together they are far over it.
    answer = await send_in_pieces(
        port_of(client), method, path, pieces, headers=headers_for(role), pause=STALL_SECONDS / 3
    )
    assert answer.status == 201
    assert answer.json()["port"] == 9000


TOO_DEEP = b"[" * 65 + b"]" * 65
HOSTILE_BODIES = {
    "5000 nested arrays": (b"[" * 5000 + b"]" * 5000, "nested more than 64 levels"),
    "5000 nested objects": (b'{"a":' * 5000 + b"1" + b"}" * 5000, "nested more than 64 levels"),
    "65 nested arrays": (b'{"stage": "prod", "x": ' + TOO_DEEP + b"}", "nested more than 64 levels"),
    "5000-digit integer": (b'{"stage": "prod", "port": ' + b"9" * 5000 + b"}", "outside the 64-bit range"),
    "integer past int64": (b'{"stage": "prod", "port": 9223372036854775808}', "outside the 64-bit range"),
    "NaN": (b'{"stage": "prod", "port": NaN}', "NaN is not a JSON number"),
    "Infinity": (b'{"stage": "prod", "port": -Infinity}', "-Infinity is not a JSON number"),
    "1e999": (b'{"stage": "prod", "port": 1e999}', "too large for a 64-bit float"),
}


# An xDS poll keeps four shallow fields and drops the rest, so it skips the depth walk
# (the hottest request; see DiscoveryRequest): moderate nesting in a dropped field is
# answered, pathological nesting is still a 400.
DEPTH_WALKED = [
    (name, hostile) for name in sorted(ENDPOINTS) for hostile in sorted(HOSTILE_BODIES)
    if not (name.startswith("xds-") and hostile == "65 nested arrays")
]


@pytest.mark.parametrize(("name", "hostile"), DEPTH_WALKED)
async def test_hostile_json_is_400_with_a_reason_on_every_json_endpoint(
    client: TestClient[Any, Any], model: None, name: str, hostile: str
) -> None:
    method, path, role, _, _ = ENDPOINTS[name]
    body, reason = HOSTILE_BODIES[hostile]
    response = await client.request(method, path, data=body, headers=headers_for(role))
    assert response.status == 400
    error = (await response.json())["error"]
    assert error["code"] == "malformed_request"
    assert reason in error["message"]


async def test_64_levels_of_nesting_are_accepted(client: TestClient[Any, Any], model: None) -> None:
    # Envoy's node metadata is free-form: a field Aegis does not read may nest 64 deep.
    body = b'{"node": {"id": "deep"}, "x": ' + b"[" * 63 + b"]" * 63 + b"}"
    response = await client.post("/v3/discovery:clusters", data=body)
    assert response.status == 200
    assert (await response.json())["resources"] is not None


async def test_an_xds_poll_nested_deep_in_a_field_aegis_drops_is_answered(
    client: TestClient[Any, Any], model: None
) -> None:
    body = b'{"node": {"id": "deeper", "metadata": {"x": ' + b"[" * 200 + b"]" * 200 + b"}}}"
    response = await client.post("/v3/discovery:clusters", data=body)
    assert response.status == 200


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/v1/alerts/alertmanager", {"POST"}),
        ("DELETE", "/v1/registry/m/1/promote", {"POST"}),
        ("PATCH", "/v1/traffic/m", {"GET", "PUT"}),
        ("GET", "/v3/discovery:clusters", {"POST"}),
    ],
)
async def test_405_names_the_allowed_methods(
    client: TestClient[Any, Any], method: str, path: str, allowed: set[str]
) -> None:
    response = await client.request(method, path, headers=auth("admin"))
    assert response.status == 405
    assert allowed <= {m.strip() for m in response.headers["Allow"].split(",")}
    assert f"{method} is not allowed" in (await response.json())["error"]["message"]
