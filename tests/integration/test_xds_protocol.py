"""The REST xDS protocol against the running app, with simulated Envoy nodes (HTTP clients)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from controlplane.xds.resources import cluster_name
from controlplane.xds.snapshot import ResourceType, traffic_targets
from tests.conftest import auth
from tests.integration.conftest import Register, StartClient

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

HOLD = 0.5


@pytest.fixture
async def client(make_settings: Any, database_url: str, start_client: StartClient) -> TestClient[Any, Any]:
    settings = make_settings(database_url, AEGIS_XDS_HOLD_SECONDS=HOLD, AEGIS_XDS_VALIDATE="false")
    return await start_client(settings)


async def poll(
    client: TestClient[Any, Any],
    kind: str,
    version: str = "",
    node: str = "sim-1",
    names: list[str] | None = None,
) -> tuple[int, dict[str, Any]]:
    body: dict[str, Any] = {"node": {"id": node, "cluster": "sim"}, "version_info": version}
    if names is not None:
        body["resource_names"] = names
    response = await client.post(f"/v3/discovery:{kind}", json=body)
    if response.status == 304:
        assert await response.read() == b""
        return 304, {}
    return response.status, await response.json()


async def serve_model(client: TestClient[Any, Any], register: Register, *versions: str) -> None:
    for index, version in enumerate(versions):
        await register("m", version, f"weights {version}".encode())
        stage = "prod" if index == 0 else "canary"
        await client.post(
            f"/v1/registry/m/{version}/promote", json={"stage": stage}, headers=auth("operator")
        )
        await client.post(
            "/v1/endpoints",
            headers=auth("operator"),
            json={
                "model_name": "m",
                "version": version,
                "address": "127.0.0.1",
                "port": 9000 + index,
                "ttl_seconds": 60,
            },
        )


def weights_in(runtime: dict[str, Any]) -> dict[str, int]:
    """Cluster -> weight in a runtime (RTDS) response: each key ends with its cluster's name."""
    layer: dict[str, int] = runtime["resources"][0]["layer"]
    return {key.rsplit(".", 1)[1]: weight for key, weight in layer.items()}


async def served_weights(client: TestClient[Any, Any], model: str = "m") -> dict[str, int]:
    """Percent per cluster that a new Envoy would send the model's requests: the model's route,
    weighted by the runtime layer (both as polled now)."""
    _, routes = await poll(client, "routes", node="fresh")
    _, runtime = await poll(client, "runtime", node="fresh")
    route = next(
        r for r in routes["resources"][0]["virtual_hosts"][0]["routes"] if r["name"] == f"{model}/v1-verb"
    )
    targets = traffic_targets(route, runtime["resources"][0]["layer"])
    total = sum(weight for _, weight in targets)
    return {cluster: round(100 * weight / total) for cluster, weight in targets}


async def test_an_up_to_date_poll_gets_304_and_a_held_poll_returns_the_change(
    client: TestClient[Any, Any], register: Register
) -> None:
    await serve_model(client, register, "1", "2")
    _, routes = await poll(client, "routes", names=["aegis_routes"])
    status, first = await poll(client, "runtime", names=["aegis_weights"])
    assert status == 200
    assert first["type_url"] == ResourceType.RUNTIME
    assert weights_in(first) == {cluster_name("m", "1"): 100, cluster_name("m", "2"): 0}
    assert (await poll(client, "runtime", first["version_info"]))[0] == 304

    held = asyncio.create_task(poll(client, "runtime", first["version_info"]))
    await asyncio.sleep(HOLD / 5)
    change = await client.put("/v1/traffic/m", json={"weights": {"1": 90, "2": 10}}, headers=auth("operator"))
    assert change.status == 200
    status, changed = await asyncio.wait_for(held, timeout=10)
    assert status == 200
    assert weights_in(changed) == {cluster_name("m", "1"): 90, cluster_name("m", "2"): 10}
    # The routes read the weights: they did not change.
    assert (await poll(client, "routes", routes["version_info"], names=["aegis_routes"]))[0] == 304
    assert (await client.get("/v1/traffic/m", headers=auth("viewer"))).status == 200


async def test_resource_names_are_honoured_for_routes_and_endpoints(
    client: TestClient[Any, Any], register: Register
) -> None:
    await serve_model(client, register, "1")
    assert (await poll(client, "routes", names=["other"]))[1]["resources"] == []
    _, endpoints = await poll(client, "endpoints", names=[cluster_name("m", "1")])
    assert [r["cluster_name"] for r in endpoints["resources"]] == [cluster_name("m", "1")]
    _, clusters = await poll(client, "clusters")
    assert [c["name"] for c in clusters["resources"]] == [cluster_name("m", "1")]
    _, listeners = await poll(client, "listeners")
    assert listeners["resources"][0]["name"] == "aegis_ingress"


