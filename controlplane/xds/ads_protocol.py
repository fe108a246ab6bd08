"""What one ADS stream owes its Envoy, state of the world and delta: purely computational, no I/O.

The gRPC layer (ads.py) feeds each request in and asks what to send; every
decision of the xDS protocol lives here, so it is tested as tables:

- ACK and NACK are matched by nonce. A request that answers an older response
  than the last one sent (a stale nonce) is ignored: Envoy will answer the newer
  one too. A NACK (`error_detail`) leaves the node on what it ran before, and the
  rejected version is not sent to it again; a later version is.
- At most one response per type is unacknowledged on a stream: the next version
  of a type waits for the ACK or NACK of the previous one, so a node is never two
  versions ahead of what the node table knows it was served.
- Make before break: types are sent in the order CDS, EDS, LDS, RTDS, RDS, and
  while a type has a change waiting for an ACK, the types after it wait too, so a
  route never reaches Envoy before the cluster it names, nor before the runtime
  keys it reads its weights from.
- A first request that already runs the current version (an Envoy reconnecting to
  a restarted control plane with the same state) gets no response: Envoy must not
  re-apply anything.
- State of the world: LDS and CDS are wildcard (an empty `resource_names`, or
  `*`); RDS and EDS send only the resources named.
- Delta: wildcard or named subscriptions changed by `resource_names_subscribe` /
  `_unsubscribe`; `initial_resource_versions` on reconnect so only resources that
  differ are sent; `removed_resources` for resources gone, and for names
  subscribed that do not exist (so Envoy does not wait for its fetch timeout).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from controlplane.xds.snapshot import ResourceType

WILDCARD = "*"
# Make before break: a cluster before the endpoints and routes that use it, the runtime
# layer before the routes that read their weights from it.
SEND_ORDER = (
    ResourceType.CLUSTER, ResourceType.ENDPOINT, ResourceType.LISTENER, ResourceType.RUNTIME,
    ResourceType.ROUTE,
)
# Types whose empty subscription means "everything" (the xDS "legacy wildcard").
WILDCARD_TYPES = frozenset({ResourceType.LISTENER, ResourceType.CLUSTER})
# Versions of a type a stream remembers as rejected; older ones may be sent again.
MAX_REMEMBERED_REJECTIONS = 16
# Shared diffs between two published versions of a type, for delta streams.
DIFF_CACHE_SIZE = 32

ResourceVersions = Mapping[str, str]
"""Resource name -> resource version, for one type at one published version."""


@dataclass(frozen=True, eq=False)
class PublishedType:
    """One type of the published snapshot as a stream sees it; shared by every stream.

    `version`: the type's state-of-the-world version (the delta `system_version_info`).
    """

    version: str
    resources: ResourceVersions


class RequestKind(StrEnum):
    INITIAL = "initial"      # the first request for this type on the stream
    ACK = "ack"              # applied the response whose nonce it carries
    NACK = "nack"            # rejected it (error_detail); runs what it ran before
    STALE = "stale"          # answers a response a newer one replaced: ignored
    SUBSCRIPTION = "subscription"  # delta: changes subscriptions, acknowledges nothing


def requested_names(resource_type: ResourceType, names: tuple[str, ...] | list[str]) -> frozenset[str]:
    """The names a state-of-the-world request asks for; `{"*"}` means every resource."""
    if not names and resource_type in WILDCARD_TYPES:
        return frozenset({WILDCARD})
    return frozenset(names)


def _remember_rejection(rejected: list[str], version: str) -> None:
    if version and version not in rejected:
        rejected.append(version)
        del rejected[:-MAX_REMEMBERED_REJECTIONS]


# --- state of the world ---------------------------------------------------------------


@dataclass(frozen=True)
class SotwRequest:
    """The fields of a DiscoveryRequest that matter; `error_message` is None without error_detail."""

    version_info: str
    resource_names: frozenset[str]
    response_nonce: str = ""
    error_message: str | None = None


@dataclass
class SotwTypeState:
    """One type on one stream: what the client asked for, runs, and was last sent."""

    requested: frozenset[str] = frozenset()
    client_version: str = ""
    # The names the client's version was sent for (a changed request needs a response).
    client_names: frozenset[str] = frozenset()
    sent_version: str = ""
    sent_names: frozenset[str] = frozenset()
    sent_nonce: str = ""
    awaiting_ack: bool = False
    rejected_versions: list[str] = field(default_factory=list)

    def receive(self, request: SotwRequest) -> RequestKind:
        """Take one request for this type; returns what it was."""
        if not self.sent_nonce:
            # Nothing sent on this stream yet: whatever nonce it carries is from another
            # stream (a restarted control plane); its version is what it runs.
            self.requested = self.client_names = request.resource_names
            self.client_version = request.version_info
            return RequestKind.INITIAL
        if request.response_nonce != self.sent_nonce:
            return RequestKind.STALE
        self.awaiting_ack = False
        self.requested = request.resource_names
        if request.error_message is None and request.version_info == self.sent_version:
            self.client_version, self.client_names = self.sent_version, self.sent_names
            return RequestKind.ACK
        # A NACK carries the version the node still runs (empty if it never applied one).
        self.client_version = request.version_info
        _remember_rejection(self.rejected_versions, self.sent_version)
        return RequestKind.NACK

    def due(self, current_version: str, *, rejected: bool = False) -> bool:
        """Whether a response must be sent now. `rejected`: the node table says the node
        rejected `current_version` (perhaps on an earlier stream)."""
        if self.awaiting_ack or not self.requested:
            return False
        if self.requested != self.client_names:
            return True  # the client asked for other names: it waits for an answer
        rejected = rejected or current_version in self.rejected_versions
        return current_version != self.client_version and not rejected

    def held_back(self, current_version: str, *, rejected: bool = False) -> bool:
        """A newer version waits for the ACK of the response in flight."""
        rejected = rejected or current_version in self.rejected_versions
        return self.awaiting_ack and current_version != self.sent_version and not rejected

    def sent(self, version: str, nonce: str) -> None:
        self.sent_version, self.sent_names, self.sent_nonce = version, self.requested, nonce
        self.awaiting_ack = True


RejectedCheck = Callable[[ResourceType, str], bool]


def _never_rejected(_kind: ResourceType, _version: str) -> bool:
    return False


def sotw_plan(
    states: Mapping[ResourceType, SotwTypeState], versions: Mapping[ResourceType, str],
    *, rejected: RejectedCheck = _never_rejected,
) -> list[ResourceType]:
    """The types to send now, in make-before-break order."""
    plan = []
    for kind in SEND_ORDER:
        state = states.get(kind)
        if state is None:
            continue
        was_rejected = rejected(kind, versions[kind])
        if state.due(versions[kind], rejected=was_rejected):
            plan.append(kind)
        elif state.held_back(versions[kind], rejected=was_rejected):
            break
    return plan


# --- delta ----------------------------------------------------------------------------


@dataclass(frozen=True)
class DeltaRequest:
    subscribe: tuple[str, ...] = ()
    unsubscribe: tuple[str, ...] = ()
    initial_versions: ResourceVersions = field(default_factory=dict)
    response_nonce: str = ""
    error_message: str | None = None


@dataclass(frozen=True)
class DeltaChanges:
    """One response's content: resources to send at the current version, names removed."""

    upserts: tuple[str, ...]
    removals: tuple[str, ...]
    # The whole type as the client holds it once it applies this (wildcard only): shared
    # by every stream in step, so a stream keeps a reference, not a copy.
    result: ResourceVersions | None = None


