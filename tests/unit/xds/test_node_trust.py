"""The node table believes only what a node can truly report, and stays bounded: tables."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from controlplane.xds.credentials import NodeCredentials, NodeTokenConfigError, Verdict
from controlplane.xds.nodes import EvictionReason, NodeTracker, PollKind
from controlplane.xds.schemas import XdsNode
from controlplane.xds.snapshot import ResourceType

RDS = ResourceType.ROUTE
CDS = ResourceType.CLUSTER


@dataclass(frozen=True)
class Serve:
    node: str
    version: str
    awaiting_ack: bool = True


@dataclass(frozen=True)
class Poll:
    node: str
    version: str
    now: float
    expected: PollKind
    published: bool = False


Step = Serve | Poll


def run(tracker: NodeTracker, steps: list[Step]) -> None:
    for index, step in enumerate(steps):
        if isinstance(step, Serve):
            tracker.record_served(step.node, RDS, step.version, awaiting_ack=step.awaiting_ack)
            continue
        kind = tracker.observe(step.node, "c", RDS, step.version, now=step.now, published=step.published).kind
        assert kind is step.expected, f"step {index}: {step}"


# (steps, nodes that must acknowledge routes at the end (now=10), their acked versions)
SCENARIOS: dict[str, tuple[list[Step], list[str], list[str]]] = {
    "a made-up version from a new node is ignored and holds nothing": (
        [Poll("intruder", "bogus", 0, PollKind.UNKNOWN), Poll("intruder", "bogus", 5, PollKind.UNKNOWN)],
        [], [],
    ),
    "a made-up version from a known node neither replaces its ack nor counts as a rejection": (
        [Serve("envoy", "v1"), Poll("envoy", "", 0, PollKind.FIRST), Serve("envoy", "v1"),
         Poll("envoy", "v1", 1, PollKind.ACK), Serve("envoy", "v2"),
         Poll("envoy", "bogus", 2, PollKind.UNKNOWN), Poll("envoy", "v2", 3, PollKind.ACK)],
        ["envoy"], ["v2"],
    ),
    "a version served to another node is not this node's to report": (
        [Poll("envoy", "", 0, PollKind.FIRST), Serve("envoy", "v7"),
         Poll("intruder", "v7", 1, PollKind.UNKNOWN)],
        [], [],
    ),
    "a node new to this process may report a version this process published (restart)": (
        [Poll("envoy", "v1", 0, PollKind.STEADY, published=True)],
        ["envoy"], ["v1"],
    ),
    "a known node may not fall back on a published version it was never served": (
        [Poll("envoy", "", 0, PollKind.FIRST), Serve("envoy", "v2"),
         Poll("envoy", "v1", 1, PollKind.UNKNOWN, published=True)],
        [], [],
    ),
    "a restarted Envoy cannot report what its predecessor was served": (
        [Poll("envoy", "v1", 0, PollKind.STEADY, published=True), Poll("envoy", "", 1, PollKind.FIRST),
         Serve("envoy", "v2"), Poll("envoy", "v1", 2, PollKind.UNKNOWN)],
        [], [],
    ),
    "what an ignored poll was sent is not awaited: the node's next honest poll is no rejection": (
        [Poll("envoy", "v1", 0, PollKind.STEADY, published=True), Poll("envoy", "bogus", 1, PollKind.UNKNOWN),
         Serve("envoy", "v2", awaiting_ack=False), Poll("envoy", "v1", 2, PollKind.STEADY),
         Poll("envoy", "v2", 3, PollKind.STEADY)],
        ["envoy"], ["v2"],
    ),
    "a genuine rejection still counts": (
        [Poll("envoy", "v1", 0, PollKind.STEADY, published=True), Serve("envoy", "v2"),
         Poll("envoy", "v1", 1, PollKind.REJECT)],
        ["envoy"], ["v1"],
    ),
    "a node that only ever polled without a version holds nothing": (
        [Poll("envoy", "", 0, PollKind.FIRST), Serve("envoy", "v1"), Poll("envoy", "", 5, PollKind.FIRST)],
        [], [],
    ),
}


@pytest.mark.parametrize("name", SCENARIOS)
def test_what_a_poll_proves(name: str) -> None:
    steps, holding, versions = SCENARIOS[name]
    tracker = NodeTracker(stale_after=30)
    run(tracker, steps)
    assert [node.node_id for node in tracker.nodes_holding(RDS, now=10)] == holding
    assert tracker.acked_versions(RDS, now=10) == versions


@pytest.mark.parametrize(
    ("polls_at", "now", "holds", "tracked"),
    [
        ((0.0,), 29.0, True, 1),
        ((0.0,), 31.0, False, 0),            # silent past stale_after: forgotten
        ((0.0, 20.0), 45.0, True, 1),        # each genuine poll renews it
    ],
)
def test_a_node_holds_rollouts_only_while_it_polls_and_is_forgotten_after_the_timeout(
    polls_at: tuple[float, ...], now: float, holds: bool, tracked: int
) -> None:
    evictions: list[EvictionReason] = []
    tracker = NodeTracker(stale_after=30, on_evict=evictions.append)
    for at in polls_at:
        tracker.observe("envoy", "c", RDS, "v1", now=at, published=True)
    assert bool(tracker.nodes_holding(RDS, now=now)) is holds
    assert len(tracker) == tracked
    assert evictions == [EvictionReason.STALE] * (1 - tracked)


def test_made_up_polls_do_not_keep_a_silent_node_live() -> None:
    tracker = NodeTracker(stale_after=30)
    tracker.observe("envoy", "c", RDS, "v1", now=0, published=True)
    for at in range(5, 60, 5):
        assert tracker.observe("envoy", "c", RDS, "bogus", now=at).kind is PollKind.UNKNOWN
    assert tracker.nodes_holding(RDS, now=60) == []


def test_holding_is_per_type() -> None:
    tracker = NodeTracker(stale_after=30)
    tracker.observe("envoy", "c", CDS, "c1", now=0, published=True)
    tracker.observe("envoy", "c", RDS, "bogus", now=0)
    assert [n.node_id for n in tracker.nodes_holding(CDS, now=1)] == ["envoy"]
    assert tracker.nodes_holding(RDS, now=1) == []


def test_at_capacity_nodes_that_never_acknowledged_go_first_then_the_least_recently_seen() -> None:
    evictions: list[EvictionReason] = []
    tracker = NodeTracker(stale_after=30, max_nodes=3, on_evict=evictions.append)
    tracker.observe("envoy-a", "c", RDS, "v1", now=0, published=True)
    tracker.observe("envoy-b", "c", RDS, "v1", now=1, published=True)
    for index in range(100):
        tracker.observe(f"intruder-{index}", "c", RDS, "bogus", now=2)
    assert len(tracker) == 3
    assert {n.node_id for n in tracker.nodes_holding(RDS, now=3)} == {"envoy-a", "envoy-b"}
    tracker.observe("envoy-a", "c", RDS, "v1", now=4)
    tracker.observe("envoy-c", "c", RDS, "v1", now=5, published=True)
    tracker.observe("envoy-d", "c", RDS, "v1", now=6, published=True)
    assert {n.node_id for n in tracker.all_nodes(now=7)} == {"envoy-a", "envoy-c", "envoy-d"}
    # 99 intruders while they arrived, the last one for envoy-c, envoy-b (least recently seen) for envoy-d.
    assert evictions == [EvictionReason.CAPACITY] * 101


def test_an_authenticated_node_may_report_any_published_version_an_open_one_only_what_it_was_served() -> None:
    tracker = NodeTracker(stale_after=30)
    for node, authenticated in (("token", True), ("open", False)):
        tracker.observe(node, "c", RDS, "", now=0, authenticated=authenticated)
        tracker.record_served(node, RDS, "v1")
        assert tracker.observe(node, "c", RDS, "v1", now=1, authenticated=authenticated).kind is PollKind.ACK
        # Another replica behind the same xds_cluster served v2 (same content, same version).
        outcome = tracker.observe(node, "c", RDS, "v2", now=2, published=True, authenticated=authenticated)
        assert outcome.kind is (PollKind.STEADY if authenticated else PollKind.UNKNOWN), node
    assert tracker.acked_versions(RDS, now=3) == ["v2", "v1"]


def test_node_documents_say_whether_the_node_authenticated() -> None:
    tracker = NodeTracker(stale_after=30)
    tracker.observe("envoy", "c", RDS, "", now=0, authenticated=True)
    tracker.observe("open", "c", RDS, "", now=0)
    documents = {n.node_id: XdsNode.of(n, live=False, wall_offset=0) for n in tracker.all_nodes(now=1)}
    assert (documents["envoy"].authenticated, documents["open"].authenticated) == (True, False)


TOKENS = NodeCredentials.parse("envoy-1:t-one, *:t-fleet")


@pytest.mark.parametrize(
    ("credentials", "header", "verdict", "node", "allowed"),
    [
        (NodeCredentials(), None, Verdict.OPEN, "anyone", True),
        (TOKENS, None, Verdict.MISSING, "envoy-1", False),
        # "-" is what Envoy's %ENVIRONMENT(...)% gives for an unset variable.
        (TOKENS, "Bearer -", Verdict.MISSING, "envoy-1", False),
        (TOKENS, "Basic t-one", Verdict.MISSING, "envoy-1", False),
        (TOKENS, "Bearer wrong", Verdict.UNKNOWN, "envoy-1", False),
        (TOKENS, "Bearer t-one", Verdict.ACCEPTED, "envoy-1", True),
        (TOKENS, "Bearer t-one", Verdict.ACCEPTED, "envoy-2", False),  # bound to its node id
        (TOKENS, "bearer t-fleet", Verdict.ACCEPTED, "envoy-2", True),
    ],
)
def test_node_tokens(
    credentials: NodeCredentials, header: str | None, verdict: Verdict, node: str, allowed: bool
) -> None:
    check = credentials.check(header)
    assert (check.verdict, check.allows(node)) == (verdict, allowed)


@pytest.mark.parametrize("spec", ["no-colon", ":token", "envoy:", "envoy:-"])
def test_malformed_node_token_settings_name_the_entry_not_the_secret(spec: str) -> None:
    with pytest.raises(NodeTokenConfigError, match="entry 1") as caught:
        NodeCredentials.parse(spec)
    assert "token" in str(caught.value) and "no-colon" not in str(caught.value)


def test_node_tokens_never_show_in_a_repr() -> None:
    assert "t-one" not in repr(TOKENS)
