"""Acknowledgements from REST polls, and desired routing from stages and settings, as tables."""

from __future__ import annotations

import pytest

from controlplane.xds.desired import ModelStages, TrafficSetting, effective_weights, model_route
from controlplane.xds.nodes import NodeTracker, PollKind
from controlplane.xds.resources import Endpoint
from controlplane.xds.snapshot import ResourceType

RDS = ResourceType.ROUTE


def test_a_node_that_polls_again_on_the_served_version_acknowledged_it() -> None:
    tracker = NodeTracker(stale_after=30)
    assert tracker.observe("n1", "c", RDS, "", now=0).kind is PollKind.FIRST
    tracker.record_served("n1", RDS, "v1")
    outcome = tracker.observe("n1", "c", RDS, "v1", now=1)
    assert (outcome.kind, outcome.ack_changed) == (PollKind.ACK, True)
    assert tracker.observe("n1", "c", RDS, "v1", now=2).kind is PollKind.STEADY


def test_a_node_that_polls_again_on_an_older_version_rejected_the_served_one() -> None:
    tracker = NodeTracker(stale_after=30)
    tracker.observe("n1", "c", RDS, "v1", now=0, published=True)
    tracker.record_served("n1", RDS, "v2")
    outcome = tracker.observe("n1", "c", RDS, "v1", now=1)
    assert (outcome.kind, outcome.rejected_version) == (PollKind.REJECT, "v2")
    assert tracker.has_rejected("n1", RDS, "v2")
    assert not tracker.has_rejected("n2", RDS, "v2")
    # Counted once: the next poll on v1 is steady, not a second rejection.
    assert tracker.observe("n1", "c", RDS, "v1", now=2).kind is PollKind.STEADY


def test_a_restarted_envoy_is_not_taken_for_a_rejection() -> None:
    tracker = NodeTracker(stale_after=30)
    tracker.observe("n1", "c", RDS, "v1", now=0, published=True)
    tracker.record_served("n1", RDS, "v2")
    assert tracker.observe("n1", "c", RDS, "", now=1).kind is PollKind.FIRST
    assert not tracker.has_rejected("n1", RDS, "v2")


def test_nodes_not_seen_for_a_while_stop_counting() -> None:
    tracker = NodeTracker(stale_after=10)
    tracker.observe("old", "c", RDS, "v1", now=0, published=True)
    tracker.observe("new", "c", RDS, "v2", now=8, published=True)
    assert [n.node_id for n in tracker.live_nodes(now=12)] == ["new"]
    assert tracker.acked_versions(RDS, now=12) == ["v2"]


@pytest.mark.parametrize(
    ("stages", "weights", "expected"),
    [
        (ModelStages("m", "1"), None, {"1": 100}),
        (ModelStages("m", "1", "2"), None, {"1": 100, "2": 0}),
        (ModelStages("m", "1", "2"), {"1": 90, "2": 10}, {"1": 90, "2": 10}),
        # The canary left (promoted or rolled back): its stale weight is dropped.
        (ModelStages("m", "2"), {"1": 90, "2": 10}, {"2": 10}),
        # Nothing positive remains: prod takes 100 again.
        (ModelStages("m", "3"), {"1": 90, "2": 10}, {"3": 100}),
        (ModelStages("m", None, "2"), None, {"2": 100}),
        (ModelStages("m"), None, {}),
    ],
)
def test_effective_weights(
    stages: ModelStages, weights: dict[str, int] | None, expected: dict[str, int]
) -> None:
    setting = TrafficSetting(weights) if weights is not None else None
    assert effective_weights(stages, setting) == expected


def test_model_route_carries_endpoints_matches_and_mirror_only_with_a_canary() -> None:
    endpoints = {("m", "1"): (Endpoint("127.0.0.1", 1),), ("m", "2"): (Endpoint("127.0.0.1", 2),)}
    setting = TrafficSetting({"1": 50, "2": 50}, ({"x-canary": "always"},), 5)
    route = model_route(ModelStages("m", "1", "2"), setting, endpoints)
    assert route is not None and route.canary is not None
    assert (route.stable.weight, route.canary.weight, route.mirror_percent) == (50, 50, 5)
    assert route.canary.endpoints == (Endpoint("127.0.0.1", 2),)
    alone = model_route(ModelStages("m", "1"), setting, endpoints)
    assert alone is not None and alone.canary is None and alone.mirror_percent == 0
    assert model_route(ModelStages("m"), setting, endpoints) is None