@dataclass(frozen=True)
class PendingDelta:
    nonce: str
    system_version: str
    changes: DeltaChanges
    current: ResourceVersions


class DiffCache:
    """Differences between two published versions of a type, computed once for every stream.

    Keyed by the identity of the two maps (each held here, so an id is not reused
    while its entry lives); a stream whose client holds exactly a published
    version reaches the next one with one lookup instead of a walk over every
    resource.
    """

    def __init__(self, size: int = DIFF_CACHE_SIZE) -> None:
        self.size = size
        self._diffs: OrderedDict[tuple[int, int], tuple[ResourceVersions, ResourceVersions, DeltaChanges]] = (
            OrderedDict()
        )

    def between(self, known: ResourceVersions, current: ResourceVersions) -> DeltaChanges:
        key = (id(known), id(current))
        hit = self._diffs.get(key)
        if hit is not None and hit[0] is known and hit[1] is current:
            self._diffs.move_to_end(key)
            return hit[2]
        changes = _wildcard_diff(known, current)
        self._diffs[key] = (known, current, changes)
        while len(self._diffs) > self.size:
            self._diffs.popitem(last=False)
        return changes


def _wildcard_diff(known: ResourceVersions, current: ResourceVersions) -> DeltaChanges:
    upserts = tuple(sorted(name for name, version in current.items() if known.get(name) != version))
    removals = tuple(sorted(name for name in known if name not in current))
    return DeltaChanges(upserts, removals, result=current)


