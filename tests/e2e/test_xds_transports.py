"""Each way Envoy can get its config from Aegis, with real Envoy and real model servers.

Every test runs once per transport: ADS (envoy/envoy.yaml), delta ADS (the same with
`api_type: DELTA_GRPC`) and REST polling (envoy/envoy-rest.yaml). What differs between
them is how a change travels, so these tests cover what a change must not break: a
new cluster joining under load, the control plane dying and coming back, a control
plane endpoint that is down.
"""

from __future__ import annotations

import asyncio
import json
import signal
import urllib.request
from typing import Any

import pytest

from tests.e2e.envoy_admin import (
    UPDATE_PREFIXES,
    config_versions,
    connected_to_control_plane,
    stats,
    update_counters,
    wait_until_connected,
)
from tests.e2e.stack import NODE_TOKEN, Stack
from tests.e2e.traffic import send, stream_for
from tests.processes import Envoy, XdsTransport, free_port

MODEL = "fraud"
GRPC = (XdsTransport.ADS, XdsTransport.DELTA)


@pytest.fixture(scope="module", params=list(XdsTransport), ids=str)
def transport(request: pytest.FixtureRequest) -> XdsTransport:
    return XdsTransport(request.param)


@pytest.fixture(scope="module", autouse=True)
def prod_and_canary(stack: Stack) -> None:
    for version in ("1", "2"):
        stack.register(MODEL, version, f"fraud weights {version}".encode() * 64)
    stack.promote(MODEL, "1", "prod")
    stack.start_model_server(MODEL, "1")
    stack.wait_acked(MODEL)


def canary_share(tally: dict[tuple[int, str], int], version: str) -> int:
    return sum(n for (status, answered), n in tally.items() if status == 200 and answered == version)


def rds_source(envoy: Envoy) -> dict[str, object]:
    """Where the listener Envoy runs takes its routes from (its RDS config_source)."""
    dump = json.loads(envoy.admin("/config_dump?resource=dynamic_listeners"))
    (listener,) = dump["configs"]
    manager = listener["active_state"]["listener"]["filter_chains"][0]["filters"][0]["typed_config"]
    source: dict[str, object] = manager["rds"]["config_source"]
    return source


async def test_envoy_gets_listener_clusters_and_routes_and_proxies_predictions(stack: Stack) -> None:
    assert stack.envoy is not None
    versions = config_versions(stack.envoy)
    assert {"listener/aegis_ingress", "route/aegis_routes"} <= set(versions), versions
    assert any(name.startswith("cluster/fraud-1-") for name in versions), versions
    if stack.transport in GRPC:
        assert connected_to_control_plane(stack.envoy)
        assert "ads" in rds_source(stack.envoy)  # routes on the same stream, not polled
    else:
        assert "api_config_source" in rds_source(stack.envoy)
    # Envoy started before any model existed; every type was answered all the same, so
    # Envoy never sat out its 15 s initial fetch timeout before it was ready.
    timeouts = stats(stack.envoy, tuple(prefix + "init_fetch_timeout" for prefix in UPDATE_PREFIXES))
    assert set(timeouts.values()) == {0}, timeouts
    tally = await send(stack.gateway, MODEL, 20)
    assert tally == {(200, "1"): 20}
    request = urllib.request.Request(
        f"{stack.gateway}/v2/models/{MODEL}/infer",
        data=json.dumps(
            {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [1.0]}]}
        ).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert json.loads(response.read())["model_version"] == "1"
    nodes = stack.api("GET", "/v1/xds/nodes", role="viewer")["nodes"]
    # Authenticated: the node token from Envoy's environment reached Aegis.
    seen = [(n["node_id"], n["authenticated"], n["transport"]) for n in nodes]
    assert seen == [("aegis-envoy-1", True, str(stack.transport))]
    assert all(t["acked_version"] for t in nodes[0]["types"].values())


async def test_a_never_seen_cluster_joins_without_a_503(stack: Stack) -> None:
    stop = asyncio.Event()
    stream = asyncio.create_task(stream_for(stack.gateway, MODEL, 60, stop=stop))
    await asyncio.sleep(0.5)
    stack.promote(MODEL, "2", "canary")
    await asyncio.to_thread(stack.start_model_server, MODEL, "2")
    stack.set_traffic(MODEL, {"1": 50, "2": 50})
    await asyncio.to_thread(stack.wait_acked, MODEL)
    await asyncio.sleep(1.0)
    stop.set()
    tally = await stream
    assert {status for status, _ in tally} == {200}, tally
    assert canary_share(tally, "2") > 0


async def test_with_the_control_plane_killed_envoy_keeps_serving_and_a_restart_reapplies_nothing(
    stack: Stack,
) -> None:
    assert stack.envoy is not None
    xds_version = stack.api("GET", f"/v1/traffic/{MODEL}", role="viewer")["xds_version"]
    versions, counters = config_versions(stack.envoy), update_counters(stack.envoy)
    assert counters["cluster_manager.cds.update_success"] >= 1, counters
    stack.aegis.stop(sig=signal.SIGKILL)
    tally = await stream_for(stack.gateway, MODEL, 4)
    assert {status for status, _ in tally} == {200}, tally
    assert canary_share(tally, "2") > 0 and canary_share(tally, "1") > 0
    stack.aegis.start()
    if stack.transport in GRPC:
        await asyncio.to_thread(wait_until_connected, stack.envoy)
    # The restarted control plane serves the same versions, so Envoy applies nothing.
    assert stack.wait_acked(MODEL)["xds_version"] == xds_version
    # Room for an update that should not come: REST answers each held poll once.
    await asyncio.sleep(stack.hold_seconds + 1.5 if stack.transport is XdsTransport.REST else 1.5)
    assert update_counters(stack.envoy) == counters
    assert config_versions(stack.envoy) == versions
    stack.set_traffic(MODEL, {"1": 0, "2": 100})
    stack.wait_acked(MODEL)
    assert await send(stack.gateway, MODEL, 50) == {(200, "2"): 50}


class DeadControlPlaneFirstEnvoy(Envoy):
    """The bootstrap with a second control-plane endpoint, listed first, where nothing listens."""

    def bootstrap(self) -> dict[str, Any]:
        config = super().bootstrap()
        (xds_cluster,) = (c for c in config["static_resources"]["clusters"] if c["name"] == "xds_cluster")
        dead = {"socket_address": {"address": "127.0.0.1", "port_value": free_port()}}
        (locality,) = xds_cluster["load_assignment"]["endpoints"]
        locality["lb_endpoints"].insert(0, {"endpoint": {"address": dead}})
        return config


async def test_an_envoy_listing_a_dead_control_plane_first_gets_its_config_from_the_next(
    stack: Stack,
) -> None:
    assert stack.envoy is not None
    second = DeadControlPlaneFirstEnvoy(
        stack.root / "envoy-2",
        xds_port=stack.aegis.xds_port(stack.transport),
        node_id="aegis-envoy-2",
        node_token=NODE_TOKEN,
        transport=stack.transport,
    )
    await asyncio.to_thread(second.start)  # returns once Envoy is ready: its listener came
    try:
        # The same resources; their versions may differ (REST versions a type as a whole,
        # and Envoy keeps the version an unchanged cluster came with).
        assert set(config_versions(second)) == set(config_versions(stack.envoy))
    finally:
        await asyncio.to_thread(second.stop)
