"""What a node serves for a model, from the route and runtime versions it acknowledged."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from controlplane.xds.builder import build_snapshot
from controlplane.xds.resources import Arm, DesiredState, Endpoint, ListenerAddress, ModelRoute, cluster_name
from controlplane.xds.served import served_split
from controlplane.xds.snapshot import ModelRoutes, ModelWeights, Snapshot

UP = (Endpoint("127.0.0.1", 9001),)
V1, V2, V3 = (cluster_name("foo", version) for version in ("1", "2", "3"))


def snapshot(stable: int, canary: int | None, *, canary_version: str = "2", up: bool = True) -> Snapshot:
    canary_arm = None if canary is None else Arm(canary_version, canary, UP)
    model = ModelRoute("foo", Arm("1", stable, UP if up else ()), canary_arm)
    return build_snapshot(DesiredState(ListenerAddress("127.0.0.1", 1), (model,)))


SPLIT_90 = snapshot(90, 10)
SPLIT_0_100 = snapshot(0, 100)
NO_CANARY = snapshot(100, None)
OTHER_CANARY = snapshot(20, 80, canary_version="3")
NO_HOSTS = snapshot(100, None, up=False)
# New routes (mirroring) and weights, while a node still runs SPLIT_90's routes: their weights stay.
MIRRORED = build_snapshot(
    DesiredState(ListenerAddress("127.0.0.1", 1), (ModelRoute("foo", Arm("1", 50, UP), Arm("2", 50, UP),
                                                              mirror_percent=5),)),
    running_routes=lambda model: [SPLIT_90.model_routes[model]], previous=SPLIT_90,
)


UNKNOWN = None  # a version this process never published
NONE_APPLIED: dict[str, ModelWeights] = {}  # the node never applied a runtime layer


@pytest.mark.parametrize(
    ("routes", "weights", "expected"),
    [
        pytest.param(SPLIT_90.model_routes, SPLIT_90.model_weights, {V1: 90, V2: 10},
                     id="routes and weights of one snapshot"),
        pytest.param(SPLIT_90.model_routes, SPLIT_0_100.model_weights, {V1: 0, V2: 100},
                     id="a newer weight change applied"),
        pytest.param(SPLIT_90.model_routes, NONE_APPLIED, {V1: 100, V2: 0},
                     id="no runtime layer: stable fallback"),
        pytest.param(SPLIT_90.model_routes, NO_CANARY.model_weights, {V1: 100, V2: 0},
                     id="a layer without its keys: fallback"),
        pytest.param(OTHER_CANARY.model_routes, SPLIT_90.model_weights, {V1: 100, V3: 0},
                     id="keys of another set of arms: fallback"),
        pytest.param(SPLIT_90.model_routes, MIRRORED.model_weights, {V1: 90, V2: 10},
                     id="older routes read the weights they came with"),
        pytest.param(MIRRORED.model_routes, MIRRORED.model_weights, {V1: 50, V2: 50},
                     id="the new routes read the new weights"),
        pytest.param(SPLIT_90.model_routes, UNKNOWN, None, id="a runtime version never published"),
        pytest.param(NO_CANARY.model_routes, UNKNOWN, {V1: 100}, id="a plain route needs no runtime layer"),
        pytest.param(UNKNOWN, SPLIT_90.model_weights, None, id="a route version never published"),
        pytest.param(NO_HOSTS.model_routes, SPLIT_90.model_weights, {}, id="a direct 503"),
    ],
)
def test_a_nodes_split_comes_from_its_routes_and_its_runtime_layer(
    routes: Mapping[str, ModelRoutes] | None, weights: Mapping[str, ModelWeights] | None,
    expected: dict[str, int] | None,
) -> None:
    assert served_split("foo", routes, weights) == expected


def test_a_model_the_routes_do_not_name_gets_nothing() -> None:
    assert served_split("bar", SPLIT_90.model_routes, SPLIT_90.model_weights) == {}
