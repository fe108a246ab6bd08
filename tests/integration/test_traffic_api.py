"""Traffic weights and endpoint announcements through the API."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from controlplane.traffic.api import TRAFFIC
from controlplane.traffic.service import ROLLOUT_OWNER, TrafficRequest
from controlplane.xds.resources import cluster_name
from tests.conftest import auth
from tests.integration.conftest import Register, StartClient
from tests.integration.test_alert_intake import FAIL_TRAFFIC_WRITES, HEAL_TRAFFIC_WRITES, run_sql
from tests.integration.test_xds_protocol import poll, serve_model, served_weights

# Both databases: traffic settings and endpoints live in the same store as the registry.


@pytest.fixture
async def client(make_settings: Any, database_url: str, start_client: StartClient) -> TestClient[Any, Any]:
    return await start_client(
        make_settings(database_url, AEGIS_XDS_HOLD_SECONDS=0.2, AEGIS_XDS_VALIDATE="false")
    )


async def test_with_nothing_set_prod_takes_everything(
    client: TestClient[Any, Any], register: Register
) -> None:
    await serve_model(client, register, "1", "2")
    document = await (await client.get("/v1/traffic/m", headers=auth("viewer"))).json()
    assert document["weights"] == {"1": 100, "2": 0}
    assert (document["prod"], document["canary"]) == ("1", "2")
    assert document["acked"] is True  # no live node: nothing to wait for
    assert (document["nodes_acked"], document["nodes_total"]) == (0, 0)


async def test_put_sets_weights_match_and_mirror(client: TestClient[Any, Any], register: Register) -> None:
    await serve_model(client, register, "1", "2")
    body = {
        "weights": {"1": 90, "2": 10},
        "match": [{"headers": {"x-canary": "always"}}],
        "mirror": {"percent": 5},
    }
    response = await client.put("/v1/traffic/m", json=body, headers=auth("operator"))
    assert response.status == 200
    document = await response.json()
    assert document["weights"] == {"1": 90, "2": 10}
    assert document["match"] == [{"headers": {"x-canary": "always"}}]
    assert document["mirror"] == {"percent": 5}
    assert await served_weights(client) == {cluster_name("m", "1"): 90, cluster_name("m", "2"): 10}
    _, routes = await poll(client, "routes")
    names = [r["name"] for r in routes["resources"][0]["virtual_hosts"][0]["routes"]]
    assert names.index("m/match-0/v1-verb") < names.index("m/v1-verb")


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"weights": {"1": 50, "3": 50}}, 422, "only its prod and canary"),
        ({"weights": {"1": -1, "2": 5}}, 422, "weights.1: Input should be greater than or equal to 0"),
        ({"weights": {"1": 0, "2": 0}}, 422, "sum to more than 0"),
        ({"weights": {"1": 1.5}}, 422, "weights.1: Input should be a valid integer"),
        ({"weights": {}}, 422, "weights"),
        ({"weights": {"1": 50}, "mirror": {"percent": 101}}, 422, "mirror"),
        ({"weights": {"1": 50}, "match": [{"path": "/x"}]}, 422, "match"),
    ],
)
async def test_bad_weights_are_refused_and_change_nothing(
    client: TestClient[Any, Any], register: Register, body: dict[str, Any], status: int, message: str
) -> None:
    await serve_model(client, register, "1", "2")
    _, before = await poll(client, "routes")
    response = await client.put("/v1/traffic/m", json=body, headers=auth("operator"))
    assert response.status == status
    assert message in (await response.json())["error"]["message"]
    assert (await poll(client, "routes", before["version_info"]))[0] == 304


async def test_malformed_json_unknown_models_and_roles(
    client: TestClient[Any, Any], register: Register
) -> None:
    await serve_model(client, register, "1")
    malformed = await client.put("/v1/traffic/m", data=b"{oops", headers=auth("operator"))
    assert malformed.status == 400
    assert (
        await client.put("/v1/traffic/nope", json={"weights": {"1": 1}}, headers=auth("operator"))
    ).status == 404
    assert (
        await client.put("/v1/traffic/m", json={"weights": {"1": 1}}, headers=auth("viewer"))
    ).status == 403
    assert (await client.put("/v1/traffic/m", json={"weights": {"1": 1}})).status == 401
    assert (await client.get("/v1/traffic/m")).status == 401


async def test_a_manual_put_is_refused_while_a_rollout_owns_the_model(
    client: TestClient[Any, Any], register: Register
) -> None:
    await serve_model(client, register, "1", "2")
    traffic = client.app[TRAFFIC]
    await traffic.set_traffic(
        "m", TrafficRequest({"1": 80, "2": 20}), actor="aegis-rollout", owner=ROLLOUT_OWNER
    )
    response = await client.put(
        "/v1/traffic/m", json={"weights": {"1": 0, "2": 100}}, headers=auth("operator")
    )
    assert response.status == 409
    assert "rollout" in (await response.json())["error"]["message"]
    assert (await (await client.get("/v1/traffic/m", headers=auth("viewer"))).json())["weights"] == {
        "1": 80,
        "2": 20,
    }


async def test_an_arm_without_endpoints_gets_no_weight(
    client: TestClient[Any, Any], register: Register
) -> None:
    await serve_model(client, register, "1")
    await register("m", "2", b"weights 2")
    await client.post("/v1/registry/m/2/promote", json={"stage": "canary"}, headers=auth("operator"))
    await client.put("/v1/traffic/m", json={"weights": {"1": 50, "2": 50}}, headers=auth("operator"))
    assert await served_weights(client) == {cluster_name("m", "1"): 100}


async def test_endpoints_are_validated_listed_renewed_and_expire(
    client: TestClient[Any, Any], register: Register
) -> None:
    await register("m", "1", b"weights")
    announce = {"model_name": "m", "version": "1", "address": "127.0.0.1", "port": 9100, "ttl_seconds": 1}
    bad = [
        ({**announce, "address": "localhost"}, 422),
        ({**announce, "port": 0}, 422),
        ({**announce, "ttl_seconds": 0}, 422),
        ({**announce, "version": "9"}, 404),
        ({**announce, "model_name": "a|b"}, 422),
    ]
    for body, status in bad:
        assert (await client.post("/v1/endpoints", json=body, headers=auth("operator"))).status == status
    assert (await client.post("/v1/endpoints", json=announce, headers=auth("viewer"))).status == 403
    first = await client.post("/v1/endpoints", json=announce, headers=auth("operator"))
    assert (first.status, (await first.json())["new"]) == (201, True)
    renewed = await client.post(
        "/v1/endpoints", json={**announce, "ttl_seconds": 2}, headers=auth("operator")
    )
    assert renewed.status == 200
    listed = await (await client.get("/v1/endpoints", headers=auth("viewer"))).json()
    assert [(e["address"], e["port"]) for e in listed["endpoints"]] == [("127.0.0.1", 9100)]
    for _ in range(100):
        listed = await (await client.get("/v1/endpoints", headers=auth("viewer"))).json()
        if not listed["endpoints"]:
            break
        await asyncio.sleep(0.1)
    assert listed["endpoints"] == []


async def test_deleting_an_endpoint_removes_it(client: TestClient[Any, Any], register: Register) -> None:
    await serve_model(client, register, "1")
    target = {"model_name": "m", "version": "1", "address": "127.0.0.1", "port": 9000}
    assert (await client.delete("/v1/endpoints", json=target, headers=auth("operator"))).status == 200
    assert (await client.delete("/v1/endpoints", json=target, headers=auth("operator"))).status == 404
    _, clusters = await poll(client, "clusters")
    assert clusters["resources"][0]["load_assignment"]["endpoints"] == []


async def test_a_restart_gives_stored_endpoints_one_ttl_to_renew(
    client: TestClient[Any, Any],
    register: Register,
    make_settings: Any,
    database_url: str,
    start_client: StartClient,
) -> None:
    await register("m", "1", b"weights")
    announce = {"model_name": "m", "version": "1", "address": "127.0.0.1", "port": 9100, "ttl_seconds": 2}
    await client.post("/v1/endpoints", json=announce, headers=auth("operator"))
    await client.close()
    await asyncio.sleep(2.5)  # the control plane is down for longer than the TTL
    restarted = await start_client(
        make_settings(database_url, AEGIS_XDS_HOLD_SECONDS=0.2, AEGIS_XDS_VALIDATE="false")
    )
    listed = await (await restarted.get("/v1/endpoints", headers=auth("viewer"))).json()
    assert [(e["address"], e["port"]) for e in listed["endpoints"]] == [("127.0.0.1", 9100)]


async def test_a_prod_change_onto_a_version_with_no_live_endpoint_is_refused_unless_forced(
    client: TestClient[Any, Any], register: Register
) -> None:
    await serve_model(client, register, "1")  # prod 1, served at 127.0.0.1:9000
    await register("m", "2", b"weights 2")
    refused = await client.post("/v1/registry/m/2/promote", json={"stage": "prod"}, headers=auth("operator"))
    assert refused.status == 409
    message = (await refused.json())["error"]["message"]
    assert "m 2 has no live endpoint" in message and "--force" in message
    document = await (await client.get("/v1/traffic/m", headers=auth("viewer"))).json()
    assert (document["prod"], document["endpoint_counts"]) == ("1", {"1": 1})

    # Version 2's server comes up; 2 becomes prod; then version 1's server stops.
    await client.post(
        "/v1/endpoints", headers=auth("operator"),
        json={"model_name": "m", "version": "2", "address": "127.0.0.1", "port": 9002, "ttl_seconds": 60},
    )
    promoted = await client.post("/v1/registry/m/2/promote", json={"stage": "prod"}, headers=auth("operator"))
    assert promoted.status == 200
    await client.delete(
        "/v1/endpoints", headers=auth("operator"),
        json={"model_name": "m", "version": "1", "address": "127.0.0.1", "port": 9000},
    )
    rollback = await client.post("/v1/registry/m/rollback", json={}, headers=auth("operator"))
    assert rollback.status == 409
    assert "m 1 has no live endpoint" in (await rollback.json())["error"]["message"]
    assert await served_weights(client) == {cluster_name("m", "2"): 100}  # requests keep reaching version 2
    not_a_flag = await client.post("/v1/registry/m/rollback", json={"force": "yes"}, headers=auth("operator"))
    assert not_a_flag.status == 422

    forced = await client.post(
        "/v1/registry/m/rollback", json={"force": True, "reason": "2 is worse"}, headers=auth("operator")
    )
    assert forced.status == 200
    document = await (await client.get("/v1/traffic/m", headers=auth("viewer"))).json()
    assert (document["prod"], document["weights"], document["endpoint_counts"]) == ("1", {"1": 100}, {"1": 0})


async def test_a_first_prod_with_nothing_serving_yet_needs_no_endpoint(
    client: TestClient[Any, Any], register: Register
) -> None:
    await register("m", "1", b"weights 1")
    response = await client.post("/v1/registry/m/1/promote", json={"stage": "prod"}, headers=auth("operator"))
    assert response.status == 200  # nothing served before: nothing is taken away


async def test_weights_the_database_refused_are_not_served_to_envoy(
    client: TestClient[Any, Any], register: Register
) -> None:
    await serve_model(client, register, "1", "2")
    kept = await client.put("/v1/traffic/m", json={"weights": {"1": 90, "2": 10}}, headers=auth("operator"))
    assert kept.status == 200
    await run_sql(client, FAIL_TRAFFIC_WRITES)
    half = {"weights": {"1": 50, "2": 50}}
    refused = await client.put("/v1/traffic/m", json=half, headers=auth("operator"))
    assert refused.status == 503
    assert (await refused.json())["error"]["code"] == "storage_unavailable"
    assert await served_weights(client) == {cluster_name("m", "1"): 90, cluster_name("m", "2"): 10}
    await run_sql(client, HEAL_TRAFFIC_WRITES)
    document = await (await client.get("/v1/traffic/m", headers=auth("viewer"))).json()
    assert document["weights"] == {"1": 90, "2": 10}
