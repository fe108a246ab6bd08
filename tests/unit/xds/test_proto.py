"""Protobuf bytes of our resources: the fast path and joined parts equal Envoy's messages parsed whole."""

from __future__ import annotations

import pytest
from envoy.config.route.v3 import route_components_pb2
from google.protobuf import json_format

from controlplane.xds import proto
from controlplane.xds.builder import build_snapshot
from controlplane.xds.resources import (
    Arm,
    DesiredState,
    Endpoint,
    HeaderMatch,
    ListenerAddress,
    ModelRoute,
    model_routes,
)
from controlplane.xds.snapshot import ResourceType

MODELS = (
    ModelRoute(
        "fraud", Arm("1", 90, (Endpoint("10.0.0.1", 9000),)), Arm("2", 10, (Endpoint("10.0.0.2", 9000),)),
        canary_matches=(HeaderMatch.of({"x-canary": "1"}),), mirror_percent=5,
    ),
    ModelRoute("no-hosts", Arm("1", 100, ())),
    ModelRoute("held", Arm("1", 100, (Endpoint("10.0.0.3", 9000),)), Arm("2", 0, ())),
)


def parsed_whole(type_url: str, body: dict[str, object]) -> bytes:
    message = json_format.ParseDict(body, proto.MESSAGES[type_url]())
    encoded: bytes = message.SerializeToString(deterministic=True)
    return encoded


@pytest.mark.parametrize("ads", [False, True], ids=["rest-listener", "ads-listener"])
def test_every_resource_encodes_as_json_format_would(ads: bool) -> None:
    snapshot = build_snapshot(DesiredState(ListenerAddress("127.0.0.1", 10000), MODELS))
    for kind in ResourceType:
        for entry in snapshot.entries(kind, ads=ads):
            assert entry.encoded == parsed_whole(str(kind), entry.body), (kind, entry.name)


def test_each_route_encodes_as_json_format_would() -> None:
    for model in MODELS:
        for route in model_routes(model):
            expected = json_format.ParseDict(route, route_components_pb2.Route()).SerializeToString(
                deterministic=True
            )
            assert proto.encode_route(route) == expected, route["name"]


def test_a_field_envoy_does_not_know_is_refused() -> None:
    with pytest.raises(json_format.ParseError):
        proto.encode_route({"name": "x", "match": {"prefix": "/"}, "no_such_field": 1})


def test_varint_and_length_delimited_follow_the_wire_format() -> None:
    assert proto.varint(0) == b"\x00"
    assert proto.varint(300) == b"\xac\x02"
    assert proto.length_delimited(1, b"ab") == b"\x0a\x02ab"


def test_the_runtime_layer_joined_from_model_parts_is_the_layer_parsed_whole() -> None:
    # "a" sorts before "a-b" as a model but after it as a runtime key ('.' > '-'): the
    # joined map entries come in another order than protobuf's own, the message is the same.
    def split(name: str) -> ModelRoute:
        up = (Endpoint("10.0.0.1", 9000),)
        return ModelRoute(name, Arm("1", 70, up), Arm("2", 30, up))

    snapshot = build_snapshot(DesiredState(ListenerAddress("127.0.0.1", 10000), (split("a"), split("a-b"))))
    runtime = snapshot.runtime
    assert len(runtime.layer) == 4
    message = proto.MESSAGES[str(ResourceType.RUNTIME)]()
    message.ParseFromString(runtime.encoded)
    assert message == json_format.ParseDict(runtime.body, proto.MESSAGES[str(ResourceType.RUNTIME)]())
    assert {key: value.number_value for key, value in message.layer.fields.items()} == runtime.layer
