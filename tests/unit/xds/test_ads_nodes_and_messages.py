"""ADS in the node table (streams keep a node live, NACK messages kept clean) and ADS bytes as protobuf's."""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2

from controlplane.xds import ads_messages
from controlplane.xds.builder import build_snapshot
from controlplane.xds.nodes import (
    REJECTION_MESSAGE_MAX_CHARS,
    NodeTracker,
    PollKind,
    Transport,
    clean_message,
)
from controlplane.xds.resources import Arm, DesiredState, Endpoint, ListenerAddress, ModelRoute
from controlplane.xds.schemas import XdsNode
from controlplane.xds.snapshot import ResourceType, Snapshot

RDS, CDS = ResourceType.ROUTE, ResourceType.CLUSTER


def streaming_node(tracker: NodeTracker, node_id: str = "envoy", *, now: float = 0) -> None:
    tracker.stream_opened(node_id, "gw", now=now, transport=Transport.ADS, authenticated=False)
    tracker.record_served(node_id, RDS, "v1")
    assert tracker.observe(node_id, "gw", RDS, "v1", now=now, transport=Transport.ADS).kind is PollKind.ACK


def test_a_node_with_an_open_stream_stays_live_though_it_sends_nothing() -> None:
    tracker = NodeTracker(stale_after=10)
    streaming_node(tracker)
    assert [n.node_id for n in tracker.nodes_holding(RDS, now=3600)] == ["envoy"]
    tracker.stream_closed("envoy", now=3600)
    assert [n.node_id for n in tracker.nodes_holding(RDS, now=3605)] == ["envoy"], "counts a while after"
    assert tracker.nodes_holding(RDS, now=3611) == []
    assert tracker.get("envoy") is None


def test_nodes_with_open_streams_are_the_last_evicted_for_capacity() -> None:
    tracker = NodeTracker(stale_after=10, max_nodes=2)
    streaming_node(tracker, "streaming", now=0)
    tracker.observe("polling", "gw", RDS, "", now=1)
    tracker.observe("newcomer", "gw", RDS, "", now=2)
    assert {node.node_id for node in tracker.all_nodes(now=2)} == {"streaming", "newcomer"}


def test_a_nack_is_recorded_with_a_clean_message_and_no_longer_awaited() -> None:
    tracker = NodeTracker(stale_after=10)
    streaming_node(tracker)
    tracker.record_served("envoy", RDS, "v2")
    assert tracker.observe_rejection("envoy", RDS, "v2", message="bad\nweights\x00!", now=1)
    state = tracker.get("envoy").type_state(RDS)  # type: ignore[union-attr]
    assert (state.acked_version, state.served_version, state.rejected_versions) == ("v1", "", ["v2"])
    assert state.rejection_message == "bad weights !"
    assert tracker.has_rejected("envoy", RDS, "v2")
    assert not tracker.observe_rejection("stranger", RDS, "v2", message="x", now=1), "unknown: nothing kept"
    node = tracker.get("envoy")
    assert node is not None
    document = XdsNode.of(node, live=True, wall_offset=0)
    assert (document.transport, document.streams) == ("ads", 1)
    assert document.types["route"].rejection_message == "bad weights !"


def test_a_push_lost_with_a_broken_stream_is_not_taken_for_a_rejection() -> None:
    tracker = NodeTracker(stale_after=10)
    streaming_node(tracker)
    tracker.record_served("envoy", RDS, "v2")
    tracker.stream_closed("envoy", now=1)
    tracker.stream_opened("envoy", "gw", now=2, transport=Transport.ADS, authenticated=False)
    assert tracker.observe("envoy", "gw", RDS, "v1", now=2, transport=Transport.ADS).kind is PollKind.STEADY
    assert not tracker.has_rejected("envoy", RDS, "v2")
    tracker.record_served("envoy", RDS, "v2")
    assert tracker.observe("envoy", "gw", RDS, "v2", now=3, transport=Transport.ADS).kind is PollKind.ACK


def test_long_nack_messages_are_cut() -> None:
    cut = clean_message("x" * 10_000)
    assert len(cut) == REJECTION_MESSAGE_MAX_CHARS and cut.endswith("…")


def snapshot_with_two_clusters() -> Snapshot:
    arm = Arm("1", 60, (Endpoint("127.0.0.1", 9001),))
    canary = Arm("2", 40, (Endpoint("127.0.0.1", 9002),))
    return build_snapshot(DesiredState(ListenerAddress("127.0.0.1", 10000), (ModelRoute("m", arm, canary),)))


def test_a_shared_sotw_response_with_its_nonce_is_the_message_protobuf_would_make() -> None:
    snapshot = snapshot_with_two_clusters()
    entries = snapshot.entries(CDS, ads=True)
    version = snapshot.ads_versions[CDS]
    assembled = ads_messages.with_nonce(
        ads_messages.sotw_response(version, str(CDS), (e.encoded for e in entries)), "7"
    )
    expected = discovery_pb2.DiscoveryResponse(
        version_info=version, type_url=str(CDS), nonce="7",
        resources=[any_pb2.Any(type_url=str(CDS), value=e.encoded) for e in entries],
    )
    assert assembled == expected.SerializeToString(deterministic=True)
    parsed = discovery_pb2.DiscoveryResponse.FromString(assembled)
    names = [cluster_pb2.Cluster.FromString(r.value).name for r in parsed.resources]
    assert names == [e.name for e in entries]


def test_a_delta_response_is_the_message_protobuf_would_make() -> None:
    snapshot = snapshot_with_two_clusters()
    entry = snapshot.entries(CDS, ads=True)[0]
    assembled = ads_messages.delta_response(
        "sys-1", str(CDS), [ads_messages.delta_resource(entry.name, entry.version, str(CDS), entry.encoded)],
        ["m-0-gone"], "3",
    )
    expected = discovery_pb2.DeltaDiscoveryResponse(
        system_version_info="sys-1", type_url=str(CDS), nonce="3", removed_resources=["m-0-gone"],
        resources=[discovery_pb2.Resource(
            name=entry.name, version=entry.version,
            resource=any_pb2.Any(type_url=str(CDS), value=entry.encoded),
        )],
    )
    assert discovery_pb2.DeltaDiscoveryResponse.FromString(assembled) == expected
