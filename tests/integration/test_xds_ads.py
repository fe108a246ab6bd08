"""gRPC ADS (state of the world and delta) against the running app, with simulated Envoys on real streams."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from controlplane.app import ADS
from controlplane.xds.resources import ROUTE_CONFIG_NAME, RUNTIME_LAYER_NAME, cluster_name
from tests.ads_client import CDS, LDS, RDS, RTDS, AdsClient, decode, layer_weights, route_weights
from tests.conftest import TOKENS, auth
from tests.integration.conftest import Register, StartClient
from tests.integration.test_xds_protocol import serve_model

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

V1, V2 = cluster_name("m", "1"), cluster_name("m", "2")


@pytest.fixture
async def client(make_settings: Any, database_url: str, start_client: StartClient) -> TestClient[Any, Any]:
    return await start_client(make_settings(database_url, AEGIS_XDS_VALIDATE="false"))


def ads_target(client: TestClient[Any, Any]) -> str:
    return f"127.0.0.1:{client.app[ADS].port}"


async def node_view(client: TestClient[Any, Any], node_id: str) -> dict[str, Any]:
    nodes = await (await client.get("/v1/xds/nodes", headers=auth("viewer"))).json()
    return next(n for n in nodes["nodes"] if n["node_id"] == node_id)


async def current_ads(client: TestClient[Any, Any]) -> dict[str, str]:
    nodes = await (await client.get("/v1/xds/nodes", headers=auth("viewer"))).json()
    return dict(nodes["current_ads"])


async def set_weights(client: TestClient[Any, Any], weights: dict[str, int]) -> None:
    response = await client.put("/v1/traffic/m", json={"weights": weights}, headers=auth("operator"))
    assert response.status == 200, await response.text()


def aegis_cli(client: TestClient[Any, Any], *args: str) -> str:
    """The `aegis` CLI against the running app, as an operator would run it."""
    env = {**os.environ, "AEGIS_URL": str(client.make_url("")).rstrip("/"), "AEGIS_TOKEN": TOKENS["viewer"]}
    done = subprocess.run(
        [sys.executable, "-m", "controlplane.cli", *args], capture_output=True, text=True, env=env,
        timeout=120, check=True,
    )
    return done.stdout


async def sync_sotw(envoy: AdsClient) -> dict[str, Any]:
    """What Envoy does on a new stream: its runtime layer (the weights), CDS and LDS, then the
    routes the listener names; all acked."""
    await envoy.request(RTDS, names=[RUNTIME_LAYER_NAME])
    runtime = await envoy.receive()
    await envoy.ack(runtime)
    await envoy.request(CDS)
    clusters = await envoy.receive()
    await envoy.ack(clusters)
    await envoy.request(LDS)
    listeners = await envoy.receive()
    await envoy.ack(listeners)
    await envoy.request(RDS, names=[ROUTE_CONFIG_NAME])
    routes = await envoy.receive()
    await envoy.ack(routes)
    return {"clusters": clusters, "listeners": listeners, "routes": routes, "runtime": runtime}


async def test_a_new_stream_gets_clusters_and_listener_then_routes_by_name_and_its_acks_are_recorded(
    client: TestClient[Any, Any], register: Register
) -> None:
    await serve_model(client, register, "1")
    async with AdsClient(ads_target(client), "envoy-a") as envoy:
        got = await sync_sotw(envoy)
        assert got["clusters"].type_url == CDS
        assert [decode(CDS, r.value).name for r in got["clusters"].resources] == [V1]
        listener = decode(LDS, got["listeners"].resources[0].value)
        assert listener.name == "aegis_ingress"
        assert [r.type_url for r in got["routes"].resources] == [RDS]
        routes = decode(RDS, got["routes"].resources[0].value)
        assert routes.name == ROUTE_CONFIG_NAME
        assert route_weights(routes, "m/v1-verb") == {V1: 100}
        assert await envoy.nothing_within(0.3)

        current = await current_ads(client)
        node = await node_view(client, "envoy-a")
        assert (node["transport"], node["streams"], node["live"]) == ("ads", 1, True)
        assert {kind: t["acked_version"] for kind, t in node["types"].items()} == {
            "listener": current["listener"], "cluster": current["cluster"], "route": current["route"],
            "runtime": current["runtime"],
        }
        assert got["routes"].version_info == current["route"]
    metrics = await (await client.get("/metrics")).text()
    assert 'aegis_xds_ads_responses_total{kind="sotw",type="routes"} 1.0' in metrics


async def test_a_weight_change_is_pushed_to_an_idle_stream_without_a_new_request(
    client: TestClient[Any, Any], register: Register
) -> None:
    await serve_model(client, register, "1", "2")
    async with AdsClient(ads_target(client)) as envoy:
        got = await sync_sotw(envoy)
        assert layer_weights(decode(RTDS, got["runtime"].resources[0].value)) == {V1: 100, V2: 0}
        assert await envoy.nothing_within(0.2)
        await set_weights(client, {"1": 70, "2": 30})
        pushed = await envoy.receive()
        assert pushed.type_url == RTDS and pushed.version_info != got["runtime"].version_info
        assert layer_weights(decode(RTDS, pushed.resources[0].value)) == {V1: 70, V2: 30}
        await envoy.ack(pushed)
        await set_weights(client, {"1": 0, "2": 100})
        again = await envoy.receive()
        assert layer_weights(decode(RTDS, again.resources[0].value)) == {V1: 0, V2: 100}
        await envoy.ack(again)
        assert await envoy.nothing_within(0.2), "the routes read the weights: they did not change"


async def test_a_nack_is_shown_with_envoys_message_counted_and_that_version_is_not_sent_again(
    client: TestClient[Any, Any], register: Register
) -> None:
    await serve_model(client, register, "1", "2")
    message = "Invalid runtime entry value for aegis_weights.m\nsecond line"
    async with AdsClient(ads_target(client), "picky") as envoy:
        good = (await sync_sotw(envoy))["runtime"]
        await set_weights(client, {"1": 50, "2": 50})
        offered = await envoy.receive()
        await envoy.request(RTDS, good.version_info, [RUNTIME_LAYER_NAME], nonce=offered.nonce, error=message)
        assert await envoy.nothing_within(0.5), "a rejected version must not be sent again"

        node = await node_view(client, "picky")
        runtime = node["types"]["runtime"]
        assert runtime["acked_version"] == good.version_info
        assert runtime["rejected_versions"] == [offered.version_info]
        assert runtime["rejection_message"] == "Invalid runtime entry value for aegis_weights.m second line"
        metrics = await (await client.get("/metrics")).text()
        assert 'aegis_xds_rejected_total{type="runtime"} 1.0' in metrics
        shown = await asyncio.to_thread(aegis_cli, client, "nodes")
        row = next(line.split() for line in shown.splitlines() if line.startswith("picky"))
        assert row[:3] == ["picky", "yes", "ads"]
        assert row[4:8] == ["current", "current", "current", good.version_info[:8]], "the weights it runs"
        assert "picky rejected runtime: Invalid runtime entry value" in shown

        # The node keeps its last good config; the next change reaches it.
        await set_weights(client, {"1": 60, "2": 40})
        later = await envoy.receive()
        assert later.version_info not in (good.version_info, offered.version_info)
        assert layer_weights(decode(RTDS, later.resources[0].value)) == {V1: 60, V2: 40}


async def test_a_request_answering_an_older_response_is_ignored(
    client: TestClient[Any, Any], register: Register
) -> None:
    await serve_model(client, register, "1", "2")
    async with AdsClient(ads_target(client), "laggard") as envoy:
        first = (await sync_sotw(envoy))["runtime"]
        await set_weights(client, {"1": 90, "2": 10})
        second = await envoy.receive()
        # An answer to the first response (its nonce), sent after the second one: stale.
        await envoy.request(RTDS, "", [RUNTIME_LAYER_NAME], nonce=first.nonce, error="late news")
        assert await envoy.nothing_within(0.3)
        node = await node_view(client, "laggard")
        assert node["types"]["runtime"]["rejected_versions"] == []
        assert node["types"]["runtime"]["served_version"] == second.version_info
        await envoy.ack(second)
        await envoy.nothing_within(0.1)
        node = await node_view(client, "laggard")
        assert node["types"]["runtime"]["acked_version"] == second.version_info


async def test_an_envoy_reconnecting_to_a_restarted_control_plane_with_the_same_state_gets_nothing(
    client: TestClient[Any, Any], register: Register, make_settings: Any, database_url: str,
    start_client: StartClient,
) -> None:
    await serve_model(client, register, "1", "2")
    await set_weights(client, {"1": 70, "2": 30})
    async with AdsClient(ads_target(client), "steady") as envoy:
        got = await sync_sotw(envoy)
    await client.close()
    restarted = await start_client(make_settings(database_url, AEGIS_XDS_VALIDATE="false"))
    async with AdsClient(ads_target(restarted), "steady") as envoy:
        runtime = got["runtime"]
        await envoy.request(RTDS, runtime.version_info, [RUNTIME_LAYER_NAME], nonce=runtime.nonce)
        await envoy.request(CDS, got["clusters"].version_info, nonce=got["clusters"].nonce)
        await envoy.request(LDS, got["listeners"].version_info, nonce=got["listeners"].nonce)
        await envoy.request(RDS, got["routes"].version_info, [ROUTE_CONFIG_NAME], nonce=got["routes"].nonce)
        assert await envoy.nothing_within(0.5), "Envoy must not re-apply anything"
        node = await node_view(restarted, "steady")
        assert node["live"] is True
        assert node["types"]["route"]["acked_version"] == got["routes"].version_info
        assert node["types"]["runtime"]["acked_version"] == runtime.version_info
        # Still connected: the next change is pushed.
        await set_weights(restarted, {"1": 20, "2": 80})
        assert layer_weights(decode(RTDS, (await envoy.receive()).resources[0].value)) == {V1: 20, V2: 80}


def delta_names(response: Any) -> dict[str, str]:
    return {resource.name: resource.version for resource in response.resources}


async def sync_delta(envoy: AdsClient) -> dict[str, Any]:
    """The runtime layer by name, CDS and LDS as wildcard subscriptions, then the routes by name;
    all acked."""
    got = {}
    for type_url, names in ((RTDS, [RUNTIME_LAYER_NAME]), (CDS, []), (LDS, []), (RDS, [ROUTE_CONFIG_NAME])):
        await envoy.delta_request(type_url, subscribe=names)
        response = await envoy.receive()
        assert response.type_url == type_url
        await envoy.delta_request(type_url, nonce=response.nonce)
        got[type_url] = response
    return got


async def test_delta_subscriptions_get_each_resource_with_its_version_then_only_what_changed(
    client: TestClient[Any, Any], register: Register
) -> None:
    await serve_model(client, register, "1", "2")
    async with AdsClient(ads_target(client), "envoy-d", delta=True) as envoy:
        got = await sync_delta(envoy)
        current = await current_ads(client)
        assert set(delta_names(got[CDS])) == {V1, V2}
        assert got[CDS].system_version_info == current["cluster"]
        assert list(delta_names(got[RDS])) == [ROUTE_CONFIG_NAME]
        assert decode(LDS, got[LDS].resources[0].resource.value).name == "aegis_ingress"
        assert await envoy.nothing_within(0.2)
        node = await node_view(client, "envoy-d")
        assert (node["transport"], node["streams"], node["live"]) == ("delta", 1, True)
        assert node["types"]["route"]["acked_version"] == current["route"]

        await set_weights(client, {"1": 80, "2": 20})
        pushed = await envoy.receive()
        assert pushed.type_url == RTDS and list(delta_names(pushed)) == [RUNTIME_LAYER_NAME]
        assert delta_names(pushed)[RUNTIME_LAYER_NAME] != delta_names(got[RTDS])[RUNTIME_LAYER_NAME]
        assert layer_weights(decode(RTDS, pushed.resources[0].resource.value)) == {V1: 80, V2: 20}
        await envoy.delta_request(RTDS, nonce=pushed.nonce)
        assert await envoy.nothing_within(0.3), "no cluster or route changed: nothing else is sent"


async def test_delta_removes_the_canary_cluster_only_after_the_routes_stopped_using_it(
    client: TestClient[Any, Any], register: Register
) -> None:
    await serve_model(client, register, "1", "2")
    await set_weights(client, {"1": 50, "2": 50})
    async with AdsClient(ads_target(client), "envoy-d", delta=True) as envoy:
        await sync_delta(envoy)
        rollback = await client.post("/v1/registry/m/rollback", headers=auth("operator"))
        assert rollback.status == 200, await rollback.text()
        routes = await envoy.receive()
        assert routes.type_url == RDS, "routes leave the canary first"
        assert route_weights(decode(RDS, routes.resources[0].resource.value), "m/v1-verb") == {V1: 100}
        assert await envoy.nothing_within(0.3), "the cluster and its weights stay while the node may use them"
        await envoy.delta_request(RDS, nonce=routes.nonce)
        clusters = await envoy.receive()
        assert clusters.type_url == CDS
        assert (list(clusters.removed_resources), list(clusters.resources)) == ([V2], [])
        weights = await envoy.receive()
        assert layer_weights(decode(RTDS, weights.resources[0].resource.value)) == {}, "no route reads any"
        await envoy.delta_request(CDS, nonce=clusters.nonce)
        await envoy.delta_request(RTDS, nonce=weights.nonce)
        assert await envoy.nothing_within(0.2)


async def test_a_delta_reconnect_gets_only_the_resources_that_differ_from_what_it_declares(
    client: TestClient[Any, Any], register: Register
) -> None:
    await serve_model(client, register, "1", "2")
    async with AdsClient(ads_target(client), "first", delta=True) as envoy:
        versions = delta_names((await sync_delta(envoy))[CDS])
    async with AdsClient(ads_target(client), "back", delta=True) as envoy:
        await envoy.delta_request(CDS, initial={V1: versions[V1], V2: "older", "m-0-gone": "abc"})
        response = await envoy.receive()
        assert delta_names(response) == {V2: versions[V2]}
        assert list(response.removed_resources) == ["m-0-gone"]
    async with AdsClient(ads_target(client), "in-step", delta=True) as envoy:
        await envoy.delta_request(CDS, initial=versions)
        assert await envoy.nothing_within(0.4), "a node that has everything gets nothing"
        node = await node_view(client, "in-step")
        assert node["types"]["cluster"]["acked_version"] == (await current_ads(client))["cluster"]


async def test_a_delta_nack_is_recorded_and_not_answered_with_the_same_version(
    client: TestClient[Any, Any], register: Register
) -> None:
    await serve_model(client, register, "1", "2")
    async with AdsClient(ads_target(client), "picky-d", delta=True) as envoy:
        await sync_delta(envoy)
        await set_weights(client, {"1": 50, "2": 50})
        offered = await envoy.receive()
        await envoy.delta_request(RTDS, nonce=offered.nonce, error="runtime: bad entry")
        assert await envoy.nothing_within(0.4)
        runtime = (await node_view(client, "picky-d"))["types"]["runtime"]
        assert runtime["rejected_versions"] == [offered.system_version_info]
        assert runtime["rejection_message"] == "runtime: bad entry"
        # Unsubscribing and subscribing again asks anew: the layer it no longer has is sent.
        await envoy.delta_request(RTDS, unsubscribe=[RUNTIME_LAYER_NAME])
        await envoy.delta_request(RTDS, subscribe=[RUNTIME_LAYER_NAME])
        resent = await envoy.receive()
        assert list(delta_names(resent)) == [RUNTIME_LAYER_NAME]


STEPWISE_POLICY = """
policies:
  - name: stepwise
    models: ["m"]
    steps:
      - setWeight: 10
      - pause: {duration: 1s}
      - setWeight: 50
      - pause: {}