@dataclass
class DeltaTypeState:
    """One type on one delta stream: subscriptions, what the client holds, the response in flight."""

    started: bool = False
    wildcard: bool = False
    names: set[str] = field(default_factory=set)
    # What the client holds (acknowledged, or declared on reconnect). May be a map shared
    # with other streams: replaced, never changed in place.
    known: ResourceVersions = field(default_factory=dict)
    # `known` is a published type's map (after a full wildcard sync), shared by reference.
    known_is_published: bool = False
    # Subscribed names that do not exist and that the client was told so.
    told_absent: set[str] = field(default_factory=set)
    pending: PendingDelta | None = None
    rejected_versions: list[str] = field(default_factory=list)
    # Names in the last rejected response: not offered again while that version is current,
    # unless subscribed again.
    withheld: set[str] = field(default_factory=set)
    # Whether this stream sent anything for this type yet.
    answered: bool = False

    def receive(self, resource_type: ResourceType, request: DeltaRequest) -> RequestKind:
        """Take one request for this type; returns what it was."""
        kind = self._answer(request)
        if not self.started:
            self.started = True
            kind = RequestKind.INITIAL
            # An empty first subscription to LDS or CDS is a wildcard one.
            self.wildcard = resource_type in WILDCARD_TYPES and not request.subscribe
            self.known = dict(request.initial_versions)
        for name in request.subscribe:
            if name == WILDCARD:
                self.wildcard = True
            else:
                self.names.add(name)
                self.withheld.discard(name)
        for name in request.unsubscribe:
            self._unsubscribe(name)
        return kind

    def _answer(self, request: DeltaRequest) -> RequestKind:
        pending = self.pending
        if not request.response_nonce or pending is None:
            return RequestKind.STALE if request.response_nonce else RequestKind.SUBSCRIPTION
        if request.response_nonce != pending.nonce:
            return RequestKind.STALE
        self.pending = None
        if request.error_message is not None:
            _remember_rejection(self.rejected_versions, pending.system_version)
            self.withheld = {*pending.changes.upserts, *pending.changes.removals}
            return RequestKind.NACK
        changes = pending.changes
        if changes.result is not None and self.wildcard:
            self.known, self.known_is_published = changes.result, True
        else:
            self.known_is_published = False
            known = {**self.known, **{name: pending.current[name] for name in changes.upserts}}
            for name in changes.removals:
                known.pop(name, None)
            self.known = known
        return RequestKind.ACK

    def _unsubscribe(self, name: str) -> None:
        if name == WILDCARD:
            self.wildcard = False
            self.known = {n: v for n, v in self.known.items() if n in self.names}
            self.known_is_published = False
            return
        self.names.discard(name)
        self.told_absent.discard(name)
        if not self.wildcard and name in self.known:
            # The client forgets what it no longer subscribes to.
            self.known = {n: v for n, v in self.known.items() if n != name}
            self.known_is_published = False

    def changes(
        self, current: PublishedType, *, rejected: bool = False, diffs: DiffCache | None = None
    ) -> DeltaChanges | None:
        """What to send now to bring the client to `current`; None when nothing (or it must wait).

        `rejected`: the node table says the node rejected `current.version` (perhaps on
        an earlier stream). Then nothing of that version is sent again, except to a
        named subscription the client has nothing for and that was not in the
        rejected response (or was subscribed again since): the client asked for it.
        """
        if not self.started or self.pending is not None:
            return None
        rejected = rejected or current.version in self.rejected_versions
        if self.wildcard:
            if rejected:
                return None
            # Only diffs between two published maps are worth sharing; a stream's own map is not.
            if diffs is not None and self.known_is_published:
                full = diffs.between(self.known, current.resources)
            else:
                full = _wildcard_diff(self.known, current.resources)
            # A client that knows nothing waits for a first answer even when there is
            # nothing to send (Envoy's initial fetch of CDS before any model exists).
            first = not self.answered and not self.known
            return full if full.upserts or full.removals or first else None
        resources, known = current.resources, self.known
        upserts = tuple(sorted(n for n in self.names if n in resources and known.get(n) != resources[n]))
        removals = tuple(sorted(
            n for n in self.names if n not in resources and (n in known or n not in self.told_absent)
        ))
        if rejected:
            upserts = tuple(n for n in upserts if n not in known and n not in self.withheld)
            removals = tuple(n for n in removals if n not in known and n not in self.withheld)
        if not upserts and not removals:
            return None
        return DeltaChanges(upserts, removals)

    def sent(self, nonce: str, current: PublishedType, changes: DeltaChanges) -> None:
        self.answered = True
        self.pending = PendingDelta(nonce, current.version, changes, current.resources)
        self.told_absent.update(n for n in changes.removals if n not in self.known)

    def held_back(self, system_version: str, *, rejected: bool = False) -> bool:
        rejected = rejected or system_version in self.rejected_versions
        return (
            self.pending is not None and self.pending.system_version != system_version and not rejected
        )


def delta_plan(
    states: Mapping[ResourceType, DeltaTypeState], current: Mapping[ResourceType, PublishedType],
    *, rejected: RejectedCheck = _never_rejected, diffs: Mapping[ResourceType, DiffCache] | None = None,
) -> list[tuple[ResourceType, DeltaChanges]]:
    """The responses to send now, in make-before-break order."""
    plan = []
    for kind in SEND_ORDER:
        state = states.get(kind)
        if state is None:
            continue
        published = current[kind]
        was_rejected = rejected(kind, published.version)
        changes = state.changes(
            published, rejected=was_rejected, diffs=None if diffs is None else diffs.get(kind)
        )
        if changes is not None:
            plan.append((kind, changes))
        elif state.held_back(published.version, rejected=was_rejected):
            break
    return plan
