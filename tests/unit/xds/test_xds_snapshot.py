"""Snapshots: content versions per type, consistency checks, make-before-break."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from typing import Any

import pytest

from controlplane.xds.builder import build_snapshot
from controlplane.xds.consistency import check_consistency
from controlplane.xds.resources import (
    Arm,
    DesiredState,
    Endpoint,
    ListenerAddress,
    ModelRoute,
    cluster_name,
)
from controlplane.xds.snapshot import ResourceType, Snapshot, SnapshotView, routed_clusters

LISTENER = ListenerAddress("127.0.0.1", 10000)
UP_1 = (Endpoint("127.0.0.1", 9001), Endpoint("127.0.0.2", 9001))
UP_2 = (Endpoint("127.0.0.1", 9002),)
V1 = cluster_name("foo", "v1")
V2 = cluster_name("foo", "v2")


def desired(stable: int = 90, canary: int | None = 10, **extra: Any) -> DesiredState:
    canary_arm = None if canary is None else Arm("v2", canary, UP_2)
    model = ModelRoute("foo", stable=Arm("v1", stable, UP_1), canary=canary_arm, **extra)
    return DesiredState(LISTENER, (model,))


def split_action(snapshot: Snapshot) -> dict[str, Any]:
    route = next(route for route in _routes(snapshot) if route["name"] == "foo/v1-verb")
    action: dict[str, Any] = route["route"]
    return action


def versions_that_differ(before: Snapshot, after: Snapshot) -> set[ResourceType]:
    return {kind for kind in ResourceType if before.versions[kind] != after.versions[kind]}


def test_same_desired_state_gives_the_same_versions() -> None:
    first, second = build_snapshot(desired()), build_snapshot(desired())
    assert first.versions == second.versions
    assert first.version == second.version
    assert all(len(version) == 64 for version in first.versions.values())


def test_endpoint_order_is_not_a_change() -> None:
    reordered = DesiredState(
        LISTENER,
        (ModelRoute("foo", stable=Arm("v1", 90, UP_1[::-1]), canary=Arm("v2", 10, UP_2)),),
    )
    assert build_snapshot(reordered).versions == build_snapshot(desired()).versions


@pytest.mark.parametrize(
    ("after", "changed"),
    [
        pytest.param(desired(50, 50), {ResourceType.RUNTIME}, id="weight change"),
        pytest.param(desired(100, 0), {ResourceType.RUNTIME}, id="canary weight to 0"),
        pytest.param(
            desired(mirror_percent=10), {ResourceType.ROUTE, ResourceType.RUNTIME}, id="mirror change"
        ),
        pytest.param(
            desired(canary=None),
            {ResourceType.ROUTE, ResourceType.CLUSTER, ResourceType.ENDPOINT, ResourceType.RUNTIME},
            id="canary removed",
        ),
        pytest.param(
            DesiredState(ListenerAddress("127.0.0.1", 10001), desired().models),
            {ResourceType.LISTENER},
            id="listener moved",
        ),
    ],
)
def test_only_the_changed_types_get_a_new_version(after: DesiredState, changed: set[ResourceType]) -> None:
    before = build_snapshot(desired())
    assert versions_that_differ(before, build_snapshot(after)) == changed
    assert before.version != build_snapshot(after).version


def test_built_snapshot_is_consistent_and_serves_endpoints_for_eds() -> None:
    snapshot = build_snapshot(desired())
    assert check_consistency(snapshot) == []
    assert [assignment["cluster_name"] for assignment in snapshot.endpoints] == sorted([V1, V2])


def _routes(snapshot: Snapshot | SnapshotView) -> list[dict[str, Any]]:
    routes: list[dict[str, Any]] = snapshot.routes[0]["virtual_hosts"][0]["routes"]
    return routes


def _to_missing_cluster(snapshot: SnapshotView) -> None:
    _routes(snapshot)[1]["route"]["weighted_clusters"]["clusters"][1]["name"] = "gone"


def _zero_weights(snapshot: SnapshotView) -> None:
    for entry in _routes(snapshot)[1]["route"]["weighted_clusters"]["clusters"]:
        entry["weight"] = 0


def _weight_to_empty_cluster(snapshot: SnapshotView) -> None:
    v2 = next(cluster for cluster in snapshot.clusters if cluster["name"] == V2)
    v2["load_assignment"]["endpoints"] = []


def _mirror_to_missing_cluster(snapshot: SnapshotView) -> None:
    _routes(snapshot)[1]["route"]["request_mirror_policies"] = [{"cluster": "shadow"}]


def _listener_without_routes(snapshot: SnapshotView) -> None:
    snapshot.routes[0]["name"] = "other_routes"


def _endpoints_for_unknown_cluster(snapshot: SnapshotView) -> None:
    snapshot.endpoints[0]["cluster_name"] = "stray"


Mutation = Callable[[SnapshotView], None]
SPLIT = "route aegis_routes/foo/v1-verb"


@pytest.mark.parametrize(
    ("mutate", "expected", "routes_affected"),
    [
        (_to_missing_cluster, f"{SPLIT} sends traffic to cluster 'gone', which is not in CDS", 1),
        (_zero_weights, f"{SPLIT}: weighted_clusters weights sum to 0 (Envoy rejects it)", 1),
        (
            _weight_to_empty_cluster,
            f"route aegis_routes/foo/v1 gives weight 10 to cluster {V2!r}, which has no endpoints",
            3,
        ),
        (_mirror_to_missing_cluster, f"{SPLIT} mirrors to cluster 'shadow', which is not in CDS", 1),
        (
            _listener_without_routes,
            "listener 'aegis_ingress' wants route config 'aegis_routes', which is missing",
            1,
        ),
        (_endpoints_for_unknown_cluster, "endpoints for 'stray', which is not a cluster", 1),
    ],
)
def test_inconsistent_snapshot_reports_the_problem(
    mutate: Mutation, expected: str, routes_affected: int
) -> None:
    snapshot = copy.deepcopy(build_snapshot(desired()).view())
    mutate(snapshot)
    problems = check_consistency(snapshot)
    assert problems[0] == expected
    assert len(problems) == routes_affected


def test_each_problem_is_reported_once_per_route() -> None:
    snapshot = copy.deepcopy(build_snapshot(desired()).view())
    _to_missing_cluster(snapshot)
    _mirror_to_missing_cluster(snapshot)
    assert check_consistency(snapshot) == [
        "route aegis_routes/foo/v1-verb sends traffic to cluster 'gone', which is not in CDS",
        "route aegis_routes/foo/v1-verb mirrors to cluster 'shadow', which is not in CDS",
    ]


def test_duplicate_clusters_are_reported() -> None:
    snapshot = build_snapshot(desired()).view()
    doubled = dataclasses.replace(snapshot, clusters=snapshot.clusters + snapshot.clusters[:1])
    assert check_consistency(doubled) == [f"cluster {V1!r} appears 2 times"]


def test_new_canary_is_routed_only_after_envoy_acknowledged_its_cluster() -> None:
    before_ack = build_snapshot(desired(), routable_clusters=frozenset({V1}))
    assert {cluster["name"] for cluster in before_ack.clusters} == {V1, V2}
    assert split_action(before_ack) == {"cluster": V1}
    assert before_ack.runtime.layer == {}
    after_ack = build_snapshot(desired(), routable_clusters=frozenset({V1, V2}), previous=before_ack)
    assert versions_that_differ(before_ack, after_ack) == {ResourceType.ROUTE, ResourceType.RUNTIME}
    prefix = split_action(after_ack)["weighted_clusters"]["runtime_key_prefix"]
    assert split_action(after_ack)["weighted_clusters"]["clusters"][1] == {"name": V2, "weight": 0}
    assert after_ack.runtime.layer == {f"{prefix}.{V1}": 90, f"{prefix}.{V2}": 10}


def test_a_node_still_on_older_routes_keeps_the_weights_they_were_published_with() -> None:
    before = build_snapshot(desired())
    old_prefix = before.model_routes["foo"].runtime_prefix
    changed = desired(50, 50, mirror_percent=10)
    after = build_snapshot(changed, running_routes=lambda m: [before.model_routes[m]], previous=before)
    new_prefix = after.model_routes["foo"].runtime_prefix
    assert new_prefix != old_prefix
    assert after.runtime.layer == {
        f"{new_prefix}.{V1}": 50, f"{new_prefix}.{V2}": 50,
        f"{old_prefix}.{V1}": 90, f"{old_prefix}.{V2}": 10,
    }
    assert check_consistency(after) == []
    assert "foo" in after.held_back_models, "rebuilt until no node runs the older routes"

    moved_on = build_snapshot(changed, running_routes=lambda m: [after.model_routes[m]], previous=after)
    assert moved_on.runtime.layer == {f"{new_prefix}.{V1}": 50, f"{new_prefix}.{V2}": 50}
    assert versions_that_differ(after, moved_on) == {ResourceType.RUNTIME}
    assert moved_on.held_back_models == frozenset()
    assert moved_on.versions == build_snapshot(changed).versions


def test_a_weight_change_keeps_no_weights_of_the_same_routes() -> None:
    before = build_snapshot(desired())
    after = build_snapshot(desired(20, 80), running_routes=lambda model: [before.model_routes[model]],
                           previous=before)
    prefix = after.model_routes["foo"].runtime_prefix
    assert after.runtime.layer == {f"{prefix}.{V1}": 20, f"{prefix}.{V2}": 80}
    assert after.held_back_models == frozenset()


def test_removed_canary_stays_in_cds_until_no_acked_route_uses_it() -> None:
    running = build_snapshot(desired())
    rolled_back = desired(canary=None)
    draining = build_snapshot(
        rolled_back, still_routed=routed_clusters(running).__contains__, previous=running
    )
    assert {cluster["name"] for cluster in draining.clusters} == {V1, V2}
    assert routed_clusters(draining) == {V1}
    done = build_snapshot(
        rolled_back, still_routed=routed_clusters(draining).__contains__, previous=draining
    )
    assert {cluster["name"] for cluster in done.clusters} == {V1}
    assert versions_that_differ(draining, done) == {ResourceType.CLUSTER, ResourceType.ENDPOINT}


def test_discovery_response_wraps_resources_as_any_with_the_type_version() -> None:
    snapshot = build_snapshot(desired())
    response = snapshot.discovery_response(ResourceType.ROUTE, ["aegis_routes"])
    assert response["version_info"] == snapshot.versions[ResourceType.ROUTE]
    assert response["type_url"] == "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
    assert [resource["@type"] for resource in response["resources"]] == [response["type_url"]]
    assert response["resources"][0]["name"] == "aegis_routes"
    assert snapshot.discovery_response(ResourceType.ROUTE, ["other"])["resources"] == []
    clusters = snapshot.discovery_response(ResourceType.CLUSTER)["resources"]
    assert [cluster["name"] for cluster in clusters] == sorted([V1, V2])
