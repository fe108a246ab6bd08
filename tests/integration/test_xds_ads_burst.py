"""A fleet reconnecting at once (after a control-plane restart): every ADS stream is taken, none refused.

gRPC's core queues a new stream until the server's event loop takes it and, by
default, refuses a random share of them once more than 1,000 wait: a real
`aegis serve` gets 2,500 streams opened within a moment, each with an Envoy-sized
first request.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from tests.ads_client import CDS
from tests.conftest import API_TOKENS, SIGN_KEY
from tests.processes import AegisServer, free_port

STREAMS = 2500
CHANNELS = 8  # HTTP/2 connections: many streams each, as behind a proxy or from a test box
# Envoy's first request carries its whole node, ~516 extensions among it.
EXTENSIONS = 500


@pytest.fixture
def server(tmp_path: Path) -> Iterator[AegisServer]:
    running = AegisServer({
        "AEGIS_DATA_DIR": str(tmp_path / "data"), "AEGIS_API_TOKENS": API_TOKENS,
        "AEGIS_MODEL_SIGN_KEY": SIGN_KEY, "AEGIS_XDS_GRPC_LISTEN": f"127.0.0.1:{free_port()}",
        "AEGIS_LOG_LEVEL": "WARNING",
    }).start()
    yield running
    running.stop()


def envoy_node(node_id: str) -> base_pb2.Node:
    node = base_pb2.Node(id=node_id, cluster="gateway", user_agent_name="envoy")
    for index in range(EXTENSIONS):
        node.extensions.add(name=f"envoy.filters.http.extension_{index}", category="envoy.filters.http")
    return node


async def open_all(target: str) -> tuple[Counter[str], float]:
    """Open STREAMS streams at once; what each first read gave, and how long that took."""
    channels = [
        grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(CHANNELS)
    ]
    stubs = [ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel) for channel in channels]
    for channel in channels:
        await channel.channel_ready()
    calls = []

    async def envoy(index: int) -> str:
        call = stubs[index % CHANNELS].StreamAggregatedResources()
        calls.append(call)
        try:
            await call.write(discovery_pb2.DiscoveryRequest(node=envoy_node(f"burst-{index}"), type_url=CDS))
            response = await call.read()
        except grpc.aio.AioRpcError as exc:
            return f"{exc.code().name}: {exc.details()}"
        return "answered" if response is not grpc.aio.EOF else "ended without an answer"

    started = time.monotonic()
    try:
        outcomes = Counter(await asyncio.wait_for(asyncio.gather(*(envoy(i) for i in range(STREAMS))), 60))
        return outcomes, time.monotonic() - started
    finally:
        for call in calls:
            call.cancel()
        for channel in channels:
            await channel.close()


def test_two_thousand_five_hundred_streams_opened_at_once_are_all_answered(server: AegisServer) -> None:
    outcomes, seconds = asyncio.run(open_all(f"127.0.0.1:{server.grpc_port}"))
    assert outcomes == {"answered": STREAMS}, f"after {seconds:.1f} s: {outcomes.most_common(4)}"
