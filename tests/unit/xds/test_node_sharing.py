"""Envoy nodes shared between replicas: what is handed out, how it ages, how views merge. Tables."""

from __future__ import annotations

from controlplane.xds.node_sharing import SharedNodeRow, _node_of, _row_of
from controlplane.xds.nodes import NodeState, NodeTracker, Transport
from controlplane.xds.snapshot import ResourceType

RDS = ResourceType.ROUTE
STALE = 30.0


def acked(tracker: NodeTracker, node_id: str, version: str, *, now: float) -> None:
    """A REST node served `version` and polling again with it: an acknowledgement."""
    tracker.observe(node_id, "gw", RDS, "", now=now)
    tracker.record_served(node_id, RDS, version)
    tracker.observe(node_id, "gw", RDS, version, now=now)


def shared(
    node: NodeState | None, *, replica: str, written_at: float, written_ago: float, read_at: float
) -> NodeState:
    """Through the table: written by another replica at `written_at` on its clock, read here
    `written_ago` seconds later at `read_at` on this one."""
    assert node is not None
    row = SharedNodeRow(**_row_of(node, replica=replica, now=written_at))
    return _node_of(row, written_ago=written_ago, now=read_at)


def test_an_acknowledgement_is_shared_at_once_and_a_steady_poll_only_with_the_heartbeat() -> None:
    woken: list[bool] = []
    tracker = NodeTracker(stale_after=STALE, on_ack=lambda: woken.append(True))
    acked(tracker, "envoy-1", "r1", now=100)
    assert woken, "an acknowledgement wakes the writer"
    assert [n.node_id for n in tracker.take_shared(now=100, heartbeat=5)] == ["envoy-1"]
    tracker.observe("envoy-1", "gw", RDS, "r1", now=101)  # steady: nothing new to tell
    assert tracker.take_shared(now=101, heartbeat=5) == []
    assert [n.node_id for n in tracker.take_shared(now=105, heartbeat=5)] == ["envoy-1"], "heartbeat"
    tracker.reshare(["envoy-1"])  # a write that failed is retried
    assert [n.node_id for n in tracker.take_shared(now=105.1, heartbeat=5)] == ["envoy-1"]


def test_a_node_of_another_replica_counts_here_while_its_replica_re_announces_it() -> None:
    on_b = NodeTracker(stale_after=STALE)
    acked(on_b, "envoy-b", "r7", now=50)
    on_a = NodeTracker(stale_after=STALE)
    # Clocks differ between processes: only ages cross (A's clock reads 1000 when B's reads 50).
    on_a.replace_remote(
        [shared(on_b.get("envoy-b"), replica="b", written_at=50, written_ago=0.2, read_at=1000)]
    )
    holding = on_a.nodes_holding(RDS, now=1000)
    assert [(n.node_id, n.replica) for n in holding] == [("envoy-b", "b")]
    assert on_a.acked_versions(RDS, now=1000) == ["r7"]
    assert on_a.nodes_holding(RDS, now=1000 + STALE + 1) == [], "not re-announced: ignored like a silent node"


def test_a_streaming_node_of_another_replica_is_live_only_while_re_announced() -> None:
    on_b = NodeTracker(stale_after=STALE)
    on_b.stream_opened("envoy-ads", "gw", now=0, transport=Transport.ADS, authenticated=False)
    on_b.record_served("envoy-ads", RDS, "r1")
    on_b.observe("envoy-ads", "gw", RDS, "r1", now=1, transport=Transport.ADS)
    # Shared long after its last request: a stream is live now, so it is shared as seen now.
    copy = shared(on_b.get("envoy-ads"), replica="b", written_at=400, written_ago=0, read_at=500)
    assert copy.streams == 1 and copy.last_seen == 500
    on_a = NodeTracker(stale_after=STALE)
    on_a.replace_remote([copy])
    assert len(on_a.nodes_holding(RDS, now=510)) == 1
    assert on_a.nodes_holding(RDS, now=500 + STALE + 1) == [], "B's stream does not keep it live on A"


def test_a_node_seen_by_two_replicas_counts_once_with_what_it_reported_last() -> None:
    here = NodeTracker(stale_after=STALE)
    acked(here, "envoy-rest", "old", now=10)
    elsewhere = NodeTracker(stale_after=STALE)
    acked(elsewhere, "envoy-rest", "new", now=12)
    here.replace_remote(
        [shared(elsewhere.get("envoy-rest"), replica="b", written_at=12, written_ago=0, read_at=12)]
    )
    assert here.acked_versions(RDS, now=12) == ["new"]
    assert [(n.node_id, n.replica) for n in here.all_nodes(now=12)] == [("envoy-rest", "b")]
    acked(here, "envoy-rest", "newer", now=13)
    assert here.acked_versions(RDS, now=13) == ["newer"]
    assert [n.replica for n in here.all_nodes(now=13)] == [""]