"""


async def rollout(client: TestClient[Any, Any]) -> dict[str, Any]:
    response = await client.get("/v1/rollouts/m", headers=auth("viewer"))
    assert response.status == 200
    document: dict[str, Any] = await response.json()
    return document


async def test_a_rollout_holds_at_its_step_while_a_node_rejects_its_routes(
    make_settings: Any, database_url: str, start_client: StartClient, tmp_path: Any
) -> None:
    policies = tmp_path / "policies.yaml"
    policies.write_text(STEPWISE_POLICY)
    client = await start_client(make_settings(
        database_url, AEGIS_XDS_VALIDATE="false", AEGIS_POLICIES=policies, AEGIS_ROLLOUT_TICK_SECONDS=0.1,
        AEGIS_XDS_NODE_STALE_SECONDS=1,
    ))
    from tests.integration.conftest import upload_form

    for version in ("1", "2"):
        form = upload_form({"model_name": "m", "version": version}, f"weights {version}".encode())
        assert (await client.post("/v1/registry/register", data=form, headers=auth("admin"))).status == 201
        endpoint = {
            "model_name": "m", "version": version, "address": "127.0.0.1", "port": 9000 + int(version),
            "ttl_seconds": 300,
        }
        announced = await client.post("/v1/endpoints", json=endpoint, headers=auth("operator"))
        assert announced.status in (200, 201)
    await client.post("/v1/registry/m/1/promote", json={"stage": "prod"}, headers=auth("operator"))
    async with AdsClient(ads_target(client), "picky") as envoy:
        good = (await sync_sotw(envoy))["routes"]
        promoted = await client.post(
            "/v1/registry/m/2/promote", json={"stage": "canary"}, headers=auth("operator")
        )
        assert (await promoted.json())["rollout"]["started"] is True
        # Make before break: the new cluster first; the routes to it once the node has it.
        clusters = await envoy.receive()
        assert clusters.type_url == CDS
        await envoy.ack(clusters)
        # The weights the new routes will read come first, then the routes.
        weights = await envoy.receive()
        assert layer_weights(decode(RTDS, weights.resources[0].value)) == {V1: 90, V2: 10}
        await envoy.ack(weights)
        routes = await envoy.receive()
        assert routes.type_url == RDS
        assert route_weights(decode(RDS, routes.resources[0].value), "m/v1-verb") == {V1: 1, V2: 0}
        await envoy.request(RDS, good.version_info, [ROUTE_CONFIG_NAME], nonce=routes.nonce,
                            error="Sum of weights in the weighted_cluster must be greater than 0.")
        assert await envoy.nothing_within(2.5)  # the 1 s pause and many ticks
        # It serves what its routes say: the canary gets nothing there.
        assert (await rollout(client))["served_canary_weights"] == [{"canary_weight": 0, "nodes": 1}]
        held = await rollout(client)
        assert (held["phase"], held["step"], held["canary_weight"], held["acknowledged"]) == (
            "progressing", 1, 10, False
        ), held
    # The node is gone (its stream closed and it stayed silent): nothing holds the rollout.
    for _ in range(100):
        document = await rollout(client)
        if document["canary_weight"] == 50:
            break
        await asyncio.sleep(0.1)
    assert document["canary_weight"] == 50, document
