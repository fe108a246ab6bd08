"""A simulated Envoy on one gRPC ADS stream (state of the world or delta), for tests and benchmarks.

It sends what the test says and queues what the server sends, so a test can
assert both that a response came and that none did.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from envoy.service.runtime.v3 import rtds_pb2
from google.rpc import status_pb2

from controlplane.xds.snapshot import ResourceType

LDS, CDS, RDS, EDS, RTDS = (
    str(ResourceType.LISTENER), str(ResourceType.CLUSTER), str(ResourceType.ROUTE),
    str(ResourceType.ENDPOINT), str(ResourceType.RUNTIME),
)
MESSAGES: dict[str, Any] = {
    LDS: listener_pb2.Listener,
    CDS: cluster_pb2.Cluster,
    RDS: route_pb2.RouteConfiguration,
    RTDS: rtds_pb2.Runtime,
}


class AdsClient:
    """One ADS stream. `delta=True` opens DeltaAggregatedResources instead."""

    def __init__(
        self, target: str, node_id: str = "envoy-ads", *, delta: bool = False,
        metadata: Sequence[tuple[str, str]] = (), credentials: grpc.ChannelCredentials | None = None,
        server_name: str | None = None,
    ) -> None:
        self.target = target
        self.node_id = node_id
        self.delta = delta
        self.metadata = tuple(metadata)
        self.credentials = credentials
        self.server_name = server_name
        self.received: asyncio.Queue[Any] = asyncio.Queue()
        self.sent_node = False
        self.error: grpc.aio.AioRpcError | None = None

    async def __aenter__(self) -> AdsClient:
        options = [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []
        if self.credentials is None:
            self.channel = grpc.aio.insecure_channel(self.target, options=options)
        else:
            self.channel = grpc.aio.secure_channel(self.target, self.credentials, options=options)
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self.channel)
        method = stub.DeltaAggregatedResources if self.delta else stub.StreamAggregatedResources
        self.call = method(metadata=self.metadata)
        self.reader = asyncio.get_running_loop().create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        self.call.cancel()
        self.reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
            await self.reader
        await self.channel.close()

    async def _read(self) -> None:
        try:
            while True:
                message = await self.call.read()
                if message is grpc.aio.EOF:
                    return
                await self.received.put(message)
        except grpc.aio.AioRpcError as exc:
            self.error = exc

    def _node(self) -> dict[str, Any]:
        if self.sent_node:
            return {}
        self.sent_node = True
        return {"node": {"id": self.node_id, "cluster": "test-gateway"}}

    async def request(
        self, type_url: str, version: str = "", names: Iterable[str] = (), *, nonce: str = "",
        error: str | None = None,
    ) -> None:
        """A state-of-the-world DiscoveryRequest (the first one carries the node)."""
        fields: dict[str, Any] = {
            **self._node(), "type_url": type_url, "version_info": version,
            "resource_names": list(names), "response_nonce": nonce,
        }
        if error is not None:
            fields["error_detail"] = status_pb2.Status(code=13, message=error)
        await self._write(discovery_pb2.DiscoveryRequest(**fields))

    async def ack(self, response: Any) -> None:
        """Acknowledge a state-of-the-world response, asking for the same names again."""
        names = self.names_in(response) if response.type_url in (RDS, EDS, RTDS) else []
        await self.request(response.type_url, response.version_info, names, nonce=response.nonce)

    async def delta_request(
        self, type_url: str, *, subscribe: Iterable[str] = (), unsubscribe: Iterable[str] = (),
        initial: Mapping[str, str] | None = None, nonce: str = "", error: str | None = None,
    ) -> None:
        fields: dict[str, Any] = {
            **self._node(), "type_url": type_url, "resource_names_subscribe": list(subscribe),
            "resource_names_unsubscribe": list(unsubscribe), "initial_resource_versions": dict(initial or {}),
            "response_nonce": nonce,
        }
        if error is not None:
            fields["error_detail"] = status_pb2.Status(code=13, message=error)
        await self._write(discovery_pb2.DeltaDiscoveryRequest(**fields))

    async def _write(self, request: Any) -> None:
        try:
            await self.call.write(request)
        except grpc.aio.AioRpcError as exc:
            self.error = exc  # the stream ended (refused): `refusal` reports it

    async def receive(self, within: float = 10) -> Any:
        try:
            return await asyncio.wait_for(self.received.get(), within)
        except TimeoutError:
            raise AssertionError(f"no response within {within} s (stream error: {self.error})") from None

    async def nothing_within(self, seconds: float) -> bool:
        """True when the server sent nothing for `seconds`."""
        await asyncio.sleep(seconds)
        return self.received.empty()

    async def refusal(self, within: float = 10) -> grpc.aio.AioRpcError:
        """The status the stream ended with (it must end with an error)."""
        await asyncio.wait_for(asyncio.shield(self.reader), within)
        assert self.error is not None, "the stream ended without an error"
        return self.error

    @staticmethod
    def names_in(response: Any) -> list[str]:
        return [resource_name(response.type_url, any_.value) for any_ in response.resources]


def decode(type_url: str, value: bytes) -> Any:
    return MESSAGES[type_url].FromString(value)


def resource_name(type_url: str, value: bytes) -> str:
    return str(decode(type_url, value).name)


def route_weights(config: route_pb2.RouteConfiguration, route_name: str) -> dict[str, int]:
    """cluster -> weight of one route of the route configuration."""
    route = next(r for host in config.virtual_hosts for r in host.routes if r.name == route_name)
    if route.route.cluster:
        return {route.route.cluster: 100}
    return {c.name: c.weight.value for c in route.route.weighted_clusters.clusters}


def layer_weights(runtime: rtds_pb2.Runtime) -> dict[str, int]:
    """cluster -> weight in a runtime (RTDS) layer: each key ends with its cluster's name."""
    return {key.rsplit(".", 1)[1]: int(value.number_value) for key, value in runtime.layer.fields.items()}
