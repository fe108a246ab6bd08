"""What each Envoy node runs: acknowledged, served and rejected versions per resource type.

REST xDS has no NACK: a node that was served version V and polls again still
reporting an older version has rejected V. This module turns polls into those
facts; it keeps state in memory and does no I/O (time is passed in).

ADS (gRPC) acknowledges explicitly: an ACK is recorded as a poll reporting the
version served (`observe`), a NACK with Envoy's message (`observe_rejection`).
An ADS stream sends nothing while idle, so a node with an open stream is live
for as long as the stream stays open (`stream_opened` / `stream_closed`), and is
forgotten `stale_after` seconds after its last stream closed.

Anyone who can reach the discovery endpoints can send a poll, so a poll is only
believed when what it reports could be true:

- a version this server never served to that node (and, for a node it knows
  nothing about yet, never published) is ignored: it is neither an
  acknowledgement nor a rejection, and it does not keep the node live;
- a node holds a rollout (must acknowledge a weight) only for the types it has
  genuinely acknowledged, and only while it keeps polling (`stale_after`);
- memory is bounded: ids and clusters are capped in length by the caller
  (`NODE_ID_MAX_CHARS`), at most `max_nodes` nodes are kept (the least recently
  seen go first, nodes that never acknowledged anything before those that did),
  and a node silent for `stale_after` is forgotten.

Several replicas: every replica hands its nodes' meaningful changes out
(`take_shared`, written to the database in batches by node_sharing.py) and takes
the other replicas' nodes in (`replace_remote`). The questions a rollout and the
snapshot builder ask (`nodes_holding`, `acked_versions`, `all_nodes`) are answered
over both, each node counted once (where it was seen last), so "every live Envoy
runs this weight" counts the Envoys attached to any replica.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum

from controlplane.xds.envoy_errors import reason_of
from controlplane.xds.snapshot import ResourceType

MAX_REMEMBERED_REJECTIONS = 16
# Versions served to a node that it may still report: a node reports the last
# version it applied, which is among the last few served unless it rejected
# every one of them (then it is its acked version, kept apart).
MAX_REMEMBERED_SERVED = 8
# Envoy node ids are host or pod names (Istio's `sidecar~ip~pod.ns~ns.svc.cluster.local`
# is ~100 characters); longer ones are refused rather than cut, so two nodes never merge.
NODE_ID_MAX_CHARS = 512
NODE_CLUSTER_MAX_CHARS = 256
# Our versions are short hex digests; anything longer is not one of ours.
VERSION_MAX_CHARS = 128
DEFAULT_MAX_NODES = 4096
# Envoy's NACK messages list every problem found; the first kilobyte says what broke.
REJECTION_MESSAGE_MAX_CHARS = 1024


class Transport(StrEnum):
    """How a node last spoke to us."""

    REST = "rest"            # REST-JSON polls
    ADS = "ads"              # gRPC ADS, state of the world
    DELTA = "delta"          # gRPC ADS, incremental


class PollKind(StrEnum):
    FIRST = "first"          # the node has no version of this type yet (new or restarted)
    ACK = "ack"              # it runs what we served it last
    REJECT = "reject"        # it was served a version and still runs an older one
    STEADY = "steady"        # nothing new was served since its last poll
    UNKNOWN = "unknown"      # it reports a version it cannot have from us: ignored


class EvictionReason(StrEnum):
    STALE = "stale"          # silent for longer than stale_after
    CAPACITY = "capacity"    # max_nodes reached; the least recently seen went


@dataclass
class TypeState:
    acked_version: str = ""
    served_version: str = ""
    served_recent: list[str] = field(default_factory=list)
    rejected_versions: list[str] = field(default_factory=list)
    # Envoy's own message with the last NACK (ADS only: REST carries none).
    rejection_message: str = ""
    # Last poll that reported a genuine, non-empty version: the node holds rollouts
    # for this type only while this is recent.
    confirmed_at: float | None = None

    def possible_versions(self) -> tuple[str, ...]:
        """What the node may be running: a version served but not yet confirmed by its
        next poll may or may not be applied, so both it and the acknowledged one count."""
        if self.served_version and self.served_version != self.acked_version:
            return (self.acked_version, self.served_version)
        return (self.acked_version,)

    def could_report(self, version: str, *, published: bool, authenticated: bool) -> bool:
        """Whether a poll reporting `version` can be this node telling the truth (pure)."""
        if version == self.acked_version or version in self.served_recent:
            return True
        # A node we know nothing about (this process restarted, or the node was
        # forgotten while silent) may run what this process has published; so may an
        # authenticated node at any time (another replica behind the same xds_cluster
        # may have served it).
        return published and (authenticated or (not self.acked_version and not self.served_recent))

    def remember_served(self, version: str) -> None:
        if version in self.served_recent:
            self.served_recent.remove(version)
        self.served_recent.append(version)
        del self.served_recent[:-MAX_REMEMBERED_SERVED]


@dataclass
class NodeState:
    node_id: str
    cluster: str
    first_seen: float
    last_seen: float
    authenticated: bool = False
    types: dict[ResourceType, TypeState] = field(default_factory=dict)
    transport: Transport = Transport.REST
    # Open ADS streams: the node is live while one is open, though it sends nothing.
    streams: int = 0
    # The replica the node is attached to; "" for this one. Another replica's streams keep
    # no node live here: it re-announces its streaming nodes as confirmed while they stream.
    replica: str = ""

    def type_state(self, resource_type: ResourceType) -> TypeState:
        return self.types.setdefault(resource_type, TypeState())

    def holds(self, resource_type: ResourceType, *, now: float, stale_after: float) -> bool:
        """Whether this node must acknowledge `resource_type` changes before they count as applied."""
        state = self.types.get(resource_type)
        return (
            state is not None
            and bool(state.acked_version)
            and state.confirmed_at is not None
            and ((self.streams > 0 and not self.replica) or now - state.confirmed_at <= stale_after)
        )


@dataclass(frozen=True)
class PollOutcome:
    kind: PollKind
    rejected_version: str = ""
    ack_changed: bool = False


class NodeTracker:
    """Per-node acknowledgement state, bounded in count and forgotten after `stale_after` seconds."""

    def __init__(
        self, *, stale_after: float, max_nodes: int = DEFAULT_MAX_NODES,
        on_evict: Callable[[EvictionReason], None] | None = None,
        on_ack: Callable[[], None] | None = None,
    ) -> None:
        self.stale_after = stale_after
        self.max_nodes = max_nodes
        self.on_evict = on_evict
        # Called when a node acknowledged, rejected or left (what other replicas wait for).
        self.on_ack = on_ack
        # Other replicas' nodes, by node id, as they last shared them (see node_sharing.py).
        self._remote: dict[str, NodeState] = {}
        # Nodes changed since they were last shared, and when each was last shared.
        self._dirty: set[str] = set()
        self._shared_at: dict[str, float] = {}
        # Two pools, each ordered by last_seen (oldest first): nodes that never
        # reported a genuine version are evicted before nodes that did, so a flood of
        # made-up node ids cannot push a real Envoy out.
        self._confirmed: OrderedDict[str, NodeState] = OrderedDict()
        self._provisional: OrderedDict[str, NodeState] = OrderedDict()

    def __len__(self) -> int:
        return len(self._confirmed) + len(self._provisional)

    def get(self, node_id: str) -> NodeState | None:
        return self._confirmed.get(node_id) or self._provisional.get(node_id)

    def all_nodes(self, *, now: float) -> Iterator[NodeState]:
        """This replica's nodes and the other replicas' (each node once: where seen last)."""
        self.expire(now=now)
        yield from self._merged(self._confirmed.values())
        yield from self._merged(self._provisional.values())
        yield from self._remote_only()

    def _merged(self, local: Iterable[NodeState]) -> Iterator[NodeState]:
        for node in local:
            other = self._remote.get(node.node_id)
            yield node if other is None or other.last_seen <= node.last_seen else other

    def _remote_only(self) -> Iterator[NodeState]:
        for node_id, node in self._remote.items():
            if self.get(node_id) is None:
                yield node

    # --- sharing with other replicas ---------------------------------------------

    def replace_remote(self, nodes: Iterable[NodeState]) -> None:
        """The other replicas' nodes, as they shared them last (replacing what was known)."""
        self._remote = {}
        for node in nodes:
            known = self._remote.get(node.node_id)
            if known is None or known.last_seen < node.last_seen:
                self._remote[node.node_id] = node

    def take_shared(self, *, now: float, heartbeat: float) -> list[NodeState]:
        """The nodes to share now: those changed since last shared, and live ones not shared
        for `heartbeat` seconds (others drop a node they have not heard of for `stale_after`)."""
        self.expire(now=now)
        chosen = []
        for pool in (self._confirmed, self._provisional):
            for node in pool.values():
                if node.node_id in self._dirty or (
                    self.is_live(node, now=now) and now - self._shared_at.get(node.node_id, 0.0) >= heartbeat
                ):
                    chosen.append(node)
                    self._shared_at[node.node_id] = now
        self._dirty.clear()
        return chosen

    def reshare(self, node_ids: Iterable[str]) -> None:
        """These nodes were taken but not written: take them again next time."""
        self._dirty.update(node_ids)

    def _changed(self, node: NodeState, *, acked: bool = False) -> None:
        self._dirty.add(node.node_id)
        if acked and self.on_ack is not None:
            self.on_ack()

    def observe(
        self, node_id: str, cluster: str, resource_type: ResourceType, version_info: str, *,
        now: float, published: bool = False, authenticated: bool = False,
        transport: Transport = Transport.REST,
    ) -> PollOutcome:
        """Record one poll (or ADS request). `published`: this process published `version_info`
        for this type."""
        self.expire(now=now)
        node = self.get(node_id) or self._add(node_id, cluster, now)
        state = node.type_state(resource_type)
        believable = state.could_report(version_info, published=published, authenticated=authenticated)
        if version_info and not believable:
            # Neither ack nor rejection, and not a sign of life: a client making
            # versions up must not hold or steer a rollout, nor keep a dead node live.
            return PollOutcome(PollKind.UNKNOWN)
        node.last_seen = now
        node.cluster = cluster
        node.authenticated = authenticated
        node.transport = transport
        self._touch(node)
        changed = version_info != state.acked_version
        if changed or state.served_version:
            self._changed(node, acked=True)
        state.acked_version = version_info
        if not version_info:
            # A restarted Envoy starts over: what we served its predecessor says
            # nothing, and it can no longer report any of those versions.
            state.served_version = ""
            state.served_recent.clear()
            state.confirmed_at = None
            return PollOutcome(PollKind.FIRST, ack_changed=changed)
        state.confirmed_at = now
        self._confirm(node)
        served = state.served_version
        state.served_version = ""
        if served and version_info != served:
            if served not in state.rejected_versions:
                state.rejected_versions.append(served)
                del state.rejected_versions[:-MAX_REMEMBERED_REJECTIONS]
            return PollOutcome(PollKind.REJECT, rejected_version=served, ack_changed=changed)
        return PollOutcome(PollKind.ACK if served else PollKind.STEADY, ack_changed=changed)

    def explain_rejection(
        self, node_id: str, resource_type: ResourceType, version: str, message: str
    ) -> None:
        """Replace the message of a rejection of `version` the node reported (a fuller reason)."""
        node = self.get(node_id)
        if node is None:
            return
        state = node.type_state(resource_type)
        if state.rejected_versions and state.rejected_versions[-1] == version:
            state.rejection_message = clean_message(message)
            self._changed(node)

    def observe_rejection(
        self, node_id: str, resource_type: ResourceType, version: str, *, message: str, now: float
    ) -> bool:
        """An explicit NACK (ADS): the node rejected `version`, saying `message`, and keeps
        running what it ran. False when the node is not known (nothing recorded)."""
        node = self.get(node_id)
        if node is None:
            return False
        state = node.type_state(resource_type)
        if version and version not in state.rejected_versions:
            state.rejected_versions.append(version)
            del state.rejected_versions[:-MAX_REMEMBERED_REJECTIONS]
        state.rejection_message = clean_message(message)
        state.served_version = ""
        node.last_seen = now
        if state.acked_version:
            state.confirmed_at = now
        self._touch(node)
        self._changed(node, acked=True)
        return True

    def stream_opened(
        self, node_id: str, cluster: str, *, now: float, transport: Transport, authenticated: bool
    ) -> None:
        """An ADS stream for this (authorised) node opened: it is live until the stream closes."""
        self.expire(now=now)
        node = self.get(node_id) or self._add(node_id, cluster, now)
        for state in node.types.values():
            # What an earlier stream sent without an answer may have been lost with it: the
            # node reporting an older version on this one has not rejected it.
            state.served_version = ""
        node.streams += 1
        node.cluster, node.transport, node.authenticated = cluster, transport, authenticated
        node.last_seen = now
        self._touch(node)
        self._changed(node)

    def stream_closed(self, node_id: str, *, now: float) -> None:
        """An ADS stream ended: the node counts for `stale_after` more seconds, as after a poll."""
        node = self.get(node_id)
        if node is None:
            return
        node.streams = max(0, node.streams - 1)
        node.last_seen = now
        for state in node.types.values():
            if state.confirmed_at is not None:
                state.confirmed_at = now
        self._touch(node)
        self._changed(node, acked=True)

    def has_rejected(self, node_id: str, resource_type: ResourceType, version: str) -> bool:
        # Asked for every stream of every fan-out: looks, never creates a state.
        node = self.get(node_id)
        state = node.types.get(resource_type) if node is not None else None
        return state is not None and version in state.rejected_versions

    def record_served(
        self, node_id: str, resource_type: ResourceType, version: str, *, awaiting_ack: bool = True
    ) -> None:
        """`version` was sent to the node. `awaiting_ack=False` after an ignored poll: the
        sender may not be the node we know, so its next honest poll is no rejection."""
        node = self.get(node_id)
        if node is None:
            return
        state = node.type_state(resource_type)
        state.remember_served(version)
        if awaiting_ack and state.served_version != version:
            state.served_version = version
            self._changed(node)

    def is_live(self, node: NodeState, *, now: float) -> bool:
        """Whether the node holds rollouts for any type."""
        return any(node.holds(kind, now=now, stale_after=self.stale_after) for kind in node.types)

    def live_nodes(self, *, now: float) -> list[NodeState]:
        return [node for node in self.all_nodes(now=now) if self.is_live(node, now=now)]

    def nodes_holding(self, resource_type: ResourceType, *, now: float) -> list[NodeState]:
        """The nodes, of any replica, that must acknowledge a change of `resource_type` before
        it counts as applied."""
        self.expire(now=now)
        return [
            node for node in (*self._merged(self._confirmed.values()), *self._remote_only())
            if node.holds(resource_type, now=now, stale_after=self.stale_after)
        ]

    def acked_versions(self, resource_type: ResourceType, *, now: float) -> list[str]:
        """The version of `resource_type` each node that holds rollouts runs."""
        holding = self.nodes_holding(resource_type, now=now)
        return [node.type_state(resource_type).acked_version for node in holding]

    def expire(self, *, now: float) -> None:
        """Forget nodes silent for longer than stale_after (both pools are oldest first).

        A node with an open stream is not silent: it is seen now."""
        for pool in (self._confirmed, self._provisional):
            while pool:
                oldest = next(iter(pool.values()))
                if now - oldest.last_seen <= self.stale_after:
                    break
                if oldest.streams:
                    oldest.last_seen = now
                    pool.move_to_end(oldest.node_id)
                    continue
                pool.popitem(last=False)
                self._shared_at.pop(oldest.node_id, None)
                self._evicted(EvictionReason.STALE)

    def _add(self, node_id: str, cluster: str, now: float) -> NodeState:
        while len(self) >= self.max_nodes:
            self._evict_one()
            self._evicted(EvictionReason.CAPACITY)
        node = self._provisional[node_id] = NodeState(node_id, cluster, now, now)
        return node

    def _evict_one(self) -> None:
        """The least recently seen node without an open stream; if every node streams, the oldest."""
        for pool in (self._provisional, self._confirmed):
            idle = next((node_id for node_id, node in pool.items() if not node.streams), None)
            if idle is not None:
                del pool[idle]
                self._shared_at.pop(idle, None)
                return
        node_id, _node = (self._provisional or self._confirmed).popitem(last=False)
        self._shared_at.pop(node_id, None)

    def _touch(self, node: NodeState) -> None:
        pool = self._confirmed if node.node_id in self._confirmed else self._provisional
        pool.move_to_end(node.node_id)

    def _confirm(self, node: NodeState) -> None:
        if self._provisional.pop(node.node_id, None) is not None:
            self._confirmed[node.node_id] = node

    def _evicted(self, reason: EvictionReason) -> None:
        if self.on_evict is not None:
            self.on_evict(reason)


def clean_message(message: str) -> str:
    """Envoy's NACK message as one printable line of bounded length (it goes into logs and JSON)."""
    message = reason_of(message)
    printable = "".join(ch if ch.isprintable() else " " for ch in message[: REJECTION_MESSAGE_MAX_CHARS * 2])
    line = " ".join(printable.split())
    if len(line) > REJECTION_MESSAGE_MAX_CHARS:
        return line[: REJECTION_MESSAGE_MAX_CHARS - 1] + "…"
    return line
