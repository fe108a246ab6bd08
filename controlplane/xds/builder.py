"""Builds a snapshot from the desired state, on top of the previous one: purely computational, no I/O.

Only the models whose routing changed (or whose routes were held back until
Envoy has a cluster) get new clusters, routes and weights; every other model's
resources, versions and bytes are reused. A change of weights alone changes only
the runtime layer: the routes read the weights from it. A caller that knows which
models it changed says so (`changed_models`) and no pass over every model is made.

Make before break (REST polls each type on its own clock, and an ADS Envoy
applies each type as it arrives):
- a new cluster is routed to only once every node has acknowledged a CDS version
  that contains it (`routable_clusters`); a model left with no arm to route to
  meanwhile (prod switched to a version Envoy has no cluster for) keeps the routes
  the nodes run rather than answering 503 (`_stand_in`);
- each version of a model's routes reads its weights under its own runtime key
  prefix; the keys of routes some node still runs stay in the runtime layer with
  the weights they were published with (`running_routes`), so a node that has
  not taken new routes yet, or rejected them, keeps its whole last good split,
  and a weight for a new arm is read only by routes that name it (over ADS the
  runtime layer goes out before those routes, ads_protocol.SEND_ORDER);
- a cluster that is no longer desired (or lost its endpoints) stays in CDS with
  its last hosts while a route config some node still runs sends traffic to it
  (`still_routed`).
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from controlplane.xds import resources
from controlplane.xds.consistency import endpoint_count, route_problems
from controlplane.xds.resources import Arm, DesiredState, Endpoint, ModelRoute, Resource
from controlplane.xds.snapshot import (
    MODULUS,
    ModelRoutes,
    ModelWeights,
    ResourceEntry,
    ResourceType,
    RouteConfigEntry,
    RuntimeEntry,
    Snapshot,
    SnapshotInconsistent,
    content_version,
    has_hosts,
)


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
    weights: dict[str, ModelWeights]
    shapes: dict[str, str]
    cluster_total: int
    # Clusters that left their model or lost their hosts: (entry as it was, owning model).
    candidates: dict[str, tuple[ResourceEntry, str]] = field(default_factory=dict)
    retained: set[str] = field(default_factory=set)
    changed: set[str] = field(default_factory=set)
    weights_changed: set[str] = field(default_factory=set)
    # Models whose runtime part keeps the weights of older routes some node still runs.
    weights_kept: set[str] = field(default_factory=set)
    rebuilt: set[str] = field(default_factory=set)
    # Clusters put or dropped: what may differ from the previous snapshot's.
    touched: set[str] = field(default_factory=set)
    # Which of the maps above were copied from the previous snapshot (copy on first write).
    copied: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)

    def writable(self, field_name: str) -> dict[str, Any]:
        """The named map, copied from the previous snapshot's on the first write (never mutated)."""
        if field_name not in self.copied:
            setattr(self, field_name, dict(getattr(self, field_name)))
            self.copied.add(field_name)
        table: dict[str, Any] = getattr(self, field_name)
        return table

    def put_cluster(self, entry: ResourceEntry, model_name: str) -> None:
        old = self.clusters.get(entry.name)
        if old is entry and self.owner.get(entry.name) == model_name:
            return
        self.touched.add(entry.name)
        if old is not None:
            self.cluster_total -= old.digest
        self.writable("clusters")[entry.name] = entry
        self.writable("owner")[entry.name] = model_name
        self.cluster_total += entry.digest

    def drop_cluster(self, name: str) -> None:
        if name not in self.clusters:
            return
        self.touched.add(name)
        old = self.writable("clusters").pop(name)
        self.cluster_total -= old.digest
        self.writable("owner").pop(name, None)

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


RunningRoutes = Callable[[str], Iterable[ModelRoutes]]
"""model name -> the versions of its routes that some node may still run."""


