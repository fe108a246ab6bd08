"""xDS resources as protobuf bytes, built once per resource version: pure, no I/O.

The JSON resources (proto3 JSON form, see resources.py) are parsed into Envoy's
messages (the `xds-protos` package) and serialised; the bytes are what gRPC sends.
Protobuf encodes a message as its fields one after another, and a repeated field
as the same tag repeated, so a message can be assembled by joining already
encoded fields. That is how a RouteConfiguration with thousands of models is
built from each model's routes, encoded once when that model changed, how the
runtime layer is built from each model's weights (a map is a repeated field too),
and how a response gets its per-stream nonce appended to bytes shared by every
stream.
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
from envoy.service.runtime.v3 import rtds_pb2
from google.protobuf import json_format, struct_pb2
from google.protobuf.message import Message

MESSAGES: dict[str, type[Message]] = {
    "type.googleapis.com/envoy.config.listener.v3.Listener": listener_pb2.Listener,
    "type.googleapis.com/envoy.config.cluster.v3.Cluster": cluster_pb2.Cluster,
    "type.googleapis.com/envoy.config.route.v3.RouteConfiguration": route_pb2.RouteConfiguration,
    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment": endpoint_pb2.ClusterLoadAssignment,
    "type.googleapis.com/envoy.service.runtime.v3.Runtime": rtds_pb2.Runtime,
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
_RUNTIME_NAME = _field_number(rtds_pb2.Runtime, "name")
_RUNTIME_LAYER = _field_number(rtds_pb2.Runtime, "layer")


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


_WRAPPERS = frozenset({
    "google.protobuf.UInt32Value", "google.protobuf.UInt64Value", "google.protobuf.Int32Value",
    "google.protobuf.Int64Value", "google.protobuf.BoolValue", "google.protobuf.StringValue",
    "google.protobuf.DoubleValue", "google.protobuf.FloatValue",
})


class _NeedsGenericParser(Exception):
    """A JSON form the fast path does not handle (an Any, a map...): use json_format."""


# How to set each field of a message type from JSON, worked out once per type:
# (kind, enum numbers by name). Kinds: "message", "messages", "wrapper", "duration",
# "enum", "enums", "scalars", "scalar"; anything else is left to json_format.
_Plan = dict[str, tuple[str, dict[str, int]]]
_PLANS: dict[str, _Plan] = {}


def _field_kind(field: Any) -> tuple[str, dict[str, int]]:
    if field.message_type is not None:
        name = field.message_type.full_name
        if field.message_type.GetOptions().map_entry:
            return "generic", {}
        if field.is_repeated:
            return "messages", {}
        if name in _WRAPPERS:
            return "wrapper", {}
        if name == "google.protobuf.Duration":
            return "duration", {}
        return ("generic", {}) if name.startswith("google.protobuf.") else ("message", {})
    if field.enum_type is not None:
        numbers = {value.name: value.number for value in field.enum_type.values}
        return ("enums" if field.is_repeated else "enum"), numbers
    if field.type == field.TYPE_BYTES:
        return "generic", {}  # base64 in JSON
    return ("scalars" if field.is_repeated else "scalar"), {}


def _plan(message: Message) -> _Plan:
    descriptor = message.DESCRIPTOR
    plan = _PLANS.get(descriptor.full_name)
    if plan is None:
        plan = _PLANS[descriptor.full_name] = {
            field.name: _field_kind(field) for field in descriptor.fields
        }
    return plan


def _fill(message: Message, body: dict[str, Any]) -> None:
    """Set `message` from proto3 JSON the way json_format does, for the forms our builders emit.

    json_format.ParseDict walks descriptors in Python at ~140 us per route; this
    covers what routes and clusters use (messages, repeated fields, enums by name,
    wrappers, durations) with a plan worked out once per message type, and defers
    anything else (an Any, a map, bytes) to json_format.
    """
    plan = _plan(message)
    for key, value in body.items():
        kind, numbers = plan.get(key, ("generic", {}))
        if kind == "scalar":
            setattr(message, key, value)
        elif kind == "message":
            _fill(getattr(message, key), value)
        elif kind == "messages":
            repeated = getattr(message, key)
            for item in value:
                _fill(repeated.add(), item)
        elif kind == "wrapper":
            getattr(message, key).value = value
        elif kind == "enum":
            setattr(message, key, numbers[value] if isinstance(value, str) else value)
        elif kind == "scalars":
            getattr(message, key).extend(value)
        elif kind == "duration":
            getattr(message, key).FromJsonString(value)
        elif kind == "enums":
            getattr(message, key).extend(numbers[v] if isinstance(v, str) else v for v in value)
        else:
            raise _NeedsGenericParser(key)


def _parse(body: dict[str, Any], message: Message) -> Message:
    try:
        _fill(message, body)
    except _NeedsGenericParser:
        message.Clear()
        json_format.ParseDict(body, message)
    return message


def encode_resource(type_url: str, body: dict[str, Any]) -> bytes:
    """A resource in proto3 JSON form (without "@type") as its message's bytes.

    Raises json_format.ParseError (or ValueError/KeyError from the fast path) for a
    field Envoy's messages do not have: the builders produced something Envoy
    cannot read.
    """
    encoded: bytes = _parse(body, MESSAGES[type_url]()).SerializeToString(deterministic=True)
    return encoded


def encode_route(route: dict[str, Any]) -> bytes:
    """One Route (an entry of a virtual host's `routes`) as bytes."""
    encoded: bytes = _parse(route, route_components_pb2.Route()).SerializeToString(deterministic=True)
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


def encode_layer_fields(values: Iterable[tuple[str, int]]) -> bytes:
    """Runtime keys and numbers as encoded `Struct.fields` map entries: a model's part of the layer.

    Struct numbers are doubles; Envoy reads an integral one as an integer (a weight).
    """
    layer = struct_pb2.Struct()
    for key, value in values:
        layer.fields[key].number_value = value
    encoded: bytes = layer.SerializeToString(deterministic=True)
    return encoded


def encode_runtime(name: str, *, encoded_fields: bytes) -> bytes:
    """A Runtime (RTDS) resource from `encode_layer_fields` output joined.

    The same message as parsing the whole JSON (a map's entries may come in any order).
    """
    return length_delimited(_RUNTIME_NAME, name.encode()) + length_delimited(_RUNTIME_LAYER, encoded_fields)
