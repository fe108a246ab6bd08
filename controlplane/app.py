"""Process wiring: builds the aiohttp application from settings and owns its lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator

from aiohttp import web

from controlplane import alerts, openapi
from controlplane.metrics.prometheus import PrometheusSource
from controlplane.observability import METRICS_REGISTRY, metrics_endpoint, new_metrics_registry
from controlplane.rollout import api as rollout_api
from controlplane.rollout.metrics import RolloutMetrics
from controlplane.rollout.policy import Policy
from controlplane.rollout.policy_files import PolicyRegistry
from controlplane.rollout.runner import RolloutRunner
from controlplane.rollout.store import RolloutStore
from controlplane.settings import Settings, parse_listen, url_signing_key
from controlplane.traffic import api as traffic_api
from controlplane.traffic.service import TrafficService
from controlplane.traffic.store import TrafficStore
from controlplane.xds import server as xds_server
from controlplane.xds.cache import Publisher, ValidationOutcome, Validator, XdsCache
from controlplane.xds.nodes import NodeTracker
from controlplane.xds.resources import DesiredState, ListenerAddress, RdsPolling
from controlplane.xds.snapshot import Snapshot, build_snapshot
from controlplane.xds.validate import EnvoyUnavailable, find_envoy_binary, validate_with_envoy
from registry import api as registry_api
from registry.blobs import BlobStore
from registry.http import BODY_READ_TIMEOUT, TOKENS, json_errors
from registry.metrics import RegistryMetrics
from registry.service import RegistryService
from registry.store import Database, RegistryStore

log = logging.getLogger(__name__)

SETTINGS = web.AppKey("settings", Settings)
DATABASE = web.AppKey("database", Database)
XDS = web.AppKey("xds_server", xds_server.XdsServer)

ROLLOUT_METRICS = web.AppKey("rollout_metrics", RolloutMetrics)

ENDPOINT_EXPIRY_INTERVAL = 1.0  # seconds between TTL sweeps: an expired endpoint leaves within ~1 s


def create_app(settings: Settings) -> web.Application:
    """The whole HTTP surface; storage opens in the app's startup, not here."""
    # client_max_size bounds only read()/post(); uploads stream past it.
    app = web.Application(middlewares=[json_errors])
    app[SETTINGS] = settings
    app[TOKENS] = settings.security.tokens
    app[BODY_READ_TIMEOUT] = settings.server.body_read_timeout_seconds
    metrics_registry = new_metrics_registry()
    app[METRICS_REGISTRY] = metrics_registry
    app[registry_api.METRICS] = RegistryMetrics(metrics_registry)
    nodes = NodeTracker(stale_after=settings.xds.node_stale_seconds)
    cache = XdsCache(_empty_snapshot(_listener_of(settings), _rds_of(settings)))
    publisher = Publisher(cache, nodes, validator=_envoy_validator() if settings.xds.validate else None)
    xds = xds_server.XdsServer(
        cache, nodes, publisher, xds_server.XdsMetrics(metrics_registry), settings.xds.hold_seconds
    )
    app[XDS] = xds
    app[ROLLOUT_METRICS] = RolloutMetrics(metrics_registry)
    policies_path = settings.integrations.policies_path
    app[rollout_api.POLICIES] = PolicyRegistry(policies_path) if policies_path else None
    app.cleanup_ctx.append(_storage)
    app.cleanup_ctx.append(_endpoint_expiry)
    app.cleanup_ctx.append(_policy_watch)
    app.cleanup_ctx.append(_rollout_loop)
    app.router.add_get("/metrics", metrics_endpoint)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/v1/openapi.json", openapi.openapi_endpoint)
    registry_api.add_routes(app)
    traffic_api.add_routes(app)
    rollout_api.add_routes(app)
    alerts.add_routes(app)
    xds_server.add_routes(app, xds)
    return app


def _empty_snapshot(listener: ListenerAddress, rds_polling: RdsPolling) -> Snapshot:
    return build_snapshot(DesiredState(listener=listener, models=(), rds_polling=rds_polling))


def _envoy_validator() -> Validator | None:
    binary = find_envoy_binary()
    if binary is None:
        log.warning("no envoy binary found: configs are checked for consistency only")
        return None

    async def validate(snapshot: Snapshot) -> ValidationOutcome:
        try:
            result = await validate_with_envoy(snapshot, envoy_binary=binary)
        except EnvoyUnavailable as exc:
            # No verdict is not a rejection: publish on the consistency check alone.
            log.warning("envoy validation unavailable: %s", exc)
            return ValidationOutcome(True, str(exc))
        return ValidationOutcome(result.ok, result.message)

    return validate


