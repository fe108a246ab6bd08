"""A consistent, versioned set of xDS resources, built incrementally: purely computational, no I/O.

Every resource has its own content version (SHA-256 of its canonical JSON), and
each type's state-of-the-world version is derived from its resources' names and
versions. Serve `snapshot.versions[type]`, not the whole-snapshot `version`: a
weight change then changes only the RDS version, so Envoy keeps its listener and
clusters, and a restarted control plane that rebuilds the same state gives the
same versions (a REST 304, no ADS response at all).

Incremental: a snapshot is built from the previous one. Only the models whose
desired routing changed (or whose routes were held back, see below) get new
clusters and routes; every other model's resources, versions and protobuf bytes
are reused as they are. The route configuration is one resource holding every
model's routes; its version and its bytes are assembled from per-model parts, so
a weight change at 10,000 models costs one model's work plus a join.

A type's version is a hash of the sum (mod 2^256) of the hashes of its
(name, version) pairs: independent of order, updated by subtracting what left and
adding what came, and the same for the same state whatever the path to it.

Make before break (REST polls each type on its own clock, and an ADS Envoy
applies each type as it arrives):
- a new cluster is routed to only once every node has acknowledged a CDS version
  that contains it (`routable_clusters`);
- a cluster that is no longer desired (or lost its endpoints) stays in CDS with
  its last hosts while a route config some node still runs sends traffic to it
  (`still_routed`).
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import json
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from typing import Any, Protocol

from controlplane.xds import proto, resources
from controlplane.xds.resources import Arm, DesiredState, Endpoint, ModelRoute, Resource

_MODULUS = 1 << 256
_NO_LISTENER = resources.ListenerAddress("0.0.0.0", 0)
_DEFAULT_POLLING = resources.RdsPolling()


class ResourceType(StrEnum):
    """xDS resource types by their type URL (the `type_url` of a discovery request)."""

    LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
    CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
    ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
    ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"


class SnapshotInconsistent(ValueError):
    """A built snapshot would send traffic nowhere; `problems` says where and why."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def canonical_json(value: Any) -> str:
    """Sorted keys, compact separators: equal content gives equal text. Pure."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def content_version(value: Any) -> str:
    """SHA-256 hex of the canonical JSON: stable across restarts and processes. Pure."""
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


def resource_name(resource: Resource) -> str:
    """A resource's name (ClusterLoadAssignments are named by `cluster_name`)."""
    return str(resource.get("name", resource.get("cluster_name", "")))