async def test_a_rejected_version_is_recorded_counted_and_not_sent_again(
    client: TestClient[Any, Any], register: Register
) -> None:
    await serve_model(client, register, "1", "2")
    changes = {"routes": {"mirror": {"percent": 10}}, "runtime": {"weights": {"1": 30, "2": 70}}}
    for kind, change in changes.items():
        _, accepted = await poll(client, kind, node="picky")
        await poll(client, kind, accepted["version_info"], node="picky")
        body = {"weights": {"1": 50, "2": 50}, **change}
        await client.put("/v1/traffic/m", json=body, headers=auth("operator"))
        status, offered = await poll(client, kind, accepted["version_info"], node="picky")
        assert status == 200 and offered["version_info"] != accepted["version_info"]
        # The node polls again still on the old version: it rejected the offer.
        assert (await poll(client, kind, accepted["version_info"], node="picky"))[0] == 304
        nodes = await (await client.get("/v1/xds/nodes", headers=auth("viewer"))).json()
        picky = next(n for n in nodes["nodes"] if n["node_id"] == "picky")
        type_name = kind.removesuffix("s")
        assert picky["types"][type_name]["rejected_versions"] == [offered["version_info"]]
        assert picky["types"][type_name]["acked_version"] == accepted["version_info"]
        metrics = await (await client.get("/metrics")).text()
        assert f'aegis_xds_rejected_total{{type="{kind}"}} 1.0' in metrics
        assert f'aegis_xds_requests_total{{result="not_modified",type="{kind}"}}' in metrics
        # Another node still gets the new version.
        _, other = await poll(client, kind, accepted["version_info"], node="other")
        assert other["version_info"] == offered["version_info"]


async def test_a_node_without_the_runtime_layer_does_not_count_as_running_the_weights(
    client: TestClient[Any, Any], register: Register
) -> None:
    """An Envoy whose bootstrap has no Aegis runtime layer serves every split's fallback (all to
    stable): a rollout must not take its weights as applied."""
    await serve_model(client, register, "1", "2")
    versions = {"clusters": "", "routes": ""}

    async def sync(kinds: dict[str, str]) -> None:
        for _ in range(2):
            for kind in kinds:
                status, document = await poll(client, kind, kinds[kind], node="old-bootstrap")
                if status == 200:
                    kinds[kind] = document["version_info"]

    await sync(versions)
    change = await client.put("/v1/traffic/m", json={"weights": {"1": 90, "2": 10}}, headers=auth("operator"))
    assert change.status == 200
    await sync(versions)
    document = await (await client.get("/v1/traffic/m", headers=auth("viewer"))).json()
    assert (document["acked"], document["nodes_acked"], document["nodes_total"]) == (False, 0, 1)
    versions["runtime"] = ""
    await sync(versions)
    document = await (await client.get("/v1/traffic/m", headers=auth("viewer"))).json()
    assert (document["acked"], document["nodes_acked"], document["nodes_total"]) == (True, 1, 1)
    assert document["xds_version"] == versions["runtime"]


@pytest.mark.parametrize(
    ("body", "status", "names"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[]", 400, "must be a JSON object"),
        (b'{"node": "x"}', 422, "node:"),
        (b'{"resource_names": "x"}', 422, "resource_names:"),
        (b'{"version_info": 5}', 422, "version_info:"),
    ],
)
async def test_malformed_polls_are_refused_naming_the_field(
    client: TestClient[Any, Any], body: bytes, status: int, names: str
) -> None:
    response = await client.post("/v3/discovery:routes", data=body)
    assert response.status == status
    assert names in (await response.json())["error"]["message"]


async def test_unknown_xds_type_is_404(client: TestClient[Any, Any]) -> None:
    assert (await client.post("/v3/discovery:secrets", json={})).status == 404


async def test_a_restarted_control_plane_serves_the_same_versions(
    client: TestClient[Any, Any], register: Register, make_settings: Any, database_url: str, start_client: Any
) -> None:
    await serve_model(client, register, "1", "2")
    await client.put("/v1/traffic/m", json={"weights": {"1": 70, "2": 30}}, headers=auth("operator"))
    versions = {
        kind: (await poll(client, kind))[1]["version_info"] for kind in ("listeners", "clusters", "routes")
    }
    await client.close()
    restarted = await start_client(
        make_settings(database_url, AEGIS_XDS_HOLD_SECONDS=HOLD, AEGIS_XDS_VALIDATE="false")
    )
    for kind, version in versions.items():
        assert (await poll(restarted, kind, version))[0] == 304, kind