def _rebuild_model(
    build: _Build, model: ModelRoute, *, old: ModelRoute | None, previous: Snapshot | None,
    routable: frozenset[str] | None, running_routes: RunningRoutes | None,
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
        if before is not None and has_hosts(before.body) and not has_hosts(entry.body):
            build.consider(cluster)  # it may have to keep its hosts while routed to
        build.put_cluster(entry, name)
    part = ModelRoutes(name, tuple(resources.model_routes(model, routable=routable)),
                       held_back=_is_held_back(model, routable))
    prior = previous.model_routes.get(name) if previous is not None else None
    stand_in = _stand_in(part, prior, running_routes)
    if stand_in is not None:
        part = prior = stand_in
    if prior is not None and prior.version == part.version:
        if prior.held_back == part.held_back:
            part = prior  # same routes: keep its bytes
    else:
        build.changed.add(name)
    if build.parts.get(name) is not part:
        build.writable("parts")[name] = part
    kept = _kept_weights(build, part, running_routes)
    if kept:
        build.weights_kept.add(name)
    if stand_in is not None:
        current = _weights_read(build, stand_in)
    else:
        current = resources.model_weights(model, routable=routable, routes=list(part.routes))
    _put_weights(build, name, current + kept)
    shape = _shape(model, routable)
    if build.shapes.get(name) != shape:
        build.writable("shapes")[name] = shape


def _stand_in(
    part: ModelRoutes, prior: ModelRoutes | None, running_routes: RunningRoutes | None
) -> ModelRoutes | None:
    """The routes nodes run, kept while the new ones are held back and would route nowhere.

    A prod switched to a version whose cluster Envoy does not have yet (a rollback to
    an archived version, a promotion without a canary) has no arm to route to until
    the cluster is acknowledged: its new routes would answer every request with the
    direct 503 for the time of a CDS round trip. The routes some node still runs send
    traffic to the clusters it has (kept with their hosts while routed to), so they
    stay, marked held back to be rebuilt once the new cluster is routable.
    """
    if not part.held_back or part.routed_clusters or prior is None or not prior.routed_clusters:
        return None
    if running_routes is None or all(r.version != prior.version for r in running_routes(part.model_name)):
        return None
    return prior if prior.held_back else ModelRoutes(prior.model_name, prior.routes, held_back=True)


def _weights_read(build: _Build, part: ModelRoutes) -> tuple[tuple[str, int], ...]:
    """The weights these (kept) routes read, as last published."""
    published = build.weights.get(part.model_name)
    if published is None or part.runtime_prefix is None:
        return ()
    return tuple(
        pair for pair in published.weights if resources.weight_key_prefix(pair[0]) == part.runtime_prefix
    )


def _kept_weights(
    build: _Build, part: ModelRoutes, running_routes: RunningRoutes | None
) -> tuple[tuple[str, int], ...]:
    """The weights of this model's older routes that some node still runs, as last published."""
    prior = build.weights.get(part.model_name)
    if prior is None or running_routes is None:
        return ()
    prefixes = {running.runtime_prefix for running in running_routes(part.model_name)}
    prefixes.discard(part.runtime_prefix)
    prefixes.discard(None)
    return tuple(sorted(
        (key, weight) for key, weight in prior.weights if resources.weight_key_prefix(key) in prefixes
    ))


def _put_weights(build: _Build, name: str, weights: tuple[tuple[str, int], ...]) -> None:
    """A model's part of the runtime layer; none for a model whose routes read no weights."""
    prior = build.weights.get(name)
    if (prior.weights if prior is not None else ()) == weights:
        return  # same weights: keep its version and bytes
    build.weights_changed.add(name)
    if weights:
        build.writable("weights")[name] = ModelWeights(name, weights)
    else:
        build.writable("weights").pop(name, None)


def _remove_model(build: _Build, old: ModelRoute) -> None:
    for arm in old.arms:
        build.consider(old.cluster(arm))
    _put_weights(build, old.model_name, ())
    build.writable("parts").pop(old.model_name, None)
    build.writable("shapes").pop(old.model_name, None)
    build.changed.add(old.model_name)


def _settle(
    build: _Build, inputs: Mapping[str, ModelRoute], still_routed: Callable[[str], bool] | None
) -> None:
    """Each cluster that left (or lost its hosts) stays, with its last hosts, while routed to."""
    for cluster, (before, owner) in build.candidates.items():
        model = inputs.get(owner)
        arm = None if model is None else next((a for a in model.arms if model.cluster(a) == cluster), None)
        routed = still_routed is not None and still_routed(cluster)
        # Still desired, and it has hosts again, nothing routes to it, or it had none: as desired.
        as_desired = arm is not None and (arm.endpoints or not routed or not has_hosts(before.body))
        if model is not None and arm is not None and as_desired:
            build.put_cluster(_cluster_entry(model, arm, build.clusters.get(cluster)), owner)
        elif routed:
            build.put_cluster(before, owner)
            build.retained.add(cluster)
        else:
            build.drop_cluster(cluster)


def _check_part(build: _Build, part: ModelRoutes) -> None:
    counts = {
        cluster: endpoint_count(build.clusters[cluster].body, {})
        for cluster in part.routed_clusters
        if cluster in build.clusters
    }
    weights = build.weights.get(part.model_name)
    layer = dict(weights.weights) if weights is not None else {}
    for route in part.routes:
        build.problems += route_problems(
            f"{resources.ROUTE_CONFIG_NAME}/{route.get('name', '?')}", route, counts, layer
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


_Part = TypeVar("_Part", ModelRoutes, ModelWeights)


def _updated_parts(
    parts: tuple[_Part, ...], total: int, changed: Iterable[str], current: Mapping[str, _Part]
) -> tuple[tuple[_Part, ...], int]:
    """The parts in name order with each changed model's replaced, inserted or removed, and their
    digest sum adjusted: each is found by bisection, no pass over every model."""
    ordered = list(parts)
    for name in sorted(changed):
        index = bisect.bisect_left(ordered, name, key=lambda part: part.model_name)
        present = index < len(ordered) and ordered[index].model_name == name
        if present:
            total -= ordered[index].digest
        if name in current:
            total += current[name].digest
            if present:
                ordered[index] = current[name]
            else:
                ordered.insert(index, current[name])
        elif present:
            del ordered[index]
    return tuple(ordered), total % MODULUS


def _route_config(
    build: _Build, inputs: Mapping[str, ModelRoute], previous: Snapshot | None
) -> RouteConfigEntry:
    if previous is None:
        ordered = tuple(build.parts[name] for name in sorted(inputs))
        return RouteConfigEntry(ordered, sum(part.digest for part in ordered) % MODULUS)
    prior = previous.route_config
    if not build.changed:
        return prior
    return RouteConfigEntry(*_updated_parts(prior.parts, prior.total, build.changed, build.parts))


def _runtime(build: _Build, previous: Snapshot | None) -> RuntimeEntry:
    if previous is None:
        ordered = tuple(build.weights[name] for name in sorted(build.weights))
        return RuntimeEntry(ordered, sum(part.digest for part in ordered) % MODULUS)
    prior = previous.runtime
    if not build.weights_changed:
        return prior
    return RuntimeEntry(*_updated_parts(prior.parts, prior.total, build.weights_changed, build.weights))


def build_snapshot(
    desired: DesiredState,
    *,
    routable_clusters: frozenset[str] | None = None,
    still_routed: Callable[[str], bool] | None = None,
    running_routes: RunningRoutes | None = None,
    previous: Snapshot | None = None,
    changed_models: Collection[str] | None = None,
) -> Snapshot:
    """The whole config for `desired`, checked; raises SnapshotInconsistent. Pure.

    `routable_clusters`: clusters every live node has acknowledged in CDS; routes
    name no other (None: no gating, e.g. for validation or a restart that restores
    what Envoy already runs). `still_routed(cluster)`: whether a route config some
    node still runs sends traffic to a cluster; such a cluster is kept (with its
    last hosts) after it stopped being desired. `running_routes(model)`: the
    versions of a model's routes some node may still run; their weights stay in the
    runtime layer as last published (None: none kept). `previous`: the snapshot to
    build on; only models whose routing changed (or whose routes were held back, or
    whose runtime part keeps older weights) are rebuilt. `changed_models`: the only
    models that may differ from `previous`'s (a caller that tracks its changes saves
    a pass over every model); None
    compares every model, by identity first, then by equality.
    """
    build = _Build(
        clusters=previous.cluster_entries if previous else {},  # type: ignore[arg-type]
        owner=previous.cluster_owner if previous else {},  # type: ignore[arg-type]
        parts=previous.model_routes if previous else {},  # type: ignore[arg-type]
        weights=previous.model_weights if previous else {},  # type: ignore[arg-type]
        shapes=previous.shapes if previous else {},  # type: ignore[arg-type]
        cluster_total=previous.cluster_total if previous else 0,
    )
    old_inputs: Mapping[str, ModelRoute] = previous.inputs if previous else {}
    held_before = previous.held_back_models if previous else frozenset()
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
        if (old is model or old == model) and only_grew and name not in held_before:
            continue
        _rebuild_model(build, model, old=old, previous=previous, routable=routable_clusters,
                       running_routes=running_routes)
    for name in removed:
        _remove_model(build, old_inputs[name])
    if previous is not None:
        for cluster in previous.retained:
            build.candidates.setdefault(
                cluster, (previous.cluster_entries[cluster], previous.cluster_owner.get(cluster, ""))
            )
    _settle(build, inputs, still_routed)
    for name in build.changed | build.weights_changed:
        if name in build.parts:
            _check_part(build, build.parts[name])
    if build.problems:
        raise SnapshotInconsistent(build.problems)
    return _assemble(desired, build, inputs, previous, routable_clusters)


def _held_back_models(build: _Build, previous: Snapshot | None, rebuilt: Iterable[str]) -> frozenset[str]:
    held = set(previous.held_back_models) if previous is not None else set()
    for name in rebuilt:
        part = build.parts.get(name)
        if part is not None and (part.held_back or name in build.weights_kept):
            held.add(name)
        else:
            held.discard(name)
    return frozenset(held)


def _assemble(
    desired: DesiredState, build: _Build, inputs: dict[str, ModelRoute], previous: Snapshot | None,
    routable: frozenset[str] | None,
) -> Snapshot:
    listener, ads_listener = _listeners(desired, previous)
    same_clusters = previous is not None and (
        build.clusters is previous.cluster_entries
        or (build.cluster_total % MODULUS == previous.cluster_total
            and build.clusters.keys() == previous.cluster_entries.keys())
    )
    rebuilt = build.shapes.keys() if previous is None else (
        set(build.changed) | set(previous.held_back_models) | build.rebuilt
    )
    return Snapshot(
        listener=listener,
        ads_listener=ads_listener,
        cluster_entries=build.clusters,
        model_routes=build.parts,
        route_config=_route_config(build, inputs, previous),
        model_weights=build.weights,
        runtime=_runtime(build, previous),
        inputs=inputs,
        cluster_owner=build.owner,
        cluster_total=build.cluster_total % MODULUS,
        routable=routable,
        retained=frozenset(build.retained),
        changed_models=frozenset(build.changed),
        changed_weights=frozenset(build.weights_changed),
        changed_clusters=None if previous is None else frozenset(build.touched),
        base_cluster_version=None if previous is None else previous.versions[ResourceType.CLUSTER],
        shapes=build.shapes,
        held_back_models=_held_back_models(build, previous, rebuilt),
        _sorted_clusters=previous.cluster_list if same_clusters and previous else None,
        desired_listener=desired.listener,
        desired_polling=desired.rds_polling,
    )


def subset(snapshot: Snapshot, model_names: Iterable[str]) -> Snapshot:
    """A snapshot of only these models (same listener, same gating): to validate them alone."""
    chosen = tuple(snapshot.inputs[name] for name in sorted(set(model_names)) if name in snapshot.inputs)
    desired = DesiredState(snapshot.desired_listener, chosen, snapshot.desired_polling)
    return build_snapshot(desired, routable_clusters=snapshot.routable)
