"""What each Envoy node runs: acknowledged, served and rejected versions per resource type.

REST xDS has no NACK: a node that was served version V and polls again still
reporting an older version has rejected V. This module turns polls into those
facts; it keeps state in memory and does no I/O (time is passed in).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from controlplane.xds.snapshot import ResourceType

MAX_REMEMBERED_REJECTIONS = 16


class PollKind(StrEnum):
    FIRST = "first"          # the node has no version of this type yet (new or restarted)
    ACK = "ack"              # it runs what we served it last
    REJECT = "reject"        # it was served a version and still runs an older one
    STEADY = "steady"        # nothing new was served since its last poll


@dataclass
class TypeState:
    acked_version: str = ""
    served_version: str = ""
    rejected_versions: list[str] = field(default_factory=list)
    acked_at: float = 0.0


    def possible_versions(self) -> tuple[str, ...]:
        """What the node may be running: a version served but not yet confirmed by its
        next poll may or may not be applied, so both it and the acknowledged one count."""
        if self.served_version and self.served_version != self.acked_version:
            return (self.acked_version, self.served_version)
        return (self.acked_version,)


@dataclass
class NodeState:
    node_id: str
    cluster: str
    first_seen: float
    last_seen: float
    types: dict[ResourceType, TypeState] = field(default_factory=dict)

    def type_state(self, resource_type: ResourceType) -> TypeState:
        return self.types.setdefault(resource_type, TypeState())


@dataclass(frozen=True)
class PollOutcome:
    kind: PollKind
    rejected_version: str = ""
    ack_changed: bool = False


class NodeTracker:
    """Per-node acknowledgement state; a node not seen for `stale_after` seconds is not live."""

    def __init__(self, *, stale_after: float) -> None:
        self.stale_after = stale_after
        self.nodes: dict[str, NodeState] = {}

    def observe(
        self, node_id: str, cluster: str, resource_type: ResourceType, version_info: str, *, now: float
    ) -> PollOutcome:
        node = self.nodes.get(node_id)
        if node is None:
            node = self.nodes[node_id] = NodeState(node_id, cluster, now, now)
        node.last_seen = now
        state = node.type_state(resource_type)
        changed = version_info != state.acked_version
        if changed:
            state.acked_version = version_info
            state.acked_at = now
        if not version_info:
            # A restarted Envoy starts over; what we served its predecessor says nothing.
            state.served_version = ""
            return PollOutcome(PollKind.FIRST, ack_changed=changed)
        served = state.served_version
        if served and version_info != served:
            state.served_version = ""
            if served not in state.rejected_versions:
                state.rejected_versions.append(served)
                del state.rejected_versions[:-MAX_REMEMBERED_REJECTIONS]
            return PollOutcome(PollKind.REJECT, rejected_version=served, ack_changed=changed)
        kind = PollKind.ACK if served else PollKind.STEADY
        state.served_version = ""
        return PollOutcome(kind, ack_changed=changed)

    def has_rejected(self, node_id: str, resource_type: ResourceType, version: str) -> bool:
        node = self.nodes.get(node_id)
        return node is not None and version in node.type_state(resource_type).rejected_versions

    def record_served(self, node_id: str, resource_type: ResourceType, version: str) -> None:
        node = self.nodes.get(node_id)
        if node is not None:
            node.type_state(resource_type).served_version = version

    def is_live(self, node: NodeState, *, now: float) -> bool:
        return now - node.last_seen <= self.stale_after

    def live_nodes(self, *, now: float) -> list[NodeState]:
        return [node for node in self.nodes.values() if self.is_live(node, now=now)]

    def acked_versions(self, resource_type: ResourceType, *, now: float) -> list[str]:
        """The version of `resource_type` each live node runs (empty string: none yet)."""
        return [node.type_state(resource_type).acked_version for node in self.live_nodes(now=now)]
