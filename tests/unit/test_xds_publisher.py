"""Make before break: new clusters are routed only once nodes have them; old ones leave last."""

from __future__ import annotations

from controlplane.xds.builder import build_snapshot
from controlplane.xds.cache import Publisher, XdsCache
from controlplane.xds.nodes import NodeTracker
from controlplane.xds.resources import Arm, DesiredState, Endpoint, ListenerAddress, ModelRoute, cluster_name
from controlplane.xds.snapshot import ResourceType, routed_clusters

LISTENER = ListenerAddress("127.0.0.1", 10000)
E1, E2 = (Endpoint("127.0.0.1", 9001),), (Endpoint("127.0.0.1", 9002),)
V1, V2 = cluster_name("m", "1"), cluster_name("m", "2")


def state(canary_weight: int | None) -> DesiredState:
    canary = Arm("2", canary_weight, E2) if canary_weight is not None else None
    return DesiredState(LISTENER, (ModelRoute("m", Arm("1", 100 - (canary_weight or 0), E1), canary),))


def ack(nodes: NodeTracker, cache: XdsCache, node_id: str, kind: ResourceType, now: float) -> None:
    """The node is served the current version of `kind` and polls again reporting it."""
    version = cache.current.versions[kind]
    nodes.record_served(node_id, kind, version)
    nodes.observe(node_id, "c", kind, version, now=now, published=cache.was_published(kind, version))


def ack_everything(nodes: NodeTracker, cache: XdsCache, node_id: str, now: float) -> None:
    for kind in (ResourceType.CLUSTER, ResourceType.ROUTE):
        ack(nodes, cache, node_id, kind, now)


async def test_a_new_cluster_is_routed_only_after_every_live_node_acknowledged_it() -> None:
    nodes = NodeTracker(stale_after=30)
    cache = XdsCache(build_snapshot(state(None)))
    publisher = Publisher(cache, nodes, validator=None, clock=lambda: 1.0)
    ack_everything(nodes, cache, "envoy-a", 0.5)
    ack_everything(nodes, cache, "envoy-b", 0.5)

    await publisher.publish(state(50))
    assert V2 in {c["name"] for c in cache.current.clusters}
    assert routed_clusters(cache.current) == {V1}, "routes must wait for the CDS acknowledgement"

    ack(nodes, cache, "envoy-a", ResourceType.CLUSTER, 0.9)
    await publisher.publish()
    assert routed_clusters(cache.current) == {V1}, "one node still lacks the cluster"

    ack(nodes, cache, "envoy-b", ResourceType.CLUSTER, 0.9)
    await publisher.publish()
    assert routed_clusters(cache.current) == {V1, V2}


async def test_a_removed_cluster_stays_in_cds_until_no_acknowledged_route_uses_it() -> None:
    nodes = NodeTracker(stale_after=30)
    cache = XdsCache(build_snapshot(state(50)))
    publisher = Publisher(cache, nodes, validator=None, clock=lambda: 1.0)
    ack_everything(nodes, cache, "envoy-a", 0.5)

    await publisher.publish(state(None))
    assert routed_clusters(cache.current) == {V1}
    assert V2 in {c["name"] for c in cache.current.clusters}, "envoy-a still routes to v2"

    ack(nodes, cache, "envoy-a", ResourceType.ROUTE, 0.9)
    await publisher.publish()
    assert {c["name"] for c in cache.current.clusters} == {V1}


async def test_with_no_live_node_there_is_nothing_to_wait_for() -> None:
    nodes = NodeTracker(stale_after=30)
    cache = XdsCache(build_snapshot(state(None)))
    publisher = Publisher(cache, nodes, validator=None, clock=lambda: 100.0)
    ack(nodes, cache, "gone", ResourceType.CLUSTER, 1)
    await publisher.publish(state(10))
    assert routed_clusters(cache.current) == {V1, V2}


async def test_a_config_envoy_rejects_is_never_published() -> None:
    from controlplane.xds.cache import ValidationOutcome

    async def reject(_snapshot: object) -> ValidationOutcome:
        return ValidationOutcome(False, "Unknown field in: {...}")

    nodes = NodeTracker(stale_after=30)
    cache = XdsCache(build_snapshot(state(None)))
    before = cache.current.version
    publisher = Publisher(cache, nodes, validator=reject)
    result = await publisher.publish(state(10))
    assert not result.published
    assert "envoy rejected the config: Unknown field" in result.error
    assert cache.current.version == before


async def test_an_arm_that_lost_its_endpoints_keeps_them_in_cds_until_routes_moved_away() -> None:
    nodes = NodeTracker(stale_after=30)
    cache = XdsCache(build_snapshot(state(50)))
    publisher = Publisher(cache, nodes, validator=None, clock=lambda: 1.0)
    ack_everything(nodes, cache, "envoy-a", 0.5)
    without_endpoints = DesiredState(
        LISTENER, (ModelRoute("m", Arm("1", 50, E1), Arm("2", 50, ())),)
    )
    await publisher.publish(without_endpoints)
    assert routed_clusters(cache.current) == {V1}
    v2 = next(c for c in cache.current.clusters if c["name"] == V2)
    assert v2["load_assignment"]["endpoints"], "envoy-a still sends half its traffic to v2"
    ack(nodes, cache, "envoy-a", ResourceType.ROUTE, 0.9)
    await publisher.publish()
    v2 = next(c for c in cache.current.clusters if c["name"] == V2)
    assert v2["load_assignment"]["endpoints"] == []
