"""Keeps the routing inputs (stages, traffic settings, endpoints) and publishes them to Envoy.

Every change is written to the database first, then applied to the in-memory
inputs and published; xDS polls never touch the database. A change Envoy would
reject (or that is inconsistent) is undone and reported.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

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
from controlplane.xds.snapshot import ModelWeights, ResourceType, Snapshot, content_version
from registry.domain import Stage, StageChange, check_model_name
from registry.errors import Conflict, InvalidInput, NotFound
from registry.store import RegistryStore

log = logging.getLogger(__name__)

MAX_TTL_SECONDS = 3600
DEFAULT_TTL_SECONDS = 30
MAX_WEIGHT = 1_000_000
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


class TrafficService:
    def __init__(
        self, store: TrafficStore, registry_store: RegistryStore, publisher: Publisher, *,
        listener: ListenerAddress, rds_polling: RdsPolling,
    ) -> None:
        self.store = store
        self.registry_store = registry_store
        self.publisher = publisher
        self.listener = listener
        self.rds_polling = rds_polling
        self.stages: dict[str, ModelStages] = {}
        self.settings: dict[str, TrafficRow] = {}
        self.endpoints: dict[tuple[str, str], dict[tuple[str, int], datetime]] = {}
        # model -> (its routes' version, the first route version that carried them).
        self._model_route_versions: dict[str, tuple[str, str]] = {}
        # model -> (its weights' version, the first runtime version that carried them); only
        # models whose routes read their weights from the runtime layer.
        self._model_weight_versions: dict[str, tuple[str, str]] = {}
        # Each model's routing as last built from the inputs; dropped when an input changes,
        # so a change to one model rebuilds one model (identity tells the snapshot builder).
        self._routes: dict[str, ModelRoute] = {}
        self._stale: set[str] = set()
        # Models changed since the last publish that succeeded, with the revision of the change.
        self._unpublished: dict[str, int] = {}
        self._revision = 0
        self._full_publish = True  # until the first publish: compare every model
        publisher.on_publish(self._track_route_versions)

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

    def _track_route_versions(self, snapshot: Snapshot) -> None:
        """Remember, per model, the first route and runtime versions that carried its current
        routes and weights."""
        for changed, parts, kind, carried in (
            (snapshot.changed_models, snapshot.model_routes, ResourceType.ROUTE, self._model_route_versions),
            (snapshot.changed_weights, snapshot.model_weights, ResourceType.RUNTIME,
             self._model_weight_versions),
        ):
            for model_name in changed:
                part = parts.get(model_name)
                if part is None:
                    carried.pop(model_name, None)
                    continue
                known = carried.get(model_name)
                if known is None or known[0] != part.version:
                    carried[model_name] = (part.version, snapshot.versions[kind])

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
            weights = cache.weight_parts(node.type_state(ResourceType.RUNTIME).acked_version)
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
        return len(self.endpoints.get((model_name, version), {}))

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
        return result

    async def release(self, model_name: str) -> None:
        """Forget a model's traffic setting: prod takes 100 again."""
        self.settings.pop(model_name, None)
        self._changed(model_name)
        await self.store.delete_setting(model_name)
        await self.publish()

    def weights(self, model_name: str) -> dict[str, int]:
        """The weights that apply now, per live version."""
        row = self.settings.get(model_name)
        return effective_weights(self.live_stages(model_name), setting_of(row) if row else None)

    def acknowledgement(self, model_name: str) -> Acknowledgement:
        """Which versions carry the model's routes and weights, and whether every live node runs them.

        `xds_version`: the runtime version when the model's routes read weights from the
        runtime layer, else the route version.
        """
        routes = self._model_route_versions.get(model_name)
        wanted = {ResourceType.ROUTE: routes[1] if routes else ""}
        weights = self._model_weight_versions.get(model_name)
        if weights is not None:
            wanted[ResourceType.RUNTIME] = weights[1]
        acked_nodes, total_nodes = self.publisher.nodes_running(wanted)
        acked = acked_nodes == total_nodes and self._serves_desired(model_name)
        carrier = wanted.get(ResourceType.RUNTIME, wanted[ResourceType.ROUTE])
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
        known = self._model_route_versions.get(model_name)
        if known is None or known[0] != content_version(model_routes(route)):
            return False
        weights = model_weights(route)
        carried = self._model_weight_versions.get(model_name)
        if not weights:
            return carried is None
        return carried is not None and carried[0] == ModelWeights(model_name, weights).version

    def _endpoints_of(self, model_name: str) -> dict[tuple[str, str], tuple[Endpoint, ...]]:
        """Live endpoints per (model, version) of one model's live versions."""
        stages = self.stages.get(model_name)
        versions = [v for v in (stages.prod, stages.canary) if v] if stages else []
        found = {}
        for version in versions:
            members = self.endpoints.get((model_name, version))
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
        members = self.endpoints.get((announcement.model_name, announcement.version), {})
        removed = await self.store.delete_endpoint(
            announcement.model_name, announcement.version, announcement.address, announcement.port
        )
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
        expired = 0
        for (model_name, _version), members in self.endpoints.items():
            for key in [k for k, expires_at in members.items() if expires_at <= now]:
                del members[key]
                expired += 1
                self._changed(model_name)
        if expired:
            log.info("%d endpoint(s) expired without renewal", expired)
            await self.store.delete_expired(now)
            await self.publish()
        return expired


def _stages_of(model_name: str, versions: list[tuple[str, str]]) -> ModelStages:
    prod = next((v for v, stage in versions if stage == "prod"), None)
    canary = next((v for v, stage in versions if stage == "canary"), None)
    return ModelStages(model_name, prod, canary)
