"""A consistent, content-versioned set of xDS resources: purely computational, no I/O.

Versions are per resource type: the SHA-256 hex of the canonical JSON of that
type's resources. Serve `snapshot.versions[type]`, not the whole-snapshot
`version`: a weight change then changes only the RDS version, so Envoy keeps its
listener and clusters instead of re-creating them, and a restarted control plane
that rebuilds the same state answers every poll with a 304.

Make before break (REST polls each type on its own clock, so the order in which a
node applies CDS and RDS is not ours to choose):
- a new cluster is routed to only once every node has acknowledged a CDS version
  that contains it (`build_snapshot(..., routable_clusters=...)`);
- a cluster that is no longer desired stays in CDS while a route config some node
  still runs sends traffic to it (`build_snapshot(..., retained_clusters=...)`,
  with `clusters_to_retain`).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property
from typing import Any

from controlplane.xds import proto, resources
from controlplane.xds.resources import DesiredState, Resource


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
    def encoded(self) -> bytes:
        """The serialised resource message (a Cluster, a Listener...), not wrapped in an Any."""
        return proto.encode_resource(str(self.resource_type), self.body)


@dataclass(frozen=True)
class Snapshot:
    """An internally consistent set of xDS resources, each type with its own version.

    `listeners` take their routes over REST polls, `ads_listeners` over ADS; every
    other resource is the same for both transports.
    """

    listeners: tuple[Resource, ...]
    clusters: tuple[Resource, ...]
    routes: tuple[Resource, ...]
    endpoints: tuple[Resource, ...]
    ads_listeners: tuple[Resource, ...] = ()

    def resources(self, resource_type: ResourceType, *, ads: bool = False) -> tuple[Resource, ...]:
        if ads and resource_type is ResourceType.LISTENER:
            return self.ads_listeners
        return {
            ResourceType.LISTENER: self.listeners,
            ResourceType.CLUSTER: self.clusters,
            ResourceType.ROUTE: self.routes,
            ResourceType.ENDPOINT: self.endpoints,
        }[resource_type]

    def entries(self, resource_type: ResourceType, *, ads: bool = False) -> tuple[ResourceEntry, ...]:
        """The resources of one type, sorted by name, each with its own version and bytes."""
        return self._entries[(resource_type, ads)]

    @cached_property
    def _entries(self) -> Mapping[tuple[ResourceType, bool], tuple[ResourceEntry, ...]]:
        return {
            (kind, ads): tuple(
                sorted(
                    (ResourceEntry(kind, resource_name(b), b) for b in self.resources(kind, ads=ads)),
                    key=lambda entry: entry.name,
                )
            )
            for kind in ResourceType
            for ads in (False, True)
        }

    @cached_property
    def versions(self) -> Mapping[ResourceType, str]:
        """Per-type content versions: the ones to serve and to compare acks against."""
        return {kind: content_version(self.resources(kind)) for kind in ResourceType}

    @cached_property
    def ads_versions(self) -> Mapping[ResourceType, str]:
        """The same for an Envoy on ADS: only the listener's version differs."""
        return {**self.versions, ResourceType.LISTENER: content_version(self.ads_listeners)}

    @cached_property
    def version(self) -> str:
        """Whole-snapshot content version, for logs and "did anything change at all".

        Derived from the per-type versions, so the resources are serialised once.
        """
        return content_version([self.versions[kind] for kind in ResourceType])

    def discovery_response(
        self, resource_type: ResourceType, resource_names: Collection[str] = ()
    ) -> dict[str, Any]:
        """The DiscoveryResponse body for one type. Pure.

        LDS and CDS are wildcard (state of the world: a missing cluster is removed);
        RDS and EDS polls name what they want, so only those are returned.
        """
        chosen = [
            resource
            for resource in self.resources(resource_type)
            if not resource_names or resource_name(resource) in resource_names
        ]
        version = self.versions[resource_type]
        return {
            "version_info": version,
            "type_url": str(resource_type),
            "resources": [{"@type": str(resource_type), **resource} for resource in chosen],
            "nonce": version[:12],  # REST ignores it; kept for humans reading a dump
        }