async def _storage(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    data_dir = settings.server.data_dir
    await asyncio.to_thread(data_dir.mkdir, parents=True, exist_ok=True)
    blobs = BlobStore(data_dir / "blobs")
    await asyncio.to_thread(blobs.prepare)
    database = Database(settings.server.effective_database_url)
    await database.create_schema()
    registry_store = RegistryStore(database)
    service = RegistryService(registry_store, blobs, settings.security.keyring)
    service.on_stage_change(registry_api.record_stage_changes(app[registry_api.METRICS]))
    xds = app[XDS]
    traffic = TrafficService(
        TrafficStore(database),
        registry_store,
        xds.publisher,
        listener=_listener_of(settings),
        rds_polling=_rds_of(settings),
    )
    service.on_stage_change(traffic.on_stage_change)
    app[DATABASE] = database
    app[registry_api.BLOBS] = blobs
    app[registry_api.SERVICE] = service
    app[registry_api.CONFIG] = registry_api.RegistryApiConfig(
        max_artifact_bytes=settings.registry.max_artifact_bytes,
        download_url_key=await asyncio.to_thread(url_signing_key, settings),
        download_url_ttl_seconds=settings.registry.download_url_ttl_seconds,
    )
    app[traffic_api.TRAFFIC] = traffic
    policies = app[rollout_api.POLICIES]
    if policies is not None:
        await asyncio.to_thread(policies.reload)
        app[ROLLOUT_METRICS].policy_errors.set_function(lambda: len(policies.errors))
        app[ROLLOUT_METRICS].policies_loaded.set_function(lambda: len(policies.policies))
        for error in policies.errors:
            log.error("policy error: %s", error)
    prometheus = PrometheusSource(
        settings.integrations.prometheus_url, timeout_seconds=settings.integrations.prometheus_timeout_seconds
    )
    runner = RolloutRunner(
        RolloutStore(database),
        policies or _NoPolicies(),
        prometheus,
        traffic,
        service,
        app[ROLLOUT_METRICS],
    )
    service.guard_stage_change(runner.guard_promotion)
    service.on_stage_change(runner.on_stage_change)
    app[rollout_api.RUNNER] = runner
    result = await traffic.start()
    if not result.published:
        log.error("the stored routing could not be published: %s", result.error)
    await runner.load()
    log.info("storage ready: data in %s", data_dir)
    yield
    prometheus.close()
    await database.dispose()


def _listener_of(settings: Settings) -> ListenerAddress:
    host, port = parse_listen(settings.integrations.envoy_listener, "AEGIS_ENVOY_LISTENER")
    return ListenerAddress(host, port)


def _rds_of(settings: Settings) -> RdsPolling:
    return RdsPolling(settings.xds.rds_refresh_delay_ms, settings.xds.rds_request_timeout_ms)


async def _endpoint_expiry(app: web.Application) -> AsyncIterator[None]:
    async def sweep() -> None:
        while True:
            await asyncio.sleep(ENDPOINT_EXPIRY_INTERVAL)
            try:
                await app[traffic_api.TRAFFIC].expire_endpoints()
            except Exception:
                log.exception("endpoint expiry sweep failed")

    task = asyncio.get_running_loop().create_task(sweep())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


class _NoPolicies:
    """AEGIS_POLICIES is not set: no rollout starts by itself."""

    policies: tuple[Policy, ...] = ()


async def _rollout_loop(app: web.Application) -> AsyncIterator[None]:
    tick_seconds = app[SETTINGS].integrations.rollout_tick_seconds

    async def loop() -> None:
        while True:
            await asyncio.sleep(tick_seconds)
            await app[rollout_api.RUNNER].tick_all()

    task = asyncio.get_running_loop().create_task(loop())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _policy_watch(app: web.Application) -> AsyncIterator[None]:
    """Re-read the policy files when they change, and at once on SIGHUP."""
    policies = app[rollout_api.POLICIES]
    if policies is None:
        yield
        return
    wake = asyncio.Event()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.add_signal_handler(signal.SIGHUP, wake.set)

    async def watch() -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), app[SETTINGS].integrations.policy_reload_seconds)
            forced = wake.is_set()
            wake.clear()
            if forced or await asyncio.to_thread(policies.changed_since_last_check):
                ok = await asyncio.to_thread(policies.reload)
                log.log(
                    logging.INFO if ok else logging.ERROR,
                    "policies reloaded: %d in force, %d error(s)",
                    len(policies.policies),
                    len(policies.errors),
                )
                for error in policies.errors:
                    log.error("policy error: %s", error)

    task = loop.create_task(watch())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _healthz(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})
