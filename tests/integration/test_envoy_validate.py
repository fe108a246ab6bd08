"""A real Envoy judges built snapshots, and routes real requests the way the builders say."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from controlplane.xds.builder import build_snapshot
from controlplane.xds.resources import (
    Arm,
    DesiredState,
    Endpoint,
    HeaderMatch,
    ListenerAddress,
    ModelRoute,
    cluster_name,
)
from controlplane.xds.snapshot import SnapshotView
from controlplane.xds.validate import (
    EnvoyUnavailable,
    find_envoy_binary,
    static_bootstrap,
    validate_with_envoy,
)

ENVOY = find_envoy_binary()

UP = (Endpoint("127.0.0.1", 9001),)


def desired(listener_port: int = 10000, foo_endpoints: tuple[Endpoint, ...] = UP) -> DesiredState:
    return DesiredState(
        ListenerAddress("127.0.0.1", listener_port),
        (
            ModelRoute(
                "foo",
                stable=Arm("v1", 90, foo_endpoints),
                canary=Arm("v2", 10, foo_endpoints),
                canary_matches=(HeaderMatch.of({"x-canary": "always"}),),
                mirror_percent=5,
            ),
            ModelRoute("foo.bar", stable=Arm("1.0+b", 100, foo_endpoints)),
            ModelRoute("empty", stable=Arm("v1", 100)),
        ),
    )


def with_first_route_action(snapshot: SnapshotView, action: dict[str, Any]) -> SnapshotView:
    routes = copy.deepcopy(snapshot.routes)
    first = routes[0]["virtual_hosts"][0]["routes"][0]
    first.pop("direct_response", None)
    first.pop("response_headers_to_add", None)
    first["route"] = action
    return dataclasses.replace(snapshot, routes=routes)


async def test_envoy_accepts_a_built_snapshot() -> None:
    result = await validate_with_envoy(build_snapshot(desired()), envoy_binary=ENVOY)
    assert result.ok, result.message
    assert result.message == "OK"


@pytest.mark.parametrize(
    ("action", "reason"),
    [
        ({"weighted_clusters": {"clusters": [{"name": "no-such-cluster", "weight": 1}]}}, "no-such-cluster"),
        ({"cluster": "no-such-cluster"}, "no-such-cluster"),
        ({"weighted_clusters": {"clusters": [{"name": cluster_name("foo", "v1"), "weight": 0}]}}, "weight"),
        ({"cluster": cluster_name("foo", "v1"), "no_such_field": 1}, "no_such_field"),
    ],
    ids=["unknown weighted cluster", "unknown cluster", "weights sum to 0", "unknown field"],
)
async def test_envoy_rejects_a_broken_snapshot_and_says_why(action: dict[str, Any], reason: str) -> None:
    broken = with_first_route_action(build_snapshot(desired()).view(), action)
    result = await validate_with_envoy(broken, envoy_binary=ENVOY)
    assert not result.ok
    assert reason in result.message
    assert "aegis-envoy-validate" not in result.message  # the temporary path is not the reason
    assert len(result.message.splitlines()) <= 3


async def test_validation_without_a_binary_is_no_verdict(tmp_path: Path) -> None:
    with pytest.raises(EnvoyUnavailable):
        await validate_with_envoy(build_snapshot(desired()), envoy_binary=str(tmp_path / "envoy"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def answering(version: str) -> web.Application:
    async def handle(request: web.Request) -> web.Response:
        return web.Response(text=f"{version} {request.path}")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


@pytest.fixture
async def upstream() -> AsyncIterator[Callable[[str], Awaitable[Endpoint]]]:
    """Start an HTTP server that answers with its version name; returns its endpoint."""
    servers: list[TestServer] = []

    async def start(version: str) -> Endpoint:
        server = TestServer(await answering(version), host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return Endpoint("127.0.0.1", server.port or 0)

    yield start
    for server in servers:
        await server.close()


async def run_envoy(bootstrap: dict[str, Any], tmp_path: Path, port: int) -> asyncio.subprocess.Process:
    config = tmp_path / "bootstrap.json"
    config.write_text(json.dumps(bootstrap))
    assert ENVOY is not None
    process = await asyncio.create_subprocess_exec(
        *(ENVOY, "-c", str(config), "--disable-hot-restart", "--concurrency", "1", "-l", "error"),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    for _ in range(100):  # the listener binds ~0.1 s after start
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return process
        except OSError:
            await asyncio.sleep(0.1)
    process.kill()
    raise AssertionError("envoy did not open its listener within 10 s")


async def test_envoy_routes_each_model_path_to_its_own_clusters(upstream: Any, tmp_path: Path) -> None:
    port = free_port()
    v1, v2, dotted = await upstream("foo-v1"), await upstream("foo-v2"), await upstream("foo.bar")
    state = DesiredState(
        ListenerAddress("127.0.0.1", port),
        (
            ModelRoute(
                "foo",
                stable=Arm("v1", 100, (v1,)),
                canary=Arm("v2", 0, (v2,)),
                canary_matches=(HeaderMatch.of({"x-canary": "always"}),),
            ),
            ModelRoute("foo.bar", stable=Arm("1", 100, (dotted,))),
            ModelRoute("empty", stable=Arm("v1", 100)),
        ),
    )
    process = await run_envoy(static_bootstrap(build_snapshot(state)), tmp_path, port)
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as client:

            async def get(path: str, **headers: str) -> tuple[int, str, str]:
                async with client.post(path, headers=headers) as response:
                    return response.status, response.content_type, await response.text()

            assert await get("/v1/models/foo:predict") == (200, "text/plain", "foo-v1 /v1/models/foo:predict")
            assert (await get("/v1/models/foo"))[2] == "foo-v1 /v1/models/foo"
            assert (await get("/v2/models/foo/infer"))[2] == "foo-v1 /v2/models/foo/infer"
            assert (await get("/v1/models/foo:predict", **{"x-canary": "always"}))[2].startswith("foo-v2")
            assert (await get("/v1/models/foo.bar:predict"))[2].startswith("foo.bar")
            assert (await get("/v1/models/foobar:predict"))[0] == 404
            status, content_type, body = await get("/v1/models/empty:predict")
            assert (status, content_type) == (503, "application/json")
            assert json.loads(body)["error"]["code"] == "no_endpoints"
    finally:
        process.terminate()
        await process.wait()
