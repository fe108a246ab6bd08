"""Keeps the routing inputs (stages, traffic settings, endpoints) and publishes them to Envoy.

Every change is written to the database first, then applied to the in-memory
inputs and published; xDS polls never touch the database. A change Envoy would
reject (or that is inconsistent) is undone and reported. Changes other replicas
commit are read back per model (`reload_model`) or all at once (`reload_all`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from controlplane.traffic.store import EndpointRow, TrafficRow, TrafficStore, setting_of
from controlplane.xds.cache import Publisher, PublishResult
from controlplane.xds.desired import ModelStages, effective_weights, model_route
from controlplane.xds.resources import (
    DesiredState,
    Endpoint,
    ListenerAddress,
    ModelRoute,
    RdsPolling,
    cluster_name,
    model_routes,
    model_weights,
)
from controlplane.xds.served import served_split
from controlplane.xds.snapshot import ResourceType, content_version
from registry.domain import ModelVersion, Stage, StageChange, check_model_name
from registry.errors import Conflict, InvalidInput, NotFound
from registry.store import RegistryStore, as_utc

log = logging.getLogger(__name__)

MAX_TTL_SECONDS = 3600
DEFAULT_TTL_SECONDS = 30
MAX_WEIGHT = 1_000_000
# Reads of the stored state tried before a reload gives up (see _read_quietly).
FOLLOW_ATTEMPTS = 3
T = TypeVar("T")
ROLLOUT_OWNER = "rollout"


@dataclass(frozen=True)
class TrafficRequest:
    weights: dict[str, int]
    match: list[dict[str, str]] = field(default_factory=list)
    mirror_percent: int = 0


@dataclass(frozen=True)
class Acknowledgement:
    xds_version: str
    acked: bool
    nodes_acked: int
    nodes_total: int


@dataclass(frozen=True)
class EndpointAnnouncement:
    model_name: str
    version: str
    address: str
    port: int
    ttl_seconds: int = DEFAULT_TTL_SECONDS


class FollowRace(RuntimeError):
    """The stored state could not be read without a change made here at the same time."""


class TrafficService:
    def __init__(
        self, store: TrafficStore, registry_store: RegistryStore, publisher: Publisher, *,
        listener: ListenerAddress, rds_polling: RdsPolling,
        static_endpoints: Mapping[tuple[str, str], frozenset[tuple[str, int]]] | None = None,
    ) -> None:
        self.store = store
        self.registry_store = registry_store
        self.publisher = publisher
        self.listener = listener
        self.rds_polling = rds_polling
        self.stages: dict[str, ModelStages] = {}
        self.settings: dict[str, TrafficRow] = {}
        self.endpoints: dict[tuple[str, str], dict[tuple[str, int], datetime]] = {}
        # (model, version) -> (address, port)s from the configuration: never expire, never stored.
        self.static_endpoints = dict(static_endpoints or {})
        # Each model's routing as last built from the inputs; dropped when an input changes,
        # so a change to one model rebuilds one model (identity tells the snapshot builder).
        self._routes: dict[str, ModelRoute] = {}
        self._stale: set[str] = set()
        # Models changed since the last publish that succeeded, with the revision of the change.
        self._unpublished: dict[str, int] = {}
        self._revision = 0
        self._full_publish = True  # until the first publish: compare every model

    async def start(self) -> PublishResult:
        """Load everything and publish before the first poll is answered.

        A restarted control plane that answered with an empty config first would
        roll every Envoy back; this way it serves the same version as before (304).
        """
        for name, _created, versions in await self.registry_store.list_models():
            self.stages[name] = _stages_of(name, versions)
        self.settings = await self.store.load_settings()
        now = datetime.now(UTC)
        for row in await self.store.load_endpoints():
            # While the control plane was down nobody could renew: every stored endpoint
            # gets one more TTL to renew, instead of vanishing from Envoy at restart.
            grace = now + timedelta(seconds=row.ttl_seconds)
            members = self._endpoint_set(row.model_name, row.version)
            members[(row.address, row.port)] = max(row.expires_at, grace)
        self._stale.update(self.stages)
        return await self.publish()

    # --- following the database (other replicas' writes) ---------------------

    async def reload_model(self, model_name: str) -> PublishResult:
        """Read one model's stages, traffic setting and endpoints again, and publish what changed.

        Another replica wrote them: the database has the truth, this process's memory
        follows it. Reading the same state again changes nothing (the same versions).
        """

        async def read() -> tuple[list[ModelVersion], TrafficRow | None, list[EndpointRow]]:
            # Three reads at once (three pooled connections): a follower's reload sits between
            # another replica's write and this replica's Envoys, so its round trips add up.
            return await asyncio.gather(
                self.registry_store.list_versions(model_name),
                self.store.load_setting(model_name),
                self.store.load_endpoints(model_name),
            )

        versions, setting, endpoints = await self._read_quietly(read)
        stages = _stages_of(model_name, [(v.version, v.stage.value) for v in versions]) if versions else None
        if not self._follow_model(model_name, stages, setting, endpoints):
            # Nothing to publish; publishing memory now could undo a candidate being stored.
            return PublishResult(True, self.publisher.cache.current)
        self._changed(model_name)
        return await self.publish()

    async def reload(self) -> PublishResult:
        """Read every input again from the database and publish (a new leader starts from what is stored)."""
        return await self.reload_all()

    async def refresh(self, model_name: str) -> None:
        """Read one model's inputs again before acting on a command another replica stored.

        That replica changed the database, and this one may not have heard of it yet.
        """
        result = await self.reload_model(model_name)
        if not result.published:
            log.error("routing of %s read again was not published: %s", model_name, result.error)

    async def reload_all(self) -> PublishResult:
        """Read every model again (after a lost connection, and now and then): a full reconcile."""

        async def read() -> tuple[list[Any], dict[str, TrafficRow], list[EndpointRow]]:
            return (
                await self.registry_store.list_models(),
                await self.store.load_settings(),
                await self.store.load_endpoints(),
            )

        stored, settings, rows = await self._read_quietly(read)
        models = {name: _stages_of(name, versions) for name, _created, versions in stored}
        endpoints: dict[str, list[EndpointRow]] = {}
        for row in rows:
            endpoints.setdefault(row.model_name, []).append(row)
        known = set(self.stages) | set(self.settings) | {name for name, _ in self.endpoints}
        changed = [
            name for name in sorted(known | set(models) | set(settings) | set(endpoints))
            if self._follow_model(name, models.get(name), settings.get(name), endpoints.get(name, []))
        ]
        if not changed and not self._unpublished:
            return PublishResult(True, self.publisher.cache.current)
        for name in changed:
            self._changed(name)
        return await self.publish()

    async def _read_quietly(self, read: Callable[[], Awaitable[T]]) -> T:
        """What `read` returns, read while this process changed no input itself.

        A change made here while the reads ran may be newer than what they found
        (written after the read, applied to memory before it returns): applying the
        reads would step back. Read again then; give up after FOLLOW_ATTEMPTS (the
        caller's reconcile tries again shortly).
        """
        for _attempt in range(FOLLOW_ATTEMPTS):
            revision = self._revision
            found = await read()
            if revision == self._revision:
                return found
        raise FollowRace(f"inputs changed here during {FOLLOW_ATTEMPTS} reads in a row")

    def _follow_model(
        self, model_name: str, stages: ModelStages | None, setting: TrafficRow | None,
        rows: list[EndpointRow],
    ) -> bool:
        """Take a model's stored inputs; True when its routing inputs changed."""
        before = (self.stages.get(model_name), _setting_key(self.settings.get(model_name)),
                  self._members_of(model_name))
        if stages is None:
            self.stages.pop(model_name, None)
        else:
            self.stages[model_name] = stages
        if setting is None:
            self.settings.pop(model_name, None)
        else:
            self.settings[model_name] = setting
        stored: dict[str, dict[tuple[str, int], datetime]] = {}
        for row in rows:
            stored.setdefault(row.version, {})[(row.address, row.port)] = as_utc(row.expires_at)
        for key in [key for key in self.endpoints if key[0] == model_name and key[1] not in stored]:
            del self.endpoints[key]
        for version, members in stored.items():
            held = self.endpoints.get((model_name, version), {})
            # A grace given at start-up (see start) is kept; the stored expiry otherwise.
            self.endpoints[(model_name, version)] = {
                key: max(expires_at, held.get(key, expires_at)) for key, expires_at in members.items()
            }
        after = (self.stages.get(model_name), _setting_key(self.settings.get(model_name)),
                 self._members_of(model_name))
        return before != after

    def _members_of(self, model_name: str) -> dict[str, frozenset[tuple[str, int]]]:
        return {
            version: frozenset(members)
            for (name, version), members in self.endpoints.items() if name == model_name and members
        }

    def desired(self, *, model_name: str | None = None, setting: TrafficRow | None = None) -> DesiredState:
        """The routing for the current inputs; with `model_name`, that model's setting replaced."""
        for name in self._stale:
            route = self._build_route(name, self.settings.get(name)) if name in self.stages else None
            if route is None:
                self._routes.pop(name, None)
            else:
                self._routes[name] = route
        self._stale.clear()
        models = dict(self._routes)
        if model_name is not None:
            route = self._build_route(model_name, setting)
            if route is None:
                models.pop(model_name, None)
            else:
                models[model_name] = route
        return DesiredState(listener=self.listener, models=models, rds_polling=self.rds_polling)

    def _build_route(self, model_name: str, row: TrafficRow | None) -> ModelRoute | None:
        return model_route(
            self.stages[model_name], setting_of(row) if row else None, self._endpoints_of(model_name)
        )

    def _changed(self, model_name: str) -> None:
        """An input of this model changed: its routing is built again, and published as a change."""
        self._stale.add(model_name)
        self._revision += 1
        self._unpublished[model_name] = self._revision

    async def publish(self, desired: DesiredState | None = None) -> PublishResult:
        """Publish the current inputs (or `desired`, built by `desired()` with an override)."""
        pending = dict(self._unpublished)
        state = desired or self.desired()
        result = await self.publisher.publish(
            state, changed_models=None if self._full_publish else pending.keys()
        )
        if result.published:
            self._full_publish = False
            for name, revision in pending.items():
                if self._unpublished.get(name) == revision:
                    del self._unpublished[name]
        return result

    def _by_version(self, model_name: str, split: dict[str, int] | None) -> dict[str, int] | None:
        """A split per cluster as a split per live version (a cluster of no live version keeps its name)."""
        if split is None:
            return None
        stages = self.stages.get(model_name)
        versions = [v for v in (stages.prod, stages.canary) if v] if stages else []
        by_cluster = {cluster_name(model_name, version): version for version in versions}
        return {by_cluster.get(cluster, cluster): share for cluster, share in split.items()}

    def served_splits(self, model_name: str) -> list[dict[str, int] | None]:
        """Per live Envoy node, the percent per version its acknowledged routes and runtime
        layer serve.

        An empty split: the node answers 503 (no version can serve); None: the node runs
        a route version (or, for a model whose routes read weights, a runtime version)
        this process never published (or none yet).
        """
        now = self.publisher.clock()
        cache = self.publisher.cache
        splits: list[dict[str, int] | None] = []
        for node in self.publisher.nodes.nodes_holding(ResourceType.ROUTE, now=now):
            parts = cache.route_parts(node.type_state(ResourceType.ROUTE).acked_version)
            runtime = node.types.get(ResourceType.RUNTIME)
            weights = cache.weight_parts(runtime.acked_version if runtime is not None else "")
            splits.append(self._by_version(model_name, served_split(model_name, parts, weights)))
        return splits

    # --- stages -------------------------------------------------------------

    async def on_stage_change(self, changes: list[StageChange]) -> None:
        for model_name in {change.model_name for change in changes}:
            versions = await self.registry_store.list_versions(model_name)
            self.stages[model_name] = _stages_of(model_name, [(v.version, v.stage.value) for v in versions])
            self._changed(model_name)
        result = await self.publish()
        if not result.published:
            log.error("routing after a stage change was not published: %s", result.error)

    async def guard_stage_change(self, changes: list[StageChange], *, force: bool) -> None:
        """Refuse to make prod a version with no live endpoint while another version serves.

        Such a change routes every request to nothing (503) until a model server
        announces itself. With nothing serving the model now, it takes nothing away.
        """
        for change in changes:
            if force or change.to_stage is not Stage.PROD:
                continue
            model_name, version = change.model_name, change.version
            if self.endpoint_count(model_name, version):
                continue
            stages = self.stages.get(model_name, ModelStages(model_name))
            serving = [v for v in (stages.prod, stages.canary) if v and self.endpoint_count(model_name, v)]
            if serving:
                now = f"version {' and '.join(serving)} serve{'s' if len(serving) == 1 else ''}"
                raise Conflict(
                    f"{model_name} {version} has no live endpoint: as prod it would answer every request "
                    f"with 503, while {now} now. Start its model server "
                    f"(`aegis model-server`) and check that `aegis traffic {model_name}` counts its "
                    "endpoints, or repeat with --force (API: \"force\": true) to go ahead anyway"
                )

    def endpoint_count(self, model_name: str, version: str) -> int:
        return len(self.live_endpoints(model_name, version))

    def live_endpoints(self, model_name: str, version: str) -> set[tuple[str, int]]:
        """Live endpoints of one version: announced ones and static ones from the configuration."""
        key = (model_name, version)
        return set(self.endpoints.get(key, {})) | self.static_endpoints.get(key, frozenset())

    # --- traffic ------------------------------------------------------------

    def live_stages(self, model_name: str) -> ModelStages:
        stages = self.stages.get(check_model_name(model_name))
        if stages is None:
            raise NotFound(
                f"model {model_name!r} is not registered; list models with GET /v1/registry/models"
            )
        return stages

    async def set_traffic(
        self, model_name: str, request: TrafficRequest, *, actor: str, owner: str = "operator"
    ) -> PublishResult:
        stages = self.live_stages(model_name)
        previous = self.settings.get(model_name)
        if previous is not None and previous.owner == ROLLOUT_OWNER and owner != ROLLOUT_OWNER:
            raise Conflict(
                f"a rollout drives {model_name}'s traffic; pause or abort it with "
                f"POST /v1/rollouts/{model_name}/pause|abort before setting weights by hand"
            )
        live = {v for v in (stages.prod, stages.canary) if v is not None}
        unknown = sorted(set(request.weights) - live)
        if unknown:
            raise InvalidInput(
                f"{model_name} weights may name only its prod and canary versions "
                f"({', '.join(sorted(live)) or 'none'}); not {', '.join(unknown)}"
            )
        row = TrafficRow(
            model_name=model_name, weights=request.weights, match=request.match,
            mirror_percent=request.mirror_percent, owner=owner, updated_by=actor,
            updated_at=datetime.now(UTC),
        )
        # Marked changed before the candidate goes out, so that the publish after it (the
        # stored setting, or the old one if storing fails) rebuilds this model again.
        self._changed(model_name)
        result = await self.publish(self.desired(model_name=model_name, setting=row))
        if not result.published:
            raise InvalidInput(f"the new routing was not published: {result.error}")
        try:
            await self.store.save_setting(row)
        except BaseException:
            # Published but not stored: Envoy must not keep weights a restart would forget.
            self._changed(model_name)
            await self.publish()
            raise
        self.settings[model_name] = row
        self._changed(model_name)
        if self.publisher.cache.current is not result.snapshot:
            # Something else published from memory while this was stored (a follower's
            # reload, an endpoint): that snapshot had the old setting. Publish the stored one.
            return await self.publish()
        return result

    async def release(self, model_name: str) -> None:
        """Forget a model's traffic setting: prod takes 100 again."""
        # Stored first: a write the database refused (a deposed leader's) changes nothing here.
        await self.store.delete_setting(model_name)
        self.settings.pop(model_name, None)
        self._changed(model_name)
        await self.publish()

    def weights(self, model_name: str) -> dict[str, int]:
        """The weights that apply now, per live version."""
        row = self.settings.get(model_name)
        return effective_weights(self.live_stages(model_name), setting_of(row) if row else None)

    def acknowledgement(self, model_name: str) -> Acknowledgement:
        """The version served now that carries the model's weights (the runtime layer's when its
        routes read weights from it, else the route configuration's), and whether every live
        node runs the model's routes and the weights they read.

        Both are facts of content, not of this process's history: every replica with the
        same state (and the same shared node view) gives the same answer.
        """
        current = self.publisher.cache.current
        part = current.model_routes.get(model_name)
        weights = current.weights_read(model_name)
        acked_nodes, total_nodes = self.publisher.routes_acked(
            model_name, part.version if part else None, weights
        )
        acked = acked_nodes == total_nodes and self._serves_desired(model_name)
        carrier = current.versions[ResourceType.RUNTIME if weights else ResourceType.ROUTE] if part else ""
        return Acknowledgement(carrier, acked, acked_nodes, total_nodes)

    def runs(self, model_name: str, weights: dict[str, int]) -> bool:
        """Whether these are the model's weights and every live Envoy node runs them."""
        return self.weights(model_name) == weights and self.acknowledgement(model_name).acked

    def _serves_desired(self, model_name: str) -> bool:
        """Whether the published routes are the ones the current inputs call for.

        False while make-before-break still holds the desired split back, and in the
        moment between an input changing and its snapshot being published.
        """
        stages = self.stages.get(model_name)
        if stages is None:
            return True
        row = self.settings.get(model_name)
        route = model_route(stages, setting_of(row) if row else None, self._endpoints_of(model_name))
        if route is None:
            return True
        current = self.publisher.cache.current
        part = current.model_routes.get(model_name)
        routes = model_routes(route)
        if part is None or part.version != content_version(routes):
            return False
        return current.weights_read(model_name) == model_weights(route, routes=routes)

    def _endpoints_of(self, model_name: str) -> dict[tuple[str, str], tuple[Endpoint, ...]]:
        """Live endpoints per (model, version) of one model's live versions."""
        stages = self.stages.get(model_name)
        versions = [v for v in (stages.prod, stages.canary) if v] if stages else []
        found = {}
        for version in versions:
            members = self.live_endpoints(model_name, version)
            if members:
                found[(model_name, version)] = tuple(
                    Endpoint(address, port) for address, port in sorted(members)
                )
        return found

    # --- endpoints ----------------------------------------------------------

    def _endpoint_set(self, model_name: str, version: str) -> dict[tuple[str, int], datetime]:
        return self.endpoints.setdefault((model_name, version), {})

    async def announce(self, announcement: EndpointAnnouncement, *, actor: str) -> bool:
        """Add or renew an endpoint; True when it is new (and so was published)."""
        if await self.registry_store.get_version(announcement.model_name, announcement.version) is None:
            raise NotFound(
                f"{announcement.model_name} {announcement.version} is not registered; register it first"
            )
        expires_at = datetime.now(UTC) + timedelta(seconds=announcement.ttl_seconds)
        await self.store.upsert_endpoint(
            EndpointRow(
                model_name=announcement.model_name, version=announcement.version,
                address=announcement.address, port=announcement.port,
                ttl_seconds=announcement.ttl_seconds, expires_at=expires_at, registered_by=actor,
            )
        )
        members = self._endpoint_set(announcement.model_name, announcement.version)
        key = (announcement.address, announcement.port)
        is_new = key not in members
        members[key] = expires_at
        if is_new:
            self._changed(announcement.model_name)
            await self.publish()
        return is_new

    async def withdraw(self, announcement: EndpointAnnouncement) -> None:
        key = (announcement.address, announcement.port)
        if key in self.static_endpoints.get((announcement.model_name, announcement.version), ()):
            raise Conflict(
                f"{announcement.address}:{announcement.port} is a static endpoint of "
                f"{announcement.model_name} {announcement.version} (AEGIS_STATIC_ENDPOINTS); remove it "
                "from the configuration and restart Aegis"
            )
        removed = await self.store.delete_endpoint(
            announcement.model_name, announcement.version, announcement.address, announcement.port
        )
        # Looked up after the delete: a reload that ran meanwhile may have replaced the set.
        members = self.endpoints.get((announcement.model_name, announcement.version), {})
        if key not in members and not removed:
            raise NotFound(
                f"no endpoint {announcement.address}:{announcement.port} for "
                f"{announcement.model_name} {announcement.version}"
            )
        members.pop(key, None)
        self._changed(announcement.model_name)
        await self.publish()

    async def expire_endpoints(self) -> int:
        """Drop endpoints whose TTL passed without a renewal; returns how many went."""
        now = datetime.now(UTC)
        expired = [
            (model_name, members, key)
            for (model_name, _version), members in self.endpoints.items()
            for key, expires_at in members.items()
            if expires_at <= now
        ]
        if not expired:
            return 0
        # Stored first: a write the database refused (a deposed leader's) changes nothing here.
        await self.store.delete_expired(now)
        for model_name, members, key in expired:
            del members[key]
            self._changed(model_name)
        log.info("%d endpoint(s) expired without renewal", len(expired))
        await self.publish()
        return len(expired)


def _setting_key(row: TrafficRow | None) -> tuple[Any, ...] | None:
    """What of a traffic setting the routing and the API show (not who wrote it when)."""
    if row is None:
        return None
    return (dict(row.weights), list(row.match), row.mirror_percent, row.owner)


def _stages_of(model_name: str, versions: list[tuple[str, str]]) -> ModelStages:
    prod = next((v for v, stage in versions if stage == "prod"), None)
    canary = next((v for v, stage in versions if stage == "canary"), None)
    return ModelStages(model_name, prod, canary)
