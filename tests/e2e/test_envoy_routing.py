"""Real Envoy from envoy/envoy.yaml, real model servers, Aegis as the xDS server."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
import urllib.request

import pytest

from tests.e2e.stack import Stack
from tests.e2e.traffic import binomial_bounds, send, stream_for

MODEL = "fraud"


@pytest.fixture(scope="module", autouse=True)
def prod_and_canary(stack: Stack) -> None:
    for version in ("1", "2"):
        stack.register(MODEL, version, f"fraud weights {version}".encode() * 64)
    stack.promote(MODEL, "1", "prod")
    stack.start_model_server(MODEL, "1")
    stack.wait_acked(MODEL)


def canary_share(tally: dict[tuple[int, str], int], version: str) -> int:
    return sum(n for (status, answered), n in tally.items() if status == 200 and answered == version)


async def test_envoy_gets_its_config_from_aegis_and_proxies_predictions(stack: Stack) -> None:
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
    assert [n["node_id"] for n in nodes] == ["aegis-envoy-1"]
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


async def test_weights_split_within_binomial_bounds_and_a_new_split_holds(stack: Stack) -> None:
    stack.set_traffic(MODEL, {"1": 90, "2": 10})
    stack.wait_acked(MODEL)
    tally = await send(stack.gateway, MODEL, 1000)
    low, high = binomial_bounds(1000, 0.10)
    assert sum(tally.values()) == 1000 and {s for s, _ in tally} == {200}
    assert low <= canary_share(tally, "2") <= high, tally

    stack.set_traffic(MODEL, {"1": 50, "2": 50})
    stack.wait_acked(MODEL)
    tally = await send(stack.gateway, MODEL, 1000)
    low, high = binomial_bounds(1000, 0.50)
    assert low <= canary_share(tally, "2") <= high, tally


async def test_a_header_match_always_reaches_the_canary(stack: Stack) -> None:
    stack.set_traffic(MODEL, {"1": 100, "2": 0}, match=[{"headers": {"x-canary": "always"}}])
    stack.wait_acked(MODEL)
    assert await send(stack.gateway, MODEL, 50, headers={"x-canary": "always"}) == {(200, "2"): 50}
    assert await send(stack.gateway, MODEL, 50) == {(200, "1"): 50}


def model_requests(port: int, version: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    pattern = (
        rf'aegis_model_requests_total{{[^}}]*code="200"[^}}]*version="{re.escape(version)}"[^}}]*}} (\S+)'
    )
    return sum(float(value) for value in re.findall(pattern, text))


async def test_mirrored_requests_reach_the_canary_while_clients_get_stable_answers(stack: Stack) -> None:
    canary_port = stack.api("GET", f"/v1/traffic/{MODEL}", role="viewer")["endpoints"]["2"][0].split(":")[1]
    before = model_requests(int(canary_port), "2")
    stack.set_traffic(MODEL, {"1": 100, "2": 0}, mirror={"percent": 100})
    stack.wait_acked(MODEL)
    assert await send(stack.gateway, MODEL, 100) == {(200, "1"): 100}
    deadline = time.monotonic() + 10
    while model_requests(int(canary_port), "2") - before < 100 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert model_requests(int(canary_port), "2") - before >= 100
    stack.set_traffic(MODEL, {"1": 50, "2": 50})
    stack.wait_acked(MODEL)


async def test_with_the_control_plane_killed_envoy_keeps_serving_then_a_restart_applies_changes(
    stack: Stack,
) -> None:
    before = stack.api("GET", f"/v1/traffic/{MODEL}", role="viewer")["xds_version"]
    stack.aegis.stop(sig=signal.SIGKILL)
    tally = await stream_for(stack.gateway, MODEL, 4)
    assert {status for status, _ in tally} == {200}, tally
    assert canary_share(tally, "2") > 0 and canary_share(tally, "1") > 0
    stack.aegis.start()
    # The restarted control plane serves the same versions: Envoy gets 304s, not a new config.
    assert stack.wait_acked(MODEL)["xds_version"] == before
    await asyncio.sleep(stack.hold_seconds + 1.5)  # every held poll has been answered once
    with urllib.request.urlopen(f"{stack.aegis.url}/metrics", timeout=5) as response:
        metrics = response.read().decode()
    assert 'aegis_xds_requests_total{result="not_modified",type="routes"}' in metrics
    assert 'result="ok"' not in metrics, "a restart must not push a new config"
    stack.set_traffic(MODEL, {"1": 0, "2": 100})
    stack.wait_acked(MODEL)
    assert await send(stack.gateway, MODEL, 50) == {(200, "2"): 50}


async def test_an_endpoint_whose_server_died_drops_out_and_its_weight_moves(stack: Stack) -> None:
    stack.set_traffic(MODEL, {"1": 50, "2": 50})
    stack.wait_acked(MODEL)
    stack.kill_model_server(MODEL, "2")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if not stack.api("GET", f"/v1/traffic/{MODEL}", role="viewer")["endpoints"]["2"]:
            break
        await asyncio.sleep(0.2)
    stack.wait_acked(MODEL)
    assert await send(stack.gateway, MODEL, 100) == {(200, "1"): 100}
