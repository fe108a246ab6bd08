"""Who may tell Aegis what Envoy runs: node tokens, made-up versions, bounded node memory, xDS listener."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import auth
from tests.integration.conftest import Register, StartClient
from tests.integration.test_xds_protocol import HOLD, serve_model
from tests.processes import free_port

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

NODE_TOKENS = "envoy-1:token-for-envoy-1,*:fleet-token"


@pytest.fixture
async def client(
    request: pytest.FixtureRequest, make_settings: Any, database_url: str, start_client: StartClient
) -> TestClient[Any, Any]:
    extra: dict[str, str] = getattr(request, "param", {})
    settings = make_settings(database_url, AEGIS_XDS_HOLD_SECONDS=HOLD, AEGIS_XDS_VALIDATE="false", **extra)
    return await start_client(settings)


async def poll(
    client: TestClient[Any, Any], kind: str, version: str = "", *, node: str, token: str | None = None,
) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    body = {"node": {"id": node, "cluster": "sim"}, "version_info": version}
    response = await client.post(f"/v3/discovery:{kind}", json=body, headers=headers)
    if response.status == 304:
        return 304, {}
    return response.status, await response.json()


async def traffic(client: TestClient[Any, Any]) -> dict[str, Any]:
    document: dict[str, Any] = await (await client.get("/v1/traffic/m", headers=auth("viewer"))).json()
    return document


async def nodes(client: TestClient[Any, Any]) -> dict[str, dict[str, Any]]:
    listed = await (await client.get("/v1/xds/nodes", headers=auth("viewer"))).json()
    return {node["node_id"]: node for node in listed["nodes"]}


async def test_an_intruder_polling_made_up_versions_does_not_hold_the_acknowledgement(
    client: TestClient[Any, Any], register: Register
) -> None:
    await serve_model(client, register, "1", "2")
    acked = {}
    for kind in ("routes", "runtime"):
        _, first = await poll(client, kind, node="envoy")
        await poll(client, kind, first["version_info"], node="envoy")
        acked[kind] = first["version_info"]
    for _ in range(3):
        await poll(client, "runtime", "bogus", node="intruder")

    change = await client.put("/v1/traffic/m", json={"weights": {"1": 90, "2": 10}}, headers=auth("operator"))
    assert change.status == 200
    _, changed = await poll(client, "runtime", acked["runtime"], node="envoy")
    await poll(client, "runtime", "bogus", node="intruder")
    await poll(client, "runtime", changed["version_info"], node="envoy")
    await poll(client, "runtime", "bogus", node="intruder")

    document = await traffic(client)
    assert (document["acked"], document["nodes_acked"], document["nodes_total"]) == (True, 1, 1)
    listed = await nodes(client)
    assert listed["intruder"]["live"] is False
    assert listed["intruder"]["types"]["runtime"]["acked_version"] == ""
    assert listed["envoy"]["authenticated"] is False
    metrics = await (await client.get("/metrics")).text()
    assert 'aegis_xds_unknown_versions_total{type="runtime"} 5.0' in metrics


@pytest.mark.parametrize("client", [{"AEGIS_XDS_NODE_TOKENS": NODE_TOKENS}], indirect=True)
async def test_with_node_tokens_an_unauthenticated_poll_is_refused_and_leaves_no_trace(
    client: TestClient[Any, Any], register: Register
) -> None:
    await serve_model(client, register, "1")
    intruder = {"node": {"id": "intruder"}, "version_info": "bogus"}
    no_token = await client.post("/v3/discovery:routes", json=intruder)
    assert no_token.status == 401
    assert no_token.headers["WWW-Authenticate"] == "Bearer"
    assert "AEGIS_XDS_NODE_TOKEN" in (await no_token.json())["error"]["message"]
    assert (await poll(client, "routes", "bogus", node="intruder", token="-"))[0] == 401
    wrong, body = await poll(client, "routes", "bogus", node="intruder", token="guess")
    assert wrong == 403 and "guess" not in str(body)
    # A token given to one node does not speak for another.
    assert (await poll(client, "routes", node="envoy-2", token="token-for-envoy-1"))[0] == 403
    assert await nodes(client) == {}

    assert (await poll(client, "routes", node="envoy-1", token="token-for-envoy-1"))[0] == 200
    assert (await poll(client, "routes", node="envoy-2", token="fleet-token"))[0] == 200
    listed = await nodes(client)
    assert set(listed) == {"envoy-1", "envoy-2"}
    assert all(node["authenticated"] for node in listed.values())
    metrics = await (await client.get("/metrics")).text()
    assert 'aegis_xds_requests_total{result="unauthorized",type="routes"} 2.0' in metrics
    assert 'aegis_xds_requests_total{result="forbidden",type="routes"} 2.0' in metrics
    assert "token-for-envoy-1" not in metrics and "fleet-token" not in metrics


async def test_node_fields_too_long_to_be_real_are_refused_and_not_kept(client: TestClient[Any, Any]) -> None:
    for body in (
        {"node": {"id": "x" * 16384}},
        {"node": {"id": "envoy", "cluster": "c" * 16384}},
        {"node": {"id": "envoy"}, "version_info": "v" * 16384},
    ):
        response = await client.post("/v3/discovery:listeners", json=body)
        assert response.status == 422
        assert "should have at most" in (await response.json())["error"]["message"]
    assert await nodes(client) == {}


@pytest.mark.parametrize("client", [{"AEGIS_XDS_NODE_STALE_SECONDS": "0.2"}], indirect=True)
async def test_a_silent_node_is_forgotten_after_the_node_timeout_and_counted(
    client: TestClient[Any, Any],
) -> None:
    assert (await poll(client, "listeners", node="envoy"))[0] == 200
    assert set(await nodes(client)) == {"envoy"}
    await asyncio.sleep(0.5)
    assert await nodes(client) == {}
    metrics = await (await client.get("/metrics")).text()
    assert 'aegis_xds_node_evictions_total{reason="stale"} 1.0' in metrics
    assert "aegis_xds_tracked_nodes 0.0" in metrics


async def test_with_a_separate_xds_listener_discovery_is_served_there_and_only_there(
    make_settings: Any, database_url: str, start_client: StartClient
) -> None:
    xds_port = free_port()
    client = await start_client(make_settings(
        database_url, AEGIS_XDS_VALIDATE="false", AEGIS_XDS_LISTEN=f"127.0.0.1:{xds_port}"
    ))
    body = {"node": {"id": "envoy", "cluster": "sim"}}
    on_api = await client.post("/v3/discovery:listeners", json=body)
    assert on_api.status == 404
    async with aiohttp.ClientSession() as session:
        async with session.post(f"http://127.0.0.1:{xds_port}/v3/discovery:listeners", json=body) as response:
            assert response.status == 200
            assert (await response.json())["resources"][0]["name"] == "aegis_ingress"
        nodes_url = f"http://127.0.0.1:{xds_port}/v1/xds/nodes"
        async with session.get(nodes_url, headers=auth("viewer")) as response:
            assert response.status == 404, "the xDS listener serves discovery only"
    # The node view stays on the API listener.
    assert set(await nodes(client)) == {"envoy"}
