"""A consistent, versioned set of xDS resources, built incrementally: purely computational, no I/O.

Every resource has its own content version (SHA-256 of its canonical JSON), and
each type's state-of-the-world version is derived from its resources' names and
versions. Serve `snapshot.versions[type]`, not the whole-snapshot `version`: a
weight change then changes only the RDS version, so Envoy keeps its listener and
clusters, and a restarted control plane that rebuilds the same state gives the
same versions (a REST 304, no ADS response at all).

Built incrementally (builder.py): a snapshot shares with the previous one every
resource of the models that did not change, with their versions and protobuf
bytes. The route configuration is one resource holding every model's routes, and
the runtime layer (RTDS) one resource holding every model's weights; the version
and bytes of each are assembled from per-model parts (`ModelRoutes`,
`ModelWeights`). A weight change changes only the runtime version.

A type's version is a hash of the sum (mod 2^256) of the hashes of its
(name, version) pairs: independent of order, updated by subtracting what left and
adding what came, and the same for the same state whatever the path to it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from typing import Any, Protocol

from controlplane.xds import proto, resources
from controlplane.xds.resources import ModelRoute, Resource

MODULUS = 1 << 256
_NO_LISTENER = resources.ListenerAddress("0.0.0.0", 0)
_DEFAULT_POLLING = resources.RdsPolling()


class ResourceType(StrEnum):
    """xDS resource types by their type URL (the `type_url` of a discovery request)."""

    LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
    CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
    ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
    ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
    RUNTIME = "type.googleapis.com/envoy.service.runtime.v3.Runtime"


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
    def runtime_prefix(self) -> str | None:
        """The prefix of the runtime keys these routes read their weights under (None: none)."""
        return resources.runtime_prefix(self.routes)

    @cached_property
    def routed_clusters(self) -> frozenset[str]:
        """Clusters these routes send traffic or mirror copies to."""
        names: set[str] = set()
        for route in self.routes:
            names.update(cluster for cluster, _ in traffic_targets(route))
            names.update(mirror_targets(route))
        return frozenset(names)


@dataclass(frozen=True, eq=False)
class RouteConfigEntry:
    """The one RouteConfiguration, assembled from every model's routes in name order."""

    parts: tuple[ModelRoutes, ...]
    total: int  # sum of the parts' digests
    resource_type: ResourceType = ResourceType.ROUTE
    name: str = resources.ROUTE_CONFIG_NAME

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


@dataclass(frozen=True, eq=False)
class ModelWeights:
    """One model's arm weights in the runtime layer: built, hashed and encoded once."""

    model_name: str
    weights: tuple[tuple[str, int], ...]  # (runtime key, weight), as resources.model_weights

    @cached_property
    def version(self) -> str:
        return content_version([list(pair) for pair in self.weights])

    @cached_property
    def digest(self) -> int:
        return _pair_digest(self.model_name, self.version)

    @cached_property
    def encoded(self) -> bytes:
        """The weights as encoded `Struct.fields` entries, ready to be joined."""
        return proto.encode_layer_fields(self.weights)


@dataclass(frozen=True, eq=False)
class RuntimeEntry:
    """The one Runtime (RTDS) resource, assembled from every weighted model's part in name order."""

    parts: tuple[ModelWeights, ...]
    total: int  # sum of the parts' digests
    resource_type: ResourceType = ResourceType.RUNTIME
    name: str = resources.RUNTIME_LAYER_NAME

    @cached_property
    def version(self) -> str:
        return _version_of_sum(self.name, self.total)

    @cached_property
    def layer(self) -> Mapping[str, int]:
        return {key: weight for part in self.parts for key, weight in part.weights}

    @cached_property
    def body(self) -> Resource:
        return {"name": self.name, "layer": dict(self.layer)}

    @cached_property
    def encoded(self) -> bytes:
        return proto.encode_runtime(self.name, encoded_fields=b"".join(part.encoded for part in self.parts))


