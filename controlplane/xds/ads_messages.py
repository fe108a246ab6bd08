"""ADS responses as protobuf bytes, assembled from resources encoded once: pure, no I/O.

A DiscoveryResponse is its fields one after another (proto.py says why that is
enough), so the response for one (type, version, resource names) is built once
and shared by every stream; each stream only appends its nonce field. A delta
`Resource` (name, version, the resource in an Any) is built once per resource
version; a DeltaDiscoveryResponse joins the ones a stream needs.
"""

from __future__ import annotations

from collections.abc import Iterable

from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf.message import Message

from controlplane.xds.proto import length_delimited


def _number(message: type[Message], field: str) -> int:
    number: int = message.DESCRIPTOR.fields_by_name[field].number
    return number


_ANY_TYPE_URL = 1  # google.protobuf.Any: type_url = 1, value = 2 (fixed by the well-known type)
_ANY_VALUE = 2
_RESPONSE_VERSION = _number(discovery_pb2.DiscoveryResponse, "version_info")
_RESPONSE_RESOURCES = _number(discovery_pb2.DiscoveryResponse, "resources")
_RESPONSE_TYPE_URL = _number(discovery_pb2.DiscoveryResponse, "type_url")
_RESPONSE_NONCE = _number(discovery_pb2.DiscoveryResponse, "nonce")
_RESOURCE_NAME = _number(discovery_pb2.Resource, "name")
_RESOURCE_VERSION = _number(discovery_pb2.Resource, "version")
_RESOURCE_RESOURCE = _number(discovery_pb2.Resource, "resource")
_DELTA_SYSTEM_VERSION = _number(discovery_pb2.DeltaDiscoveryResponse, "system_version_info")
_DELTA_RESOURCES = _number(discovery_pb2.DeltaDiscoveryResponse, "resources")
_DELTA_TYPE_URL = _number(discovery_pb2.DeltaDiscoveryResponse, "type_url")
_DELTA_REMOVED = _number(discovery_pb2.DeltaDiscoveryResponse, "removed_resources")
_DELTA_NONCE = _number(discovery_pb2.DeltaDiscoveryResponse, "nonce")


def _string(field_number: int, value: str) -> bytes:
    # proto3 leaves empty strings out; doing the same keeps the bytes equal to protobuf's own.
    return length_delimited(field_number, value.encode()) if value else b""


def any_message(type_url: str, encoded: bytes) -> bytes:
    """A google.protobuf.Any holding an already encoded message."""
    return _string(_ANY_TYPE_URL, type_url) + length_delimited(_ANY_VALUE, encoded)


def sotw_response(version_info: str, type_url: str, encoded_resources: Iterable[bytes]) -> bytes:
    """A DiscoveryResponse without its nonce: the part every stream shares."""
    type_field = _string(_ANY_TYPE_URL, type_url)
    return b"".join(
        [
            _string(_RESPONSE_VERSION, version_info),
            *(
                length_delimited(_RESPONSE_RESOURCES, type_field + length_delimited(_ANY_VALUE, encoded))
                for encoded in encoded_resources
            ),
            _string(_RESPONSE_TYPE_URL, type_url),
        ]
    )


def with_nonce(shared_response: bytes, nonce: str) -> bytes:
    """The shared DiscoveryResponse bytes with one stream's nonce appended."""
    return shared_response + _string(_RESPONSE_NONCE, nonce)


def delta_resource(name: str, version: str, type_url: str, encoded: bytes) -> bytes:
    """One delta `Resource` message (not yet a field of a response)."""
    return (
        _string(_RESOURCE_NAME, name)
        + _string(_RESOURCE_VERSION, version)
        + length_delimited(_RESOURCE_RESOURCE, any_message(type_url, encoded))
    )


def delta_response(
    system_version: str, type_url: str, resources: Iterable[bytes], removed: Iterable[str], nonce: str
) -> bytes:
    """A DeltaDiscoveryResponse from `delta_resource` messages."""
    return b"".join(
        [
            _string(_DELTA_SYSTEM_VERSION, system_version),
            *(length_delimited(_DELTA_RESOURCES, resource) for resource in resources),
            _string(_DELTA_TYPE_URL, type_url),
            *(_string(_DELTA_REMOVED, name) for name in removed),
            _string(_DELTA_NONCE, nonce),
        ]
    )
