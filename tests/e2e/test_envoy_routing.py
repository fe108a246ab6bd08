"""What Aegis's routes do to real requests: real Envoy (ADS, envoy/envoy.yaml), real model servers.

How the config reaches Envoy, per transport, is tests/e2e/test_xds_transports.py.
"""

from __future__ import annotations

import asyncio
import re
import time
import urllib.request

import pytest

from tests.e2e.stack import Stack
from tests.e2e.traffic import binomial_bounds, send

MODEL = "fraud"


@pytest.fixture(scope="module", autouse=True)
def prod_and_canary(stack: Stack) -> None:
    for version in ("1", "2"):
        stack.register(MODEL, version, f"fraud weights {version}".encode() * 64)
    stack.promote(MODEL, "1", "prod")
    stack.start_model_server(MODEL, "1")
    stack.promote(MODEL, "2", "canary")
    stack.start_model_server(MODEL, "2")
    stack.wait_acked(MODEL)


def canary_share(tally: dict[tuple[int, str], int], version: str) -> int:
    return sum(n for (status, answered), n in tally.items() if status == 200 and answered == version)


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


