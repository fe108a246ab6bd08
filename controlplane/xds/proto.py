"""xDS resources as protobuf bytes, built once per resource version: pure, no I/O.

The JSON resources (proto3 JSON form, see resources.py) are parsed into Envoy's
messages (the `xds-protos` package) and serialised; the bytes are what gRPC sends.
Protobuf encodes a message as its fields one after another, and a repeated field
as the same tag repeated, so a message can be assembled by joining already
encoded fields. That is how a RouteConfiguration with thousands of models is
built from each model's routes, encoded once when that model changed, and how a
response gets its per-stream nonce appended to bytes shared by every stream.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2

# Imported for their side effect: the "@type" names inside a listener's typed_config
# resolve only once their messages are in the default descriptor pool.
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401
from envoy.extensions.filters.network.http_connection_manager.v3 import (  # noqa: F401
    http_connection_manager_pb2,
)
from google.protobuf import json_format
from google.protobuf.message import Message

MESSAGES: dict[str, type[Message]] = {
    "type.googleapis.com/envoy.config.listener.v3.Listener": listener_pb2.Listener,
    "type.googleapis.com/envoy.config.cluster.v3.Cluster": cluster_pb2.Cluster,
    "type.googleapis.com/envoy.config.route.v3.RouteConfiguration": route_pb2.RouteConfiguration,
    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment": endpoint_pb2.ClusterLoadAssignment,
}

_WIRE_LENGTH_DELIMITED = 2


def _field_number(message: type[Message], field: str) -> int:
    number: int = message.DESCRIPTOR.fields_by_name[field].number
    return number


_ROUTE_CONFIG_NAME = _field_number(route_pb2.RouteConfiguration, "name")
_ROUTE_CONFIG_VIRTUAL_HOSTS = _field_number(route_pb2.RouteConfiguration, "virtual_hosts")
_VIRTUAL_HOST_NAME = _field_number(route_components_pb2.VirtualHost, "name")
_VIRTUAL_HOST_DOMAINS = _field_number(route_components_pb2.VirtualHost, "domains")
_VIRTUAL_HOST_ROUTES = _field_number(route_components_pb2.VirtualHost, "routes")


def varint(value: int) -> bytes:
    """Protobuf base-128 varint of a non-negative integer."""
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def length_delimited(field_number: int, payload: bytes) -> bytes:
    """One encoded field of wire type 2 (a string, bytes or an embedded message)."""
    return varint(field_number << 3 | _WIRE_LENGTH_DELIMITED) + varint(len(payload)) + payload


def encode_resource(type_url: str, body: dict[str, Any]) -> bytes:
    """A resource in proto3 JSON form (without "@type") as its message's bytes.

    Raises json_format.ParseError for a field Envoy's messages do not have: the
    builders would have produced something Envoy cannot read.
    """
    message = json_format.ParseDict(body, MESSAGES[type_url]())
    encoded: bytes = message.SerializeToString(deterministic=True)
    return encoded


def encode_route(route: dict[str, Any]) -> bytes:
    """One Route (an entry of a virtual host's `routes`) as bytes."""
    message = json_format.ParseDict(route, route_components_pb2.Route())
    encoded: bytes = message.SerializeToString(deterministic=True)
    return encoded


def encode_virtual_host_routes(routes: Iterable[dict[str, Any]]) -> bytes:
    """Routes as repeated `VirtualHost.routes` fields: a model's part of the route configuration."""
    return b"".join(length_delimited(_VIRTUAL_HOST_ROUTES, encode_route(route)) for route in routes)


def encode_route_configuration(
    name: str, *, virtual_host: str, domains: Iterable[str], encoded_routes: bytes
) -> bytes:
    """A RouteConfiguration with one virtual host, from `encode_virtual_host_routes` output joined.

    Equal to parsing the whole JSON and serialising it, at the cost of a join.
    """
    host = b"".join(
        [
            length_delimited(_VIRTUAL_HOST_NAME, virtual_host.encode()),
            *(length_delimited(_VIRTUAL_HOST_DOMAINS, domain.encode()) for domain in domains),
            encoded_routes,
        ]
    )
    return length_delimited(_ROUTE_CONFIG_NAME, name.encode()) + length_delimited(
        _ROUTE_CONFIG_VIRTUAL_HOSTS, host
    )