@dataclass(frozen=True)
class SnapshotView:
    """The resources of a snapshot as plain JSON tuples (what REST serves, what checks read)."""

    listeners: tuple[Resource, ...]
    clusters: tuple[Resource, ...]
    routes: tuple[Resource, ...]
    endpoints: tuple[Resource, ...]
    runtimes: tuple[Resource, ...] = ()


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
    # Only models whose routes read weights from the runtime layer have a part.
    model_weights: Mapping[str, ModelWeights]
    runtime: RuntimeEntry
    inputs: Mapping[str, ModelRoute]
    cluster_owner: Mapping[str, str]
    cluster_total: int
    routable: frozenset[str] | None = None
    retained: frozenset[str] = frozenset()
    # Models whose routes differ from the previous snapshot's (all of them for a first build).
    changed_models: frozenset[str] = frozenset()
    # Models whose weights in the runtime layer differ from the previous snapshot's.
    changed_weights: frozenset[str] = frozenset()
    # Clusters that may differ from those of the snapshot whose CDS version is
    # `base_cluster_version` (None: unknown, a first build).
    changed_clusters: frozenset[str] | None = None
    base_cluster_version: str | None = None
    # A key per model for "this shape of config was validated by Envoy" (names and weights left out).
    shapes: Mapping[str, str] = field(default_factory=dict)
    # Models whose routes leave out an arm Envoy does not have yet, or whose runtime part
    # keeps the weights of older routes some node runs: rebuilt at every build.
    held_back_models: frozenset[str] = frozenset()
    _sorted_clusters: tuple[ResourceEntry, ...] | None = None
    # What the listener was built from (for builder.subset).
    desired_listener: resources.ListenerAddress = _NO_LISTENER
    desired_polling: resources.RdsPolling = _DEFAULT_POLLING

    # --- what the discovery servers read -------------------------------------------

    def entries(self, resource_type: ResourceType, *, ads: bool = False) -> tuple[Entry, ...]:
        """The resources of one type, sorted by name, each with its own version and bytes."""
        if resource_type is ResourceType.LISTENER:
            return (self.ads_listener if ads else self.listener,)
        if resource_type is ResourceType.CLUSTER:
            return self.cluster_list
        if resource_type is ResourceType.ROUTE:
            return (self.route_config,)
        if resource_type is ResourceType.RUNTIME:
            return (self.runtime,)
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
            ResourceType.RUNTIME: _version_of_sum("runtime", _pair_digest(self.runtime.name,
                                                                         self.runtime.version)),
        }

    @cached_property
    def version(self) -> str:
        """Whole-snapshot version, for logs and "did anything change at all"."""
        return content_version([self.versions[kind] for kind in ResourceType] + [
            self.ads_versions[ResourceType.LISTENER]
        ])

    def weights_read(self, model_name: str) -> tuple[tuple[str, int], ...]:
        """The (runtime key, weight) pairs the model's routes read in this snapshot (none for a
        plain route); the model's part of the layer may also keep older routes' weights."""
        part = self.model_routes.get(model_name)
        weights = self.model_weights.get(model_name)
        if part is None or weights is None or part.runtime_prefix is None:
            return ()
        prefix = part.runtime_prefix
        return tuple(pair for pair in weights.weights if resources.weight_key_prefix(pair[0]) == prefix)

    # --- plain JSON views ----------------------------------------------------------

    @property
    def listeners(self) -> tuple[Resource, ...]:
        return (self.listener.body,)

    @property
    def clusters(self) -> tuple[Resource, ...]:
        return tuple(entry.body for entry in self.cluster_list)

    @property
    def routes(self) -> tuple[Resource, ...]:
        return (self.route_config.body,)

    @property
    def endpoints(self) -> tuple[Resource, ...]:
        return tuple(entry.body for entry in self.endpoint_entries)

    @property
    def runtimes(self) -> tuple[Resource, ...]:
        return (self.runtime.body,)

    def view(self) -> SnapshotView:
        return SnapshotView(self.listeners, self.clusters, self.routes, self.endpoints, self.runtimes)

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


def traffic_targets(route: Resource, layer: Mapping[str, int] | None = None) -> list[tuple[str, int]]:
    """(cluster, weight) that a route action sends real traffic to; a plain cluster is 1.

    `layer`: the runtime layer Envoy runs; a weighted cluster whose route has a
    `runtime_key_prefix` takes its weight from it, or from the route where the key
    is missing (as Envoy does). None reads the weights in the route alone.
    """
    action = route.get("route", {})
    if "cluster" in action:
        return [(str(action["cluster"]), 1)]
    split = action.get("weighted_clusters", {})
    targets = [(str(entry.get("name")), int(entry.get("weight", 0))) for entry in split.get("clusters", [])]
    prefix = split.get("runtime_key_prefix")
    if layer is None or not prefix:
        return targets
    return [(name, int(layer.get(resources.weight_key(prefix, name), weight))) for name, weight in targets]


def mirror_targets(route: Resource) -> list[str]:
    policies = route.get("route", {}).get("request_mirror_policies", [])
    return [str(policy.get("cluster")) for policy in policies]


def routed_clusters(snapshot: Snapshot) -> frozenset[str]:
    """Clusters the snapshot's routes send traffic or mirror copies to. Pure."""
    return frozenset().union(*(part.routed_clusters for part in snapshot.model_routes.values()))


def has_hosts(cluster: Resource) -> bool:
    """Whether a cluster has endpoints inline: without, Envoy answers 503 as for an unknown one."""
    assignment = cluster.get("load_assignment")
    return isinstance(assignment, dict) and bool(assignment.get("endpoints"))