def _route_entries(snapshot: Snapshot) -> Iterator[tuple[str, Resource]]:
    """(route config / route name, route) for every route in the snapshot."""
    for config in snapshot.routes:
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
    names: set[str] = set()
    for _, route in _route_entries(snapshot):
        names.update(cluster for cluster, _ in _traffic_targets(route))
        names.update(_mirror_targets(route))
    return frozenset(names)


def _endpoint_counts(snapshot: Snapshot) -> dict[str, int]:
    """Hosts per cluster: inline `load_assignment` for STATIC, else the EDS resource."""
    eds = {resource_name(assignment): assignment for assignment in snapshot.endpoints}
    counts = {}
    for cluster in snapshot.clusters:
        name = resource_name(cluster)
        assignment = cluster.get("load_assignment", eds.get(name, {}))
        counts[name] = sum(len(group.get("lb_endpoints", [])) for group in assignment.get("endpoints", []))
    return counts


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


def _duplicate_problems(snapshot: Snapshot) -> list[str]:
    problems = []
    for kind in ResourceType:
        counts = Counter(resource_name(resource) for resource in snapshot.resources(kind))
        problems += [f"{kind.name.lower()} {name!r} appears {n} times" for name, n in counts.items() if n > 1]
    return problems


def _listener_problems(snapshot: Snapshot) -> list[str]:
    route_configs = {resource_name(config) for config in snapshot.routes}
    return [
        f"listener {resource_name(listener)!r} wants route config {name!r}, which is missing"
        for listener in snapshot.listeners
        for name in _rds_names(listener)
        if name not in route_configs
    ]


def check_consistency(snapshot: Snapshot) -> list[str]:
    """Every problem that would make Envoy drop or misroute traffic; empty if none. Pure.

    Envoy accepts a route to a cluster it does not know over RDS and answers 503, so
    these references must be checked here, before publishing.
    """
    problems = _duplicate_problems(snapshot) + _listener_problems(snapshot)
    endpoint_counts = _endpoint_counts(snapshot)
    for name, route in _route_entries(snapshot):
        problems += _route_problems(name, route, endpoint_counts)
    for assignment in snapshot.endpoints:
        if resource_name(assignment) not in endpoint_counts:
            problems.append(f"endpoints for {resource_name(assignment)!r}, which is not a cluster")
    return problems


def _has_endpoints(cluster: Resource) -> bool:
    return bool(cluster.get("load_assignment", {}).get("endpoints"))


def clusters_to_retain(previous: Snapshot, *, still_routed: frozenset[str]) -> tuple[Resource, ...]:
    """Clusters of `previous` that a route config still running on some node uses. Pure.

    `still_routed` is the union of `routed_clusters` over the route configs the
    nodes last acknowledged; pass the result as `build_snapshot(retained_clusters=)`.
    """
    return tuple(cluster for cluster in previous.clusters if resource_name(cluster) in still_routed)


def build_snapshot(
    desired: DesiredState,
    *,
    routable_clusters: frozenset[str] | None = None,
    retained_clusters: tuple[Resource, ...] = (),
) -> Snapshot:
    """The whole config for `desired`, checked; raises SnapshotInconsistent. Pure.

    `routable_clusters`: clusters every live node has acknowledged in CDS; routes
    name no other (None: no gating, e.g. for validation or a restart that restores
    what Envoy already runs). `retained_clusters`: no longer desired (or desired
    without endpoints) but still routed to by some node; kept in CDS.
    """
    retained_by_name = {resource_name(cluster): cluster for cluster in retained_clusters}
    merged = {resource_name(cluster): cluster for cluster in resources.clusters(desired)}
    for name, cluster in retained_by_name.items():
        # A desired cluster wins, except one that lost all its endpoints while a running
        # route still sends it traffic: it keeps its hosts until that route is gone.
        if name not in merged or (not _has_endpoints(merged[name]) and _has_endpoints(cluster)):
            merged[name] = cluster
    all_clusters = tuple(merged[name] for name in sorted(merged))
    snapshot = Snapshot(
        listeners=(resources.listener(desired),),
        ads_listeners=(resources.listener(desired, ads=True),),
        clusters=all_clusters,
        routes=(resources.route_configuration(desired, routable=routable_clusters),),
        endpoints=tuple(cluster["load_assignment"] for cluster in all_clusters),
    )
    problems = check_consistency(snapshot)
    if problems:
        raise SnapshotInconsistent(problems)
    return snapshot
