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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from controlplane.xds.nodes import NodeTracker
from controlplane.xds.resources import DesiredState
from controlplane.xds.snapshot import (
    ResourceType,
    Snapshot,
    SnapshotInconsistent,
    build_snapshot,
    clusters_to_retain,
    content_version,
    resource_name,
    routed_clusters,
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
        self._cluster_sets: OrderedDict[str, frozenset[str]] = OrderedDict()
        self._routed_sets: OrderedDict[str, frozenset[str]] = OrderedDict()
        self._sequences: OrderedDict[str, int] = OrderedDict()
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
        # Only clusters with endpoints count as "the node has it": a route to a cluster
        # that Envoy still knows without hosts answers 503 just like an unknown one.
        _bounded_put(self._cluster_sets, cds, frozenset(
            resource_name(c) for c in snapshot.clusters if c.get("load_assignment", {}).get("endpoints")
        ))
        _bounded_put(self._routed_sets, rds, routed_clusters(snapshot))
        _bounded_put(self._sequences, rds, self.sequence)
        for versions in (snapshot.versions, snapshot.ads_versions):
            for kind, version in versions.items():
                _bounded_put(self._published[kind], version, None)

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
        return self._cluster_sets.get(cds_version)

    def routed_by(self, rds_version: str) -> frozenset[str] | None:
        return self._routed_sets.get(rds_version)

    def route_sequence(self, rds_version: str) -> int | None:
        """When a route version was first published (a counter); None when unknown."""
        return self._sequences.get(rds_version)


def _bounded_put(store: OrderedDict[str, T], key: str, value: T) -> None:
    # Overwrite: a version published again (A, B, A) is newest again.
    store[key] = value
    store.move_to_end(key)
    while len(store) > HISTORY_SIZE:
        store.popitem(last=False)


def structure_key(snapshot: Snapshot) -> str:
    """The snapshot with weights and endpoints left out: equal keys need no new validation (pure)."""
    routes = [
        {
            **config,
            "virtual_hosts": [
                {**host, "routes": [_without_weights(route) for route in host.get("routes", [])]}
                for host in config.get("virtual_hosts", [])
            ],
        }
        for config in snapshot.routes
    ]
    clusters = [{k: v for k, v in c.items() if k != "load_assignment"} for c in snapshot.clusters]
    return content_version([list(snapshot.listeners), clusters, routes])


def _without_weights(route: dict[str, object]) -> dict[str, object]:
    action = route.get("route")
    if not isinstance(action, dict) or "weighted_clusters" not in action:
        return route
    names = sorted(str(c.get("name")) for c in action["weighted_clusters"].get("clusters", []))
    return {**route, "route": {**action, "weighted_clusters": {"clusters": names}}}


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

    async def publish(self, desired: DesiredState | None = None) -> PublishResult:
        """Publish `desired` (or rebuild the current desired state after an acknowledgement)."""
        async with self._lock:
            target = desired or self.desired
            if target is None:
                return PublishResult(False, self.cache.current, "nothing to publish yet")
            try:
                snapshot = self._build(target)
            except SnapshotInconsistent as exc:
                return self._refuse(exc.problems)
            if self.validator is not None:
                key = structure_key(snapshot)
                if key not in self._validated:
                    outcome = await self.validator(snapshot)
                    if not outcome.ok:
                        return self._refuse([f"envoy rejected the config: {outcome.message}"])
                    self._validated.add(key)
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

    def _build(self, desired: DesiredState) -> Snapshot:
        now = self.clock()
        routable: frozenset[str] | None = None
        still_routed: set[str] = set()
        for node in self.nodes.nodes_holding(ResourceType.CLUSTER, now=now):
            for cds_version in node.type_state(ResourceType.CLUSTER).possible_versions():
                clusters = self.cache.clusters_in(cds_version)
                if clusters is not None:
                    routable = clusters if routable is None else routable & clusters
        for node in self.nodes.nodes_holding(ResourceType.ROUTE, now=now):
            for rds_version in node.type_state(ResourceType.ROUTE).possible_versions():
                still_routed |= self.cache.routed_by(rds_version) or frozenset()
        retained = clusters_to_retain(self.cache.current, still_routed=frozenset(still_routed))
        return build_snapshot(desired, routable_clusters=routable, retained_clusters=retained)

    def request_rebuild(self) -> None:
        """Rebuild soon: a node acknowledged clusters or routes (REST or ADS), so clusters it
        now has may be routed to and clusters no route uses any more may go. Requests made
        before the rebuild starts share it."""
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

    def routes_acked(self, rds_version: str) -> tuple[int, int]:
        """(nodes surely running `rds_version` or a later one, nodes that must acknowledge routes)."""
        now = self.clock()
        wanted = self.cache.route_sequence(rds_version)
        live = self.nodes.nodes_holding(ResourceType.ROUTE, now=now)
        if wanted is None:
            return 0, len(live)
        acked = 0
        for node in live:
            sequences = [
                self.cache.route_sequence(version)
                for version in node.type_state(ResourceType.ROUTE).possible_versions()
            ]
            if all(seq is not None and seq >= wanted for seq in sequences):
                acked += 1
        return acked, len(live)
