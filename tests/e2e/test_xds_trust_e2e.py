"""A client polling made-up versions neither holds nor blocks a real Envoy; discovery on its own listener.

Real `aegis serve`, real Envoy polling REST (envoy/envoy-rest.yaml), real model servers. The intruder
is what finding 3 of issue 9 describes: `{"node":{"id":"intruder"},"version_info":"bogus"}`
posted to `/v3/discovery:routes` every second.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import aiohttp
import pytest

from tests.e2e.stack import NODE_TOKEN, Stack
from tests.e2e.traffic import send
from tests.processes import XdsTransport

MODEL = "fraud"
INTRUDER: dict[str, object] = {"node": {"id": "intruder"}, "version_info": "bogus"}


def serve_prod_and_canary(stack: Stack) -> None:
    for version in ("1", "2"):
        stack.register(MODEL, version, f"fraud weights {version}".encode() * 64)
    stack.promote(MODEL, "1", "prod")
    stack.start_model_server(MODEL, "1")
    stack.promote(MODEL, "2", "canary")
    stack.start_model_server(MODEL, "2")


@asynccontextmanager
async def intruder(url: str) -> AsyncIterator[Counter[int]]:
    """Posts the made-up poll to `url` every second until the block ends; counts the statuses."""
    statuses: Counter[int] = Counter()

    async def loop() -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            while True:
                async with session.post(url, json=INTRUDER) as response:
                    await response.read()
                    statuses[response.status] += 1
                await asyncio.sleep(1.0)

    task = asyncio.create_task(loop())
    try:
        yield statuses
    finally:
        task.cancel()


@pytest.fixture(scope="module")
def open_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The default configuration: no node tokens, discovery on the API listener."""
    running = Stack(tmp_path_factory.mktemp("open"), node_tokens=False, transport=XdsTransport.REST).start()
    try:
        serve_prod_and_canary(running)
        yield running
    finally:
        running.close()


@pytest.fixture(scope="module")
def guarded_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The recommended configuration: node tokens and a separate xDS listener."""
    root = tmp_path_factory.mktemp("guarded")
    running = Stack(root, xds_listener=True, transport=XdsTransport.REST).start()
    try:
        serve_prod_and_canary(running)
        yield running
    finally:
        running.close()


async def test_weight_changes_are_acknowledged_and_shift_traffic_while_an_intruder_polls_bogus_versions(
    open_stack: Stack,
) -> None:
    stack = open_stack
    async with intruder(f"{stack.aegis.url}/v3/discovery:routes") as statuses:
        await asyncio.sleep(2.5)
        for weights, expected in (({"1": 0, "2": 100}, "2"), ({"1": 100, "2": 0}, "1")):
            stack.set_traffic(MODEL, weights)
            acked = await asyncio.to_thread(stack.wait_acked, MODEL, timeout=30)
            assert (acked["nodes_acked"], acked["nodes_total"]) == (1, 1), acked
            assert await send(stack.gateway, MODEL, 40) == {(200, expected): 40}
    assert sum(statuses.values()) >= 3, statuses
    nodes = {n["node_id"]: n for n in stack.api("GET", "/v1/xds/nodes", role="viewer")["nodes"]}
    assert nodes["aegis-envoy-1"]["live"] and not nodes["intruder"]["live"]


def post_status(url: str, body: dict[str, object]) -> int:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


async def test_with_node_tokens_and_an_xds_listener_envoy_is_served_there_and_intruders_are_refused(
    guarded_stack: Stack,
) -> None:
    stack = guarded_stack
    assert stack.xds_port is not None
    xds_url = f"http://127.0.0.1:{stack.xds_port}/v3/discovery:routes"
    assert post_status(f"{stack.aegis.url}/v3/discovery:routes", INTRUDER) == 404
    async with intruder(xds_url) as statuses:
        stack.set_traffic(MODEL, {"1": 0, "2": 100})
        acked = await asyncio.to_thread(stack.wait_acked, MODEL, timeout=30)
        assert (acked["nodes_acked"], acked["nodes_total"]) == (1, 1), acked
        assert await send(stack.gateway, MODEL, 40) == {(200, "2"): 40}
        await asyncio.sleep(1.5)
    assert set(statuses) == {401}, statuses
    nodes = stack.api("GET", "/v1/xds/nodes", role="viewer")["nodes"]
    assert [(n["node_id"], n["authenticated"]) for n in nodes] == [("aegis-envoy-1", True)]
    # Envoy's own polls carry the token the shipped bootstrap adds from its environment.
    assert "intruder" not in json.dumps(nodes) and NODE_TOKEN not in json.dumps(nodes)
