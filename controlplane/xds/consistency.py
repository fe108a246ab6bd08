"""Whether a snapshot would send traffic nowhere: checks on plain JSON, purely computational.

Envoy accepts a route to a cluster it does not know over RDS (and answers 503),
so these references are checked before anything is published: by the builder for
each model it rebuilds, and here for a whole snapshot.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping

from controlplane.xds.resources import Resource
from controlplane.xds.snapshot import (
    Snapshot,
    SnapshotView,
    mirror_targets,
    resource_name,
    traffic_targets,
)


def _route_entries(view: SnapshotView | Snapshot) -> Iterator[tuple[str, Resource]]:
    """(route config / route name, route) for every route in the snapshot."""
    for config in view.routes:
        for host in config.get("virtual_hosts", []):
            for route in host.get("routes", []):
                yield f"{config.get('name')}/{route.get('name', '?')}", route


def endpoint_count(cluster: Resource, eds: Mapping[str, Resource]) -> int:
    assignment = cluster.get("load_assignment", eds.get(resource_name(cluster), {}))
    return sum(len(group.get("lb_endpoints", [])) for group in assignment.get("endpoints", []))


def route_problems(
    name: str, route: Resource, endpoint_counts: Mapping[str, int], layer: Mapping[str, int]
) -> list[str]:
    """`layer`: the runtime layer published with the route (weights read from it)."""
    problems = []
    weighted = "weighted_clusters" in route.get("route", {})
    if weighted and sum(weight for _, weight in traffic_targets(route)) <= 0:
        problems.append(f"route {name}: weighted_clusters weights sum to 0 (Envoy rejects it)")
    targets = traffic_targets(route, layer)
    if weighted and sum(weight for _, weight in targets) <= 0:
        # Envoy accepts the runtime layer, then fails every request of the route.
        problems.append(f"route {name}: its weights in the runtime layer sum to 0")
    for cluster, weight in targets:
        if cluster not in endpoint_counts:
            problems.append(f"route {name} sends traffic to cluster {cluster!r}, which is not in CDS")
        elif weight > 0 and endpoint_counts[cluster] == 0:
            problems.append(
                f"route {name} gives weight {weight} to cluster {cluster!r}, which has no endpoints"
            )
    for cluster in mirror_targets(route):
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
                        ("route", view.routes), ("endpoint", view.endpoints), ("runtime", view.runtimes)):
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
    endpoint_counts = {resource_name(cluster): endpoint_count(cluster, eds) for cluster in view.clusters}
    layer = {str(key): value for runtime in view.runtimes for key, value in runtime.get("layer", {}).items()}
    for name, route in _route_entries(view):
        problems += route_problems(name, route, endpoint_counts, layer)
    for assignment in view.endpoints:
        if resource_name(assignment) not in endpoint_counts:
            problems.append(f"endpoints for {resource_name(assignment)!r}, which is not a cluster")
    return problems
