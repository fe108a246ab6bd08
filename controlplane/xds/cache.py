"""The published xDS snapshot, the polls waiting on it, and the publisher that builds it.

The publisher is the only producer: it turns the desired state into a snapshot
(gated by what the live nodes have acknowledged, so new clusters are routed to
only after Envoy has them and old ones leave only once no route uses them), asks a
real Envoy to validate structurally new configs, and publishes atomically. The
discovery handlers only read `XdsCache.current` and wait for the next version.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import TypeVar

from controlplane.xds.builder import build_snapshot, subset
from controlplane.xds.nodes import NodeState, NodeTracker
from controlplane.xds.resources import DesiredState
from controlplane.xds.snapshot import (
    ModelRoutes,
    ModelWeights,
    ResourceType,
    Snapshot,
    SnapshotInconsistent,
    has_hosts,
)

log = logging.getLogger(__name__)

# Versions of past snapshots kept to learn what a node's acknowledged version holds.
HISTORY_SIZE = 256

T = TypeVar("T")
Validator = Callable[[Snapshot], Awaitable["ValidationOutcome"]]


@dataclass(frozen=True)
class ValidationOutcome:
    ok: bool
    message: str


@dataclass(frozen=True)
class PublishResult:
    published: bool
    snapshot: Snapshot
    error: str = ""


class XdsCache:
    """The current snapshot and a way to wait until it changes; no I/O, no decisions."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.current = snapshot
        self.sequence = 0
        self._changed = asyncio.Event()
        # CDS version -> its clusters with hosts, or the snapshot to work them out from
        # when first asked (most versions are never asked about: no node holds them).
        self._cluster_sets: OrderedDict[str, frozenset[str] | Snapshot] = OrderedDict()
        self._route_parts: OrderedDict[str, Mapping[str, ModelRoutes]] = OrderedDict()
        self._weight_parts: OrderedDict[str, Mapping[str, ModelWeights]] = OrderedDict()
        self._published: dict[ResourceType, OrderedDict[str, None]] = {
            kind: OrderedDict() for kind in ResourceType
        }
        self._remember(snapshot)

    def publish(self, snapshot: Snapshot) -> bool:
        if snapshot.version == self.current.version:
            return False
        self.current = snapshot
        self.sequence += 1
        self._remember(snapshot)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        return True

    def _remember(self, snapshot: Snapshot) -> None:
        cds = snapshot.versions[ResourceType.CLUSTER]
        rds = snapshot.versions[ResourceType.ROUTE]
        if cds not in self._cluster_sets:
            # Only clusters with endpoints count as "the node has it": a route to a cluster
            # that Envoy still knows without hosts answers 503 just like an unknown one.
            _bounded_put(self._cluster_sets, cds, snapshot)
        else:
            self._cluster_sets.move_to_end(cds)
        # The per-model parts are shared with the snapshot, not copied.
        _bounded_put(self._route_parts, rds, snapshot.model_routes)
        _bounded_put(self._weight_parts, snapshot.versions[ResourceType.RUNTIME], snapshot.model_weights)
        for versions in (snapshot.versions, snapshot.ads_versions):
            for kind, version in versions.items():
                _bounded_put(self._published[kind], version, None)

    def _clusters_with_hosts(self, snapshot: Snapshot) -> frozenset[str]:
        """From the base snapshot's set and the clusters that changed, when both are known."""
        # Only a base already worked out is used: never a chain of versions nobody asked about.
        base = (
            self._cluster_sets.get(snapshot.base_cluster_version)
            if snapshot.base_cluster_version is not None else None
        )
        if not isinstance(base, frozenset) or snapshot.changed_clusters is None:
            return frozenset(
                entry.name for entry in snapshot.cluster_entries.values() if has_hosts(entry.body)
            )
        entries = snapshot.cluster_entries
        gained = {
            name for name in snapshot.changed_clusters if name in entries and has_hosts(entries[name].body)
        }
        return (base - snapshot.changed_clusters) | gained

    async def wait_for_change(self, seconds: float) -> bool:
        """True when a new snapshot was published within `seconds`."""
        event = self._changed
        try:
            await asyncio.wait_for(event.wait(), seconds)
        except TimeoutError:
            return False
        return True

    def was_published(self, resource_type: ResourceType, version: str) -> bool:
        """Whether this process published `version` of `resource_type` (among the last HISTORY_SIZE)."""
        return version in self._published[resource_type]

    def clusters_in(self, cds_version: str) -> frozenset[str] | None:
        """The clusters with hosts in a CDS version this process published; None when unknown."""
        known = self._cluster_sets.get(cds_version)
        if isinstance(known, Snapshot):
            known = self._cluster_sets[cds_version] = self._clusters_with_hosts(known)
        return known

    def route_parts(self, rds_version: str) -> Mapping[str, ModelRoutes] | None:
        """Each model's routes in a route version this process published; None when unknown."""
        return self._route_parts.get(rds_version)

    def carries(self, rds_version: str, model_name: str, part_version: str) -> bool:
        """Whether a route version this process published holds `model_name`'s routes at
        `part_version` (False when the version is unknown here)."""
        parts = self._route_parts.get(rds_version)
        part = parts.get(model_name) if parts is not None else None
        return part is not None and part.version == part_version

    def weight_parts(self, runtime_version: str) -> Mapping[str, ModelWeights] | None:
        """Each weighted model's part of a runtime layer this process published; None when unknown.

        A node that never applied a runtime layer ("") runs none: every route falls back
        to its own weights."""
        if not runtime_version:
            return {}
        return self._weight_parts.get(runtime_version)

    def carries_weights(
        self, runtime_version: str, model_name: str, weights: Collection[tuple[str, int]]
    ) -> bool:
        """Whether a runtime layer this process published (or none, "") holds every one of
        these (key, weight) pairs of `model_name` (False when the version is unknown here)."""
        parts = self.weight_parts(runtime_version)
        part = parts.get(model_name) if parts is not None else None
        held = set(part.weights) if part is not None else set()
        return parts is not None and held.issuperset(weights)


