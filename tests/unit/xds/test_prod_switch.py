"""A prod switched to a version whose cluster Envoy does not have yet: no request answered 503.

A rollback to an archived version (or a promotion with no canary) names a cluster
Envoy gets only with the next CDS round trip. Until it is acknowledged, the routes
Envoy runs stay as they are (with the weights they read), not a direct 503.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest

from controlplane.xds.builder import build_snapshot
from controlplane.xds.consistency import check_consistency
from controlplane.xds.resources import Arm, DesiredState, Endpoint, ListenerAddress, ModelRoute, cluster_name
from controlplane.xds.snapshot import ResourceType, Snapshot, routed_clusters

LISTENER = ListenerAddress("127.0.0.1", 10000)
HOSTS = {version: (Endpoint("127.0.0.1", 9000 + int(version)),) for version in ("1", "2", "3")}


def routing(stable: str, canary: tuple[str, int] | None = None) -> DesiredState:
    """Model "m": `stable` (with the rest of the weight) and an optional (canary, weight)."""
    canary_arm = None if canary is None else Arm(canary[0], canary[1], HOSTS[canary[0]])
    weight = 100 - (canary[1] if canary else 0)
    return DesiredState(LISTENER, (ModelRoute("m", Arm(stable, weight, HOSTS[stable]), canary_arm),))


def cluster(version: str) -> str:
    return cluster_name("m", version)


def plain_action(snapshot: Snapshot) -> dict[str, Any]:
    route = next(r for r in snapshot.routes[0]["virtual_hosts"][0]["routes"] if r["name"] == "m/v1")
    return {key: value for key, value in route.items() if key not in ("name", "match")}


def switched(before: Snapshot, after: DesiredState, acked: Iterable[str]) -> Snapshot:
    """`after` built on `before` while the one node runs `before` and holds the clusters `acked`."""
    return build_snapshot(
        after, routable_clusters=frozenset(acked), previous=before,
        still_routed=routed_clusters(before).__contains__,
        running_routes=lambda model: [before.model_routes[model]],
    )


CASES = [
    # (what, running, switched to)
    ("rollback of prod 2 to an archived 1", routing("2"), routing("1")),
    ("promotion of prod to a version never routed", routing("1"), routing("3")),
    ("prod alone after a split, to a third version", routing("1", ("2", 30)), routing("3")),
]


@pytest.mark.parametrize(("what", "running", "target"), CASES, ids=[case[0] for case in CASES])
def test_until_envoy_has_the_new_cluster_it_keeps_the_routes_and_weights_it_runs(
    what: str, running: DesiredState, target: DesiredState
) -> None:
    held = {cluster(arm.version) for model in running.routed() for arm in model.arms}
    before = build_snapshot(running, routable_clusters=frozenset(held))
    new = cluster(target.by_name["m"].stable.version)

    waiting = switched(before, target, held)
    assert "direct_response" not in plain_action(waiting), what
    assert plain_action(waiting) == plain_action(before)
    assert waiting.versions[ResourceType.ROUTE] == before.versions[ResourceType.ROUTE]
    assert waiting.runtime.layer == before.runtime.layer
    assert new in {c["name"] for c in waiting.clusters} and held <= {c["name"] for c in waiting.clusters}
    assert check_consistency(waiting) == []
    assert "m" in waiting.held_back_models, "rebuilt until the new cluster is routable"

    routed = switched(waiting, target, held | {new})
    assert plain_action(routed) == {"route": {"cluster": new}}
    assert routed.runtime.layer == before.runtime.layer, "the node still runs the older routes"
    moved_on = switched(routed, target, held | {new})
    assert moved_on.runtime.layer == {} and "m" not in moved_on.held_back_models


def test_with_no_node_on_older_routes_a_model_with_nothing_routable_answers_503() -> None:
    before = build_snapshot(routing("2"), routable_clusters=frozenset({cluster("2")}))
    alone = build_snapshot(routing("1"), routable_clusters=frozenset({cluster("2")}), previous=before,
                           running_routes=lambda model: [])
    assert plain_action(alone)["direct_response"]["status"] == 503