def _pair_digest(name: str, version: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{name}\0{version}".encode()).digest(), "big")


def _version_of_sum(kind: str, total: int) -> str:
    return hashlib.sha256(f"{kind}\0{total:064x}".encode()).hexdigest()


class Entry(Protocol):
    """One named resource at one version; `encoded` is the resource message's bytes."""

    @property
    def resource_type(self) -> ResourceType: ...
    @property
    def name(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def body(self) -> Resource: ...
    @property
    def encoded(self) -> bytes: ...


@dataclass(frozen=True, eq=False)
class ResourceEntry:
    """One named resource at one version, with its protobuf bytes made once, when first asked."""

    resource_type: ResourceType
    name: str
    body: Resource

    @cached_property
    def version(self) -> str:
        return content_version(self.body)

    @cached_property
    def digest(self) -> int:
        return _pair_digest(self.name, self.version)

    @cached_property
    def encoded(self) -> bytes:
        """The serialised resource message (a Cluster, a Listener...), not wrapped in an Any."""
        return proto.encode_resource(str(self.resource_type), self.body)


@dataclass(frozen=True, eq=False)
class ModelRoutes:
    """One model's routes inside the route configuration: built, hashed and encoded once."""

    model_name: str
    routes: tuple[Resource, ...]
    # Some arm with endpoints was kept out because not every node has its cluster yet.
    held_back: bool = False

    @cached_property
    def version(self) -> str:
        return content_version(list(self.routes))

    @cached_property
    def digest(self) -> int:
        return _pair_digest(self.model_name, self.version)

    @cached_property
    def encoded(self) -> bytes:
        """The routes as encoded `VirtualHost.routes` fields, ready to be joined."""
        return proto.encode_virtual_host_routes(self.routes)

    @cached_property
    def routed_clusters(self) -> frozenset[str]:
        """Clusters these routes send traffic or mirror copies to."""
        names: set[str] = set()
        for route in self.routes:
            names.update(cluster for cluster, _ in _traffic_targets(route))
            names.update(_mirror_targets(route))
        return frozenset(names)


@dataclass(frozen=True, eq=False)
class RouteConfigEntry:
    """The one RouteConfiguration, assembled from every model's routes in name order."""

    parts: tuple[ModelRoutes, ...]
    total: int  # sum of the parts' digests
    resource_type: ResourceType = ResourceType.ROUTE
    name: str = resources.ROUTE_CONFIG_NAME
    _index: Mapping[str, int] | None = None

    @cached_property
    def index(self) -> Mapping[str, int]:
        """Where each model's part is (shared by route configs of the same models)."""
        if self._index is not None:
            return self._index
        return {part.model_name: position for position, part in enumerate(self.parts)}

    @cached_property
    def version(self) -> str:
        return _version_of_sum(self.name, self.total)

    @cached_property
    def body(self) -> Resource:
        routes = [route for part in self.parts for route in part.routes]
        return {
            "name": self.name,
            "virtual_hosts": [
                {"name": resources.VIRTUAL_HOST_NAME, "domains": ["*"], "routes": routes}
            ],
        }

    @cached_property
    def encoded(self) -> bytes:
        return proto.encode_route_configuration(
            self.name, virtual_host=resources.VIRTUAL_HOST_NAME, domains=("*",),
            encoded_routes=b"".join(part.encoded for part in self.parts),
        )


@dataclass(frozen=True)
class SnapshotView:
    """The resources of a snapshot as plain JSON tuples (what REST serves, what checks read)."""

    listeners: tuple[Resource, ...]
    clusters: tuple[Resource, ...]
    routes: tuple[Resource, ...]
    endpoints: tuple[Resource, ...]


@dataclass(frozen=True, eq=False)
class Snapshot:
    """An internally consistent set of xDS resources, each with its own version.

    `listener` takes its routes over REST polls, `ads_listener` over ADS; every
    other resource is the same for both transports. The remaining fields are what
    the next incremental build needs.
    """

    listener: ResourceEntry
    ads_listener: ResourceEntry
    cluster_entries: Mapping[str, ResourceEntry]
    model_routes: Mapping[str, ModelRoutes]
    route_config: RouteConfigEntry
    inputs: Mapping[str, ModelRoute]
    cluster_owner: Mapping[str, str]
    cluster_total: int
    routable: frozenset[str] | None = None
    retained: frozenset[str] = frozenset()
    # Models whose routes differ from the previous snapshot's (all of them for a first build).
    changed_models: frozenset[str] = frozenset()
    # A key per model for "this shape of config was validated by Envoy" (names and weights left out).
    shapes: Mapping[str, str] = field(default_factory=dict)
    # Models whose routes leave out an arm Envoy does not have yet: rebuilt at every build.
    held_back_models: frozenset[str] = frozenset()
    _sorted_clusters: tuple[ResourceEntry, ...] | None = None
    # What the listener was built from (for `subset`).
    _desired_listener: resources.ListenerAddress = _NO_LISTENER
    _desired_polling: resources.RdsPolling = _DEFAULT_POLLING

    # --- what the discovery servers read -------------------------------------------

    def entries(self, resource_type: ResourceType, *, ads: bool = False) -> tuple[Entry, ...]:
        """The resources of one type, sorted by name, each with its own version and bytes."""
        if resource_type is ResourceType.LISTENER:
            return (self.ads_listener if ads else self.listener,)
        if resource_type is ResourceType.CLUSTER:
            return self.cluster_list
        if resource_type is ResourceType.ROUTE:
            return (self.route_config,)
        return self.endpoint_entries

    @cached_property
    def cluster_list(self) -> tuple[ResourceEntry, ...]:
        if self._sorted_clusters is not None:
            return self._sorted_clusters
        return tuple(self.cluster_entries[name] for name in sorted(self.cluster_entries))

    @cached_property
    def endpoint_entries(self) -> tuple[ResourceEntry, ...]:
        """EDS: each cluster's load assignment (Envoy needs none: the clusters are STATIC)."""
        return tuple(
            ResourceEntry(ResourceType.ENDPOINT, entry.name, entry.body["load_assignment"])
            for entry in self.cluster_list
        )

    @cached_property
    def versions(self) -> Mapping[ResourceType, str]:
        """Per-type versions: the ones to serve and to compare acks against."""
        return self._versions(self.listener)

    @cached_property
    def ads_versions(self) -> Mapping[ResourceType, str]:
        """The same for an Envoy on ADS: only the listener's version differs."""
        return self._versions(self.ads_listener)

    def _versions(self, listener: ResourceEntry) -> Mapping[ResourceType, str]:
        clusters = _version_of_sum("clusters", self.cluster_total)
        return {
            ResourceType.LISTENER: _version_of_sum("listeners", listener.digest),
            ResourceType.CLUSTER: clusters,
            ResourceType.ROUTE: _version_of_sum("routes", _pair_digest(self.route_config.name,
                                                                      self.route_config.version)),
            # Endpoints are a function of the clusters (inline load assignments).
            ResourceType.ENDPOINT: _version_of_sum("endpoints", int(clusters, 16)),
        }

    @cached_property
    def version(self) -> str:
        """Whole-snapshot version, for logs and "did anything change at all"."""
        return content_version([self.versions[kind] for kind in ResourceType] + [
            self.ads_versions[ResourceType.LISTENER]
        ])

    # --- plain JSON views ----------------------------------------------------------

    @property
    def listeners(self) -> tuple[Resource, ...]:
        return (self.listener.body,)

    @property
    def ads_listeners(self) -> tuple[Resource, ...]:
        return (self.ads_listener.body,)

    @property
    def clusters(self) -> tuple[Resource, ...]:
        return tuple(entry.body for entry in self.cluster_list)

    @property
    def routes(self) -> tuple[Resource, ...]:
        return (self.route_config.body,)

    @property
    def endpoints(self) -> tuple[Resource, ...]:
        return tuple(entry.body for entry in self.endpoint_entries)

    def view(self) -> SnapshotView:
        return SnapshotView(self.listeners, self.clusters, self.routes, self.endpoints)

    def resources(self, resource_type: ResourceType, *, ads: bool = False) -> tuple[Resource, ...]:
        return tuple(entry.body for entry in self.entries(resource_type, ads=ads))

    def discovery_response(
        self, resource_type: ResourceType, resource_names: Collection[str] = ()
    ) -> dict[str, Any]:
        """The REST DiscoveryResponse body for one type. Pure.

        LDS and CDS are wildcard (state of the world: a missing cluster is removed);
        RDS and EDS polls name what they want, so only those are returned.
        """
        chosen = [
            entry.body
            for entry in self.entries(resource_type)
            if not resource_names or entry.name in resource_names
        ]
        version = self.versions[resource_type]
        return {
            "version_info": version,
            "type_url": str(resource_type),
            "resources": [{"@type": str(resource_type), **resource} for resource in chosen],
            "nonce": version[:12],  # REST ignores it; kept for humans reading a dump
        }

    def subset(self, model_names: Iterable[str]) -> Snapshot:
        """A snapshot of only these models (same listener, same gating): to validate them alone."""
        chosen = tuple(self.inputs[name] for name in sorted(set(model_names)) if name in self.inputs)
        desired = DesiredState(self._desired_listener, chosen, self._desired_polling)
        return build_snapshot(desired, routable_clusters=self.routable)


# --- checks on plain JSON ---------------------------------------------------------


def _route_entries(view: SnapshotView | Snapshot) -> Iterator[tuple[str, Resource]]:
    """(route config / route name, route) for every route in the snapshot."""
    for config in view.routes:
        for host in config.get("virtual_hosts", []):
            for route in host.get("routes", []):
                yield f"{config.get('name')}/{route.get('name', '?')}", route


def _traffic_targets(route: Resource) -> list[tuple[str, int]]:
    """(cluster, weight) that a route action sends real traffic to; a plain cluster is 1."""
    action = route.get("route", {})
    if "cluster" in action:
        return [(str(action["cluster"]), 1)]
    weighted = action.get("weighted_clusters", {}).get("clusters", [])
    return [(str(entry.get("name")), int(entry.get("weight", 0))) for entry in weighted]


def _mirror_targets(route: Resource) -> list[str]:
    policies = route.get("route", {}).get("request_mirror_policies", [])
    return [str(policy.get("cluster")) for policy in policies]


def routed_clusters(snapshot: Snapshot) -> frozenset[str]:
    """Clusters the snapshot's routes send traffic or mirror copies to. Pure."""
    return frozenset().union(*(part.routed_clusters for part in snapshot.model_routes.values()))


def _endpoint_count(cluster: Resource, eds: Mapping[str, Resource]) -> int:
    assignment = cluster.get("load_assignment", eds.get(resource_name(cluster), {}))
    return sum(len(group.get("lb_endpoints", [])) for group in assignment.get("endpoints", []))


def _route_problems(name: str, route: Resource, endpoint_counts: Mapping[str, int]) -> list[str]:
    problems = []
    targets = _traffic_targets(route)
    if "weighted_clusters" in route.get("route", {}) and sum(weight for _, weight in targets) <= 0:
        problems.append(f"route {name}: weighted_clusters weights sum to 0 (Envoy rejects it)")
    for cluster, weight in targets:
        if cluster not in endpoint_counts:
            problems.append(f"route {name} sends traffic to cluster {cluster!r}, which is not in CDS")
        elif weight > 0 and endpoint_counts[cluster] == 0:
            problems.append(
                f"route {name} gives weight {weight} to cluster {cluster!r}, which has no endpoints"
            )
    for cluster in _mirror_targets(route):
        if cluster not in endpoint_counts:
            problems.append(f"route {name} mirrors to cluster {cluster!r}, which is not in CDS")
    return problems


def _rds_names(listener: Resource) -> Iterator[str]:
    for chain in listener.get("filter_chains", []):
        for network_filter in chain.get("filters", []):
            rds = network_filter.get("typed_config", {}).get("rds")
            if rds is not None:
                yield str(rds.get("route_config_name"))


def check_consistency(view: SnapshotView | Snapshot) -> list[str]:
    """Every problem that would make Envoy drop or misroute traffic; empty if none. Pure.

    Envoy accepts a route to a cluster it does not know over RDS and answers 503, so
    these references must be checked before publishing. This is the whole-snapshot
    check; the incremental builder checks each rebuilt model the same way.
    """
    problems = []
    for kind, items in (("listener", view.listeners), ("cluster", view.clusters),
                        ("route", view.routes), ("endpoint", view.endpoints)):
        counts = Counter(resource_name(resource) for resource in items)
        problems += [f"{kind} {name!r} appears {n} times" for name, n in counts.items() if n > 1]
    route_configs = {resource_name(config) for config in view.routes}
    problems += [
        f"listener {resource_name(listener)!r} wants route config {name!r}, which is missing"
        for listener in view.listeners
        for name in _rds_names(listener)
        if name not in route_configs
    ]
    eds = {resource_name(assignment): assignment for assignment in view.endpoints}
    endpoint_counts = {resource_name(cluster): _endpoint_count(cluster, eds) for cluster in view.clusters}
    for name, route in _route_entries(view):
        problems += _route_problems(name, route, endpoint_counts)
    for assignment in view.endpoints:
        if resource_name(assignment) not in endpoint_counts:
            problems.append(f"endpoints for {resource_name(assignment)!r}, which is not a cluster")
    return problems


# --- the incremental builder --------------------------------------------------------


def _has_endpoints(cluster: Resource) -> bool:
    return bool(cluster.get("load_assignment", {}).get("endpoints"))


def _is_held_back(model: ModelRoute, routable: frozenset[str] | None) -> bool:
    return routable is not None and any(
        arm.endpoints and model.cluster(arm) not in routable for arm in model.arms
    )


_SHAPE_ENDPOINT = (Endpoint("127.0.0.1", 1),)


def _shape(model: ModelRoute, routable: frozenset[str] | None) -> str:
    """What Envoy's validation of this model's config depends on, with names and weights left out.

    Models differ in names (checked characters only), versions (sanitised into
    cluster names), weights and endpoint addresses; none of those changes whether
    Envoy accepts the config. Header matches and mirroring do, so they stay.
    """

    def arm(original: Arm, label: str) -> Arm:
        return Arm(label, 1 if original.weight else 0, _SHAPE_ENDPOINT if original.endpoints else ())

    serving = tuple(
        bool(a.endpoints) and (routable is None or model.cluster(a) in routable) for a in model.arms
    )
    shaped = dataclasses.replace(
        model, model_name="model", stable=arm(model.stable, "stable"),
        canary=None if model.canary is None else arm(model.canary, "canary"),
    )
    routes = resources.model_routes(shaped)
    return content_version([serving, [_without_weights(route) for route in routes]])


def _without_weights(route: Resource) -> Resource:
    action = route.get("route")
    if not isinstance(action, dict) or "weighted_clusters" not in action:
        return route
    names = [str(c.get("name")) for c in action["weighted_clusters"].get("clusters", [])]
    return {**route, "route": {**action, "weighted_clusters": {"clusters": names}}}


@dataclass
class _Build:
    """The mutable state of one incremental build (local to build_snapshot)."""

    clusters: dict[str, ResourceEntry]
    owner: dict[str, str]
    parts: dict[str, ModelRoutes]
    shapes: dict[str, str]
    cluster_total: int
    # Clusters that left their model or lost their hosts: (entry as it was, owning model).
    candidates: dict[str, tuple[ResourceEntry, str]] = field(default_factory=dict)
    retained: set[str] = field(default_factory=set)
    changed: set[str] = field(default_factory=set)
    rebuilt: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)

    def put_cluster(self, entry: ResourceEntry, model_name: str) -> None:
        old = self.clusters.get(entry.name)
        if old is not None:
            self.cluster_total -= old.digest
        self.clusters[entry.name] = entry
        self.owner[entry.name] = model_name
        self.cluster_total += entry.digest

    def drop_cluster(self, name: str) -> None:
        old = self.clusters.pop(name, None)
        if old is not None:
            self.cluster_total -= old.digest
            self.owner.pop(name, None)

    def consider(self, name: str) -> None:
        """Decide about `name` after the models are rebuilt (it may have to stay)."""
        entry = self.clusters.get(name)
        if entry is not None and name not in self.candidates:
            self.candidates[name] = (entry, self.owner.get(name, ""))


def _cluster_entry(model: ModelRoute, arm: Arm, previous: ResourceEntry | None) -> ResourceEntry:
    body = resources.cluster(model, arm)
    if previous is not None and previous.body == body:
        return previous  # same hosts: keep its version and bytes
    return ResourceEntry(ResourceType.CLUSTER, str(body["name"]), body)


def _rebuild_model(
    build: _Build, model: ModelRoute, *, old: ModelRoute | None, previous: Snapshot | None,
    routable: frozenset[str] | None,
) -> None:
    name = model.model_name
    build.rebuilt.add(name)
    wanted = {model.cluster(arm): arm for arm in model.arms}
    if old is not None:
        for arm in old.arms:
            if old.cluster(arm) not in wanted:
                build.consider(old.cluster(arm))
    for cluster, arm in wanted.items():
        before = build.clusters.get(cluster)
        entry = _cluster_entry(model, arm, before)
        if before is not None and _has_endpoints(before.body) and not _has_endpoints(entry.body):
            build.consider(cluster)  # it may have to keep its hosts while routed to
        build.put_cluster(entry, name)
    part = ModelRoutes(name, tuple(resources.model_routes(model, routable=routable)),
                       held_back=_is_held_back(model, routable))
    prior = previous.model_routes.get(name) if previous is not None else None
    if prior is not None and prior.version == part.version:
        if prior.held_back == part.held_back:
            part = prior  # same routes: keep its bytes
    else:
        build.changed.add(name)
    build.parts[name] = part
    build.shapes[name] = _shape(model, routable)


def _remove_model(build: _Build, old: ModelRoute) -> None:
    for arm in old.arms:
        build.consider(old.cluster(arm))
    build.parts.pop(old.model_name, None)
    build.shapes.pop(old.model_name, None)
    build.changed.add(old.model_name)


def _settle(
    build: _Build, inputs: Mapping[str, ModelRoute], still_routed: Callable[[str], bool] | None
) -> None:
    """Each cluster that left (or lost its hosts) stays, with its last hosts, while routed to."""
    for cluster, (before, owner) in build.candidates.items():
        model = inputs.get(owner)
        arm = None if model is None else next((a for a in model.arms if model.cluster(a) == cluster), None)
        routed = still_routed is not None and still_routed(cluster)
        if model is not None and arm is not None and (arm.endpoints or not routed or not
                                                        _has_endpoints(before.body)):
            build.put_cluster(_cluster_entry(model, arm, build.clusters.get(cluster)), owner)
        elif routed:
            build.put_cluster(before, owner)
            build.retained.add(cluster)
        else:
            build.drop_cluster(cluster)


def _check_part(build: _Build, part: ModelRoutes) -> None:
    counts = {
        cluster: _endpoint_count(build.clusters[cluster].body, {})
        for cluster in part.routed_clusters
        if cluster in build.clusters
    }
    for route in part.routes:
        build.problems += _route_problems(
            f"{resources.ROUTE_CONFIG_NAME}/{route.get('name', '?')}", route, counts
        )


def _routable_only_grew(previous: Snapshot | None, routable: frozenset[str] | None) -> bool:
    """Whether every cluster routable before still is (then unchanged, not held back models stay)."""
    if previous is None:
        return False
    if routable is previous.routable or routable is None:
        return True
    return previous.routable is not None and previous.routable <= routable


def _listeners(desired: DesiredState, previous: Snapshot | None) -> tuple[ResourceEntry, ResourceEntry]:
    body = resources.listener(desired)
    if previous is not None and previous.listener.body == body:
        return previous.listener, previous.ads_listener
    return (
        ResourceEntry(ResourceType.LISTENER, resources.LISTENER_NAME, body),
        ResourceEntry(ResourceType.LISTENER, resources.LISTENER_NAME, resources.listener(desired, ads=True)),
    )


def _route_config(
    build: _Build, inputs: Mapping[str, ModelRoute], previous: Snapshot | None
) -> RouteConfigEntry:
    if previous is None:
        ordered = tuple(build.parts[name] for name in sorted(inputs))
        return RouteConfigEntry(ordered, sum(part.digest for part in ordered) % _MODULUS)
    prior = previous.route_config
    if not build.changed:
        return prior
    parts = list(prior.parts)
    total = prior.total
    moved = False
    for name in sorted(build.changed):
        index = prior.index.get(name) if not moved else None
        if index is None:
            # Added or removed: find its place by name (the parts stay in name order).
            index = bisect.bisect_left(parts, name, key=lambda part: part.model_name)
            moved = True
        present = index < len(parts) and parts[index].model_name == name
        if present:
            total -= parts[index].digest
        if name in build.parts:
            total += build.parts[name].digest
            if present:
                parts[index] = build.parts[name]
            else:
                parts.insert(index, build.parts[name])
                moved = True
        elif present:
            del parts[index]
            moved = True
    return RouteConfigEntry(tuple(parts), total % _MODULUS, _index=None if moved else prior.index)


def build_snapshot(
    desired: DesiredState,
    *,
    routable_clusters: frozenset[str] | None = None,
    still_routed: Callable[[str], bool] | None = None,
    previous: Snapshot | None = None,
    changed_models: Collection[str] | None = None,
) -> Snapshot:
    """The whole config for `desired`, checked; raises SnapshotInconsistent. Pure.

    `routable_clusters`: clusters every live node has acknowledged in CDS; routes
    name no other (None: no gating, e.g. for validation or a restart that restores
    what Envoy already runs). `still_routed(cluster)`: whether a route config some
    node still runs sends traffic to a cluster; such a cluster is kept (with its
    last hosts) after it stopped being desired. `previous`: the snapshot to build
    on; only models whose routing changed (or whose routes were held back) are
    rebuilt. `changed_models`: the only models that may differ from `previous`'s
    (a caller that tracks its changes saves a pass over every model); None
    compares every model, by identity first, then by equality.
    """
    build = _Build(
        clusters=dict(previous.cluster_entries) if previous else {},
        owner=dict(previous.cluster_owner) if previous else {},
        parts=dict(previous.model_routes) if previous else {},
        shapes=dict(previous.shapes) if previous else {},
        cluster_total=previous.cluster_total if previous else 0,
    )
    old_inputs: Mapping[str, ModelRoute] = previous.inputs if previous else {}
    only_grew = _routable_only_grew(previous, routable_clusters)
    if previous is not None and changed_models is not None and only_grew:
        inputs = dict(old_inputs)
        wanted = desired.by_name
        for name in set(changed_models) | previous.held_back_models:
            model = wanted.get(name)
            if model is not None:
                inputs[name] = model
            elif name in inputs:
                del inputs[name]
        candidates: Iterable[str] = set(changed_models) | previous.held_back_models
        removed = [name for name in candidates if name in old_inputs and name not in inputs]
    else:
        inputs = dict(desired.by_name)
        candidates = inputs
        removed = [name for name in old_inputs if name not in inputs]
    for name in candidates:
        model = inputs.get(name)
        if model is None:
            continue
        old = old_inputs.get(name)
        if (old is model or old == model) and only_grew and not build.parts[name].held_back:
            continue
        _rebuild_model(build, model, old=old, previous=previous, routable=routable_clusters)
    for name in removed:
        _remove_model(build, old_inputs[name])
    if previous is not None:
        for cluster in previous.retained:
            build.candidates.setdefault(
                cluster, (previous.cluster_entries[cluster], previous.cluster_owner.get(cluster, ""))
            )
    _settle(build, inputs, still_routed)
    for name in build.changed:
        if name in build.parts:
            _check_part(build, build.parts[name])
    if build.problems:
        raise SnapshotInconsistent(build.problems)
    return _assemble(desired, build, inputs, previous, routable_clusters)


def _held_back_models(build: _Build, previous: Snapshot | None, rebuilt: Iterable[str]) -> frozenset[str]:
    held = set(previous.held_back_models) if previous is not None else set()
    for name in rebuilt:
        part = build.parts.get(name)
        if part is not None and part.held_back:
            held.add(name)
        else:
            held.discard(name)
    return frozenset(held)


def _assemble(
    desired: DesiredState, build: _Build, inputs: dict[str, ModelRoute], previous: Snapshot | None,
    routable: frozenset[str] | None,
) -> Snapshot:
    listener, ads_listener = _listeners(desired, previous)
    same_clusters = previous is not None and build.cluster_total % _MODULUS == previous.cluster_total \
        and build.clusters.keys() == previous.cluster_entries.keys()
    rebuilt = build.shapes.keys() if previous is None else (
        set(build.changed) | set(previous.held_back_models) | build.rebuilt
    )
    return Snapshot(
        listener=listener,
        ads_listener=ads_listener,
        cluster_entries=build.clusters,
        model_routes=build.parts,
        route_config=_route_config(build, inputs, previous),
        inputs=inputs,
        cluster_owner=build.owner,
        cluster_total=build.cluster_total % _MODULUS,
        routable=routable,
        retained=frozenset(build.retained),
        changed_models=frozenset(build.changed),
        shapes=build.shapes,
        held_back_models=_held_back_models(build, previous, rebuilt),
        _sorted_clusters=previous.cluster_list if same_clusters and previous else None,
        _desired_listener=desired.listener,
        _desired_polling=desired.rds_polling,
    )