def possible_versions(node: NodeState, resource_type: ResourceType) -> tuple[str, ...]:
    """What the node may run of a type; ("",) for a type it never asked for (no state made)."""
    state = node.types.get(resource_type)
    return state.possible_versions() if state is not None else ("",)


def _bounded_put(store: OrderedDict[str, T], key: str, value: T) -> None:
    # Overwrite: a version published again (A, B, A) is newest again.
    store[key] = value
    store.move_to_end(key)
    while len(store) > HISTORY_SIZE:
        store.popitem(last=False)


class Publisher:
    """Builds, validates and publishes snapshots for the desired state; one build at a time."""

    def __init__(
        self, cache: XdsCache, nodes: NodeTracker, *, validator: Validator | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cache = cache
        self.nodes = nodes
        self.validator = validator
        self.clock = clock
        self.desired: DesiredState | None = None
        # The last refusal stays visible after later successes: operators look for it.
        self.last_error = ""
        self.last_error_at: float | None = None
        self._validated: set[str] = set()
        self._lock = asyncio.Lock()
        self._listeners: list[Callable[[Snapshot], None]] = []
        self._rebuild_pending = False
        self._rebuilds: set[asyncio.Task[None]] = set()  # strong references: the loop keeps weak ones
        self._rebuild_refused: list[Callable[[str], None]] = []

    def on_publish(self, listener: Callable[[Snapshot], None]) -> None:
        """Call `listener` with every snapshot published, whoever asked for it."""
        self._listeners.append(listener)

    async def publish(
        self, desired: DesiredState | None = None, *, changed_models: Collection[str] | None = None
    ) -> PublishResult:
        """Publish `desired` (or rebuild the current desired state after an acknowledgement).

        `changed_models`: the only models that may differ from the last published
        desired state (None: compare them all).
        """
        async with self._lock:
            target = desired or self.desired
            if target is None:
                return PublishResult(False, self.cache.current, "nothing to publish yet")
            if desired is None:
                changed_models = ()  # the same desired state: only acknowledgements moved
            try:
                snapshot = self._build(target, changed_models)
            except SnapshotInconsistent as exc:
                return self._refuse(exc.problems)
            if self.validator is not None:
                outcome = await self._validate_new_shapes(snapshot)
                if not outcome.ok:
                    return self._refuse([f"envoy rejected the config: {outcome.message}"])
            self.desired = target
            if self.cache.publish(snapshot):
                log.info("published xDS snapshot %s", snapshot.version[:12])
                for listener in self._listeners:
                    listener(snapshot)
            return PublishResult(True, snapshot)

    def _refuse(self, problems: list[str]) -> PublishResult:
        self.last_error = "; ".join(problems)
        self.last_error_at = time.time()
        log.error("xDS snapshot not published: %s", self.last_error)
        return PublishResult(False, self.cache.current, self.last_error)

    async def _validate_new_shapes(self, snapshot: Snapshot) -> ValidationOutcome:
        """Ask Envoy about models whose shape of config it has not seen: one model per new shape.

        Models are independent (a model's routes name only its own clusters), so a
        snapshot of one model per new shape stands for all of them; weights and
        endpoints alone never need a new validation.
        """
        listener_key = f"listener:{snapshot.listener.version}"
        new_shapes: dict[str, str] = {}
        for name in snapshot.changed_models:
            shape = snapshot.shapes.get(name)
            if shape is not None and shape not in self._validated:
                new_shapes.setdefault(shape, name)
        if not new_shapes and listener_key in self._validated:
            return ValidationOutcome(True, "OK")
        assert self.validator is not None
        outcome = await self.validator(subset(snapshot, new_shapes.values()))
        if outcome.ok:
            self._validated.update(new_shapes)
            self._validated.add(listener_key)
        return outcome

    def _build(self, desired: DesiredState, changed_models: Collection[str] | None) -> Snapshot:
        now = self.clock()
        routable: frozenset[str] | None = None
        for node in self.nodes.nodes_holding(ResourceType.CLUSTER, now=now):
            for cds_version in node.type_state(ResourceType.CLUSTER).possible_versions():
                clusters = self.cache.clusters_in(cds_version)
                if clusters is not None:
                    routable = clusters if routable is None else routable & clusters
        route_holders = [
            node.type_state(ResourceType.ROUTE).possible_versions()
            for node in self.nodes.nodes_holding(ResourceType.ROUTE, now=now)
        ]
        current = self.cache.current

        def still_routed(cluster: str) -> bool:
            owner = current.cluster_owner.get(cluster, "")
            for versions in route_holders:
                for rds_version in versions:
                    parts = self.cache.route_parts(rds_version)
                    part = parts.get(owner) if parts is not None else None
                    if part is not None and cluster in part.routed_clusters:
                        return True
            return False

        def running_routes(model_name: str) -> Iterator[ModelRoutes]:
            for versions in route_holders:
                for rds_version in versions:
                    parts = self.cache.route_parts(rds_version)
                    part = parts.get(model_name) if parts is not None else None
                    if part is not None:
                        yield part

        return build_snapshot(
            desired, routable_clusters=routable, still_routed=still_routed, running_routes=running_routes,
            previous=current, changed_models=changed_models,
        )

    def request_rebuild(self, resource_type: ResourceType | None = None, acked_version: str = "") -> None:
        """Rebuild soon: a node acknowledged clusters or routes (REST or ADS), so clusters it
        now has may be routed to and clusters no route uses any more may go. Requests made
        before the rebuild starts share it.

        A node acknowledging the current version while no route is held back and no
        cluster is kept for draining changes nothing: no rebuild (a change acknowledged
        by thousands of streams would otherwise start a build per moment of the wave).
        """
        current = self.cache.current
        if (
            resource_type is not None
            and acked_version in (current.versions[resource_type], current.ads_versions[resource_type])
            and not current.held_back_models
            and not current.retained
        ):
            return
        if self._rebuild_pending:
            return
        self._rebuild_pending = True
        task = asyncio.get_running_loop().create_task(self._rebuild_once())
        self._rebuilds.add(task)
        task.add_done_callback(self._rebuilds.discard)

    def on_rebuild_refused(self, listener: Callable[[str], None]) -> None:
        """Call `listener` with the reason when a requested rebuild was not published."""
        self._rebuild_refused.append(listener)

    async def _rebuild_once(self) -> None:
        # Let the other acknowledgements of this moment arrive first: one build for all.
        await asyncio.sleep(0)
        self._rebuild_pending = False
        try:
            result = await self.publish()
        except Exception:
            log.exception("rebuild after acknowledgement failed")
            return
        if not result.published and result.error:
            for listener in self._rebuild_refused:
                listener(result.error)

    def routes_acked(
        self, model_name: str, part_version: str | None, weights: Collection[tuple[str, int]] = ()
    ) -> tuple[int, int]:
        """(nodes surely running `model_name`'s routes at `part_version` and, when given, the
        (runtime key, weight) pairs these routes read; nodes that must acknowledge routes).

        A node counts when every route version and every runtime version it may run
        (acknowledged, or served and not yet confirmed) carries them; a node that never
        applied a runtime layer (a bootstrap without Aegis's RTDS layer) carries no
        weights. None: the model is not routed.
        """
        live = self.nodes.nodes_holding(ResourceType.ROUTE, now=self.clock())
        if part_version is None:
            return 0, len(live)
        acked = sum(
            1 for node in live
            if all(
                self.cache.carries(version, model_name, part_version)
                for version in node.type_state(ResourceType.ROUTE).possible_versions()
            )
            and all(
                self.cache.carries_weights(version, model_name, weights)
                for version in possible_versions(node, ResourceType.RUNTIME)
            )
        )
        return acked, len(live)
