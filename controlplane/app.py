"""Process wiring: builds the aiohttp application from settings and owns its lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from importlib import metadata

from aiohttp import web

from controlplane import alerts, openapi
from controlplane.alert_store import AlertStore
from controlplane.cluster import api as cluster_api
from controlplane.cluster.commands import CommandQueue
from controlplane.cluster.identity import (
    SqliteLock,
    hold_sqlite_database,
    lease_holder,
    replica_id,
    sqlite_path,
)
from controlplane.cluster.leadership import Elector
from controlplane.cluster.lease import LeaseTiming
from controlplane.cluster.store import NotLeader, ReplicaRow
from controlplane.command_pickup import CommandPickup
from controlplane.console.app import create_console
from controlplane.follow.follower import Follower
from controlplane.follow.listener import ChangeListener, asyncpg_dsn
from controlplane.follow.metrics import FollowerCollector
from controlplane.metrics.prometheus import PrometheusSource
from controlplane.migrations import migrate
from controlplane.notifications.notifier import NotificationMetrics, Notifier
from controlplane.observability import METRICS_REGISTRY, new_metrics_registry
from controlplane.rollout import api as rollout_api
from controlplane.rollout.metrics import RolloutMetrics
from controlplane.rollout.policy import Policy
from controlplane.rollout.policy_files import PolicyRegistry
from controlplane.rollout.runner import RolloutRunner
from controlplane.rollout.store import RolloutStore
from controlplane.settings import Settings, SettingsError, parse_listen, url_signing_key
from controlplane.traffic import api as traffic_api
from controlplane.traffic.metrics import TrafficCollector
from controlplane.traffic.service import TrafficService
from controlplane.traffic.store import TrafficStore
from controlplane.xds import server as xds_server
from controlplane.xds.ads import AdsServer
from controlplane.xds.builder import build_snapshot
from controlplane.xds.cache import Publisher, ValidationOutcome, Validator, XdsCache
from controlplane.xds.explain import RejectionExplainer
from controlplane.xds.node_sharing import NodeSharing
from controlplane.xds.nodes import NodeTracker
from controlplane.xds.resources import DesiredState, ListenerAddress, RdsPolling
from controlplane.xds.snapshot import Snapshot
from controlplane.xds.validate import EnvoyUnavailable, find_envoy_binary, validate_with_envoy
from registry import api as registry_api
from registry.blob_stores import open_blob_store
from registry.blobs import BLOB_GRACE_SECONDS, BlobStoreUnavailable
from registry.http import BODY_READ_TIMEOUT, TOKENS, json_errors
from registry.metrics import RegistryMetrics
from registry.routes import add_operations
from registry.service import RegistryService
from registry.store import Database, RegistryStore

log = logging.getLogger(__name__)

SETTINGS = web.AppKey("settings", Settings)
DATABASE = web.AppKey("database", Database)
XDS = xds_server.SERVER
ADS = web.AppKey("ads_server", AdsServer)

ROLLOUT_METRICS = web.AppKey("rollout_metrics", RolloutMetrics)
# With PostgreSQL: how this replica follows the others (None on SQLite: one replica).
FOLLOWER: web.AppKey[Follower | None] = web.AppKey("follower")
CHANGE_LISTENER: web.AppKey[ChangeListener | None] = web.AppKey("change_listener")
NOTIFIER = web.AppKey("notifier", Notifier)
PICKUP = web.AppKey("command_pickup", CommandPickup)
REPLICA = web.AppKey("replica_id", str)
# The open lock file that makes a SQLite database one replica's (None on PostgreSQL).
SQLITE_LOCK: web.AppKey[SqliteLock | None] = web.AppKey("sqlite_lock")

CONSOLE_PREFIX = "/ui/"
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
    xds_metrics = xds_server.XdsMetrics(metrics_registry)
    nodes = NodeTracker(
        stale_after=settings.xds.node_stale_seconds, max_nodes=settings.xds.max_nodes,
        on_evict=xds_metrics.count_eviction,
    )
    # AEGIS_REPLICA_ID, or the id kept in the data directory: the same after a restart.
    replica = replica_id(settings.cluster.replica_id, settings.server.data_dir)
    app[REPLICA] = replica
    cache = XdsCache(_empty_snapshot(_listener_of(settings), _rds_of(settings)))
    publisher = Publisher(cache, nodes, validator=_envoy_validator() if settings.xds.validate else None)
    xds = xds_server.XdsServer(
        cache, nodes, publisher, xds_metrics, settings.xds.hold_seconds,
        credentials=settings.xds.node_credentials, replica_id=replica,
    )
    app[XDS] = xds
    if settings.xds.grpc_listen is not None:
        envoy_binary = find_envoy_binary()
        app[ADS] = AdsServer(
            cache, nodes, publisher, xds_metrics,
            credentials=settings.xds.node_credentials, tls=settings.xds.grpc_tls,
            explainer=RejectionExplainer(cache, nodes, envoy_binary=envoy_binary) if envoy_binary else None,
        )
    app[ROLLOUT_METRICS] = RolloutMetrics(metrics_registry)
    app[NOTIFIER] = Notifier(settings.integrations.notifications, NotificationMetrics(metrics_registry))
    policies_path = settings.integrations.policies_path
    app[rollout_api.POLICIES] = PolicyRegistry(policies_path) if policies_path else None
    app.cleanup_ctx.append(_notifications)
    app.cleanup_ctx.append(_storage)
    app.cleanup_ctx.append(_follow_database)
    app.cleanup_ctx.append(_leadership)
    # After storage: the stored routing is published before any Envoy is answered.
    app.cleanup_ctx.append(_xds_listener)
    app.cleanup_ctx.append(_ads_listener)
    app.cleanup_ctx.append(_endpoint_expiry)
    app.cleanup_ctx.append(_policy_watch)
    app.cleanup_ctx.append(_rollout_loop)
    # With AEGIS_XDS_LISTEN, discovery is served on its own listener (_xds_listener) only.
    on_api = openapi.all_operations()
    if settings.xds.listen is not None:
        on_api = tuple(op for op in on_api if op is not xds_server.DISCOVER)
    add_operations(app, on_api)
    # The operator's console: HTML pages over the same services and roles, outside the API's table.
    # `/ui` first: the console's prefix resource would answer it with a 404.
    app.router.add_get(CONSOLE_PREFIX.rstrip("/"), _to_console)
    app.add_subapp(CONSOLE_PREFIX, create_console(
        prometheus_url=settings.integrations.prometheus_url, public_url=settings.server.public_url,
    ))
    return app


async def _to_console(request: web.Request) -> web.StreamResponse:
    raise web.HTTPPermanentRedirect(CONSOLE_PREFIX)


async def _xds_listener(app: web.Application) -> AsyncIterator[None]:
    """With AEGIS_XDS_LISTEN, the discovery endpoints on their own address, and only there."""
    listen = app[SETTINGS].xds.listen
    if listen is None:
        yield
        return
    xds_app = web.Application(middlewares=[json_errors])
    xds_app[xds_server.SERVER] = app[XDS]
    add_operations(xds_app, [xds_server.DISCOVER])
    # Held long-polls end within the hold time; do not wait longer for them on shutdown.
    runner = web.AppRunner(xds_app, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, listen[0], listen[1], backlog=4096)
    await site.start()
    log.info("xDS discovery on %s (not on the API listener)", site.name)
    yield
    await runner.cleanup()


async def _ads_listener(app: web.Application) -> AsyncIterator[None]:
    """The gRPC ADS listener (AEGIS_XDS_GRPC_LISTEN), in this event loop, after storage."""
    ads = app.get(ADS)
    listen = app[SETTINGS].xds.grpc_listen
    if ads is None or listen is None:
        yield
        return
    await ads.start(*listen)
    yield
    # Streams never end by themselves: end them, then give their last writes a moment.
    await ads.stop(grace=1.0)


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
    blobs = open_blob_store(settings.registry.blob_store, data_dir=data_dir)
    try:
        await blobs.start()
    except BlobStoreUnavailable as exc:
        raise SettingsError(str(exc)) from None
    database_url = settings.server.effective_database_url
    sqlite_file = sqlite_path(database_url)
    # Before anything touches the file: a second replica on it stops here and says why.
    app[SQLITE_LOCK] = await asyncio.to_thread(hold_sqlite_database, sqlite_file) if sqlite_file else None
    database = Database(database_url)
    await migrate(database)
    registry_store = RegistryStore(database)
    service = RegistryService(registry_store, blobs, settings.security.keyring)
    # Before the first upload: whatever a killed process left is garbage now.
    await _sweep_garbage(service, app[registry_api.METRICS])
    service.on_stage_change(registry_api.record_stage_changes(app[registry_api.METRICS]))
    xds = app[XDS]
    traffic = TrafficService(
        TrafficStore(database),
        registry_store,
        xds.publisher,
        listener=_listener_of(settings),
        rds_polling=_rds_of(settings),
        static_endpoints=settings.xds.static_endpoints,
    )
    service.on_stage_change(traffic.on_stage_change)
    app[METRICS_REGISTRY].register(TrafficCollector(traffic))
    app[DATABASE] = database
    app[registry_api.BLOBS] = blobs
    app[registry_api.SERVICE] = service
    app[registry_api.CONFIG] = registry_api.RegistryApiConfig(
        max_artifact_bytes=settings.registry.max_artifact_bytes,
        download_url_key=await asyncio.to_thread(url_signing_key, settings),
        download_url_ttl_seconds=settings.registry.download_url_ttl_seconds,
        public_url=settings.server.public_url,
    )
    if settings.server.public_url_guessed:
        log.warning(
            "AEGIS_LISTEN is a wildcard address: signed download URLs use %s (this machine's "
            "hostname); set AEGIS_PUBLIC_URL to the URL clients reach Aegis at",
            settings.server.public_url,
        )
    app[traffic_api.TRAFFIC] = traffic
    policies = app[rollout_api.POLICIES]
    if policies is not None:
        await asyncio.to_thread(policies.reload)
        app[ROLLOUT_METRICS].policy_errors.set_function(lambda: len(policies.errors))
        app[ROLLOUT_METRICS].policies_loaded.set_function(lambda: len(policies.policies))
        _log_policies(policies, "loaded")
    _warn_what_is_missing(settings, policies)
    prometheus = PrometheusSource(
        settings.integrations.prometheus_url, timeout_seconds=settings.integrations.prometheus_timeout_seconds
    )
    elector = await _elector(settings, database, app[REPLICA])
    commands = CommandQueue(database)
    runner = RolloutRunner(
        RolloutStore(database),
        policies or _NoPolicies(),
        prometheus,
        traffic,
        service,
        app[ROLLOUT_METRICS],
        leadership=elector,
        commands=commands,
    )
    # Told of every transition; queues and returns, so the rollout loop never waits on a webhook.
    runner.notify = app[NOTIFIER].notify
    elector.follow(runner)
    app[cluster_api.ELECTOR] = elector
    cluster_api.register_metrics(app[METRICS_REGISTRY], elector)
    service.guard_stage_change(runner.guard_promotion)
    service.guard_stage_change(traffic.guard_stage_change)
    service.on_stage_change(runner.on_stage_change)
    reports: list[registry_api.PromotionReport] = [runner.promotion_report]
    app[registry_api.PROMOTION_REPORTS] = reports
    app[rollout_api.RUNNER] = runner
    app[alerts.INTAKE] = alerts.AlertIntake(AlertStore(database))
    app[PICKUP] = CommandPickup(commands, runner, app[alerts.INTAKE])
    # Lead at once if the lease is free (the runner then loads the routing and every active
    # rollout); a follower loads the routing alone. Either way before the first poll.
    await elector.step()
    if not elector.leading:
        result = await traffic.start()
        if not result.published:
            log.error("the stored routing could not be published: %s", result.error)
    log.info(
        "storage ready: data in %s, artifacts in %s; replica %s", data_dir, blobs.location, elector.replica_id
    )
    # The sweep repeats while the process lives, for garbage a crashed replica leaves.
    sweeper = asyncio.get_running_loop().create_task(
        _sweep_periodically(service, app[registry_api.METRICS])
    )
    yield
    sweeper.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sweeper
    prometheus.close()
    await database.dispose()
    await blobs.close()
    lock = app[SQLITE_LOCK]
    if lock is not None:
        lock.release()


async def _follow_database(app: web.Application) -> AsyncIterator[None]:
    """With PostgreSQL, follow the other replicas' writes, and share this replica's Envoy nodes."""
    database = app[DATABASE]
    if database.is_sqlite:
        app[FOLLOWER] = app[CHANGE_LISTENER] = None
        yield
        return
    traffic, runner, xds = app[traffic_api.TRAFFIC], app[rollout_api.RUNNER], app[XDS]
    sharing = NodeSharing(database, xds.nodes, xds.publisher, replica=app[REPLICA])
    follower = Follower(
        origin=database.notifier.origin,
        reload_routing=traffic.reload_model,
        reload_rollout=runner.follow,
        reconcile_steps=[traffic.reload_all, runner.follow_all],
        refresh_nodes=sharing.refresh,
        on_commands=app[PICKUP].wake,
        reconcile_seconds=app[SETTINGS].cluster.follow_reconcile_seconds,
    )
    listener = ChangeListener(
        asyncpg_dsn(database.url), on_change=follower.on_change, on_connected=follower.request_reconcile,
        name=f"aegis-follow {app[REPLICA]}"[:63],  # PostgreSQL keeps 63 bytes
    )
    app[FOLLOWER], app[CHANGE_LISTENER] = follower, listener
    collector = FollowerCollector(follower, listener)
    app[METRICS_REGISTRY].register(collector)
    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(job()) for job in (follower.run, listener.run, sharing.run)]
    yield
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    app[METRICS_REGISTRY].unregister(collector)


async def _elector(settings: Settings, database: Database, replica: str) -> Elector:
    now = datetime.now(UTC)
    row = ReplicaRow(
        replica_id=replica, address=settings.server.public_url, hostname=socket.gethostname(),
        pid=os.getpid(), version=_version(), started_at=now, last_seen=now,
    )
    timing = LeaseTiming(settings.cluster.leader_lease_seconds)
    return Elector(database, replica=row, holder=lease_holder(replica), timing=timing)


def _version() -> str:
    try:
        return metadata.version("aegis")
    except metadata.PackageNotFoundError:
        return "unknown"


async def _leadership(app: web.Application) -> AsyncIterator[None]:
    """The lease loop, and the leader's pick-up of commands that followers stored."""
    elector, pickup = app[cluster_api.ELECTOR], app[PICKUP]
    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(elector.run()), loop.create_task(pickup.run())]
    yield
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    # A clean stop hands the lease over at once instead of after it lapses.
    await elector.resign()


async def _sweep_garbage(service: RegistryService, metrics: RegistryMetrics) -> None:
    """Sweep and count; a failed sweep is logged, never fatal: garbage costs only disk."""
    try:
        report = await service.sweep_garbage()
    except Exception:
        log.exception("blob store sweep failed; it is tried again in an hour")
        return
    for kind, files, size in (
        ("upload", report.uploads, report.upload_bytes),
        ("blob", report.blobs, report.blob_bytes),
    ):
        metrics.swept_files.labels(kind).inc(files)
        metrics.swept_bytes.labels(kind).inc(size)


async def _sweep_periodically(service: RegistryService, metrics: RegistryMetrics) -> None:
    while True:
        await asyncio.sleep(BLOB_GRACE_SECONDS)
        await _sweep_garbage(service, metrics)


def _listener_of(settings: Settings) -> ListenerAddress:
    host, port = parse_listen(settings.integrations.envoy_listener, "AEGIS_ENVOY_LISTENER")
    return ListenerAddress(host, port)


def _rds_of(settings: Settings) -> RdsPolling:
    return RdsPolling(settings.xds.rds_refresh_delay_ms, settings.xds.rds_request_timeout_ms)


async def _notifications(app: web.Application) -> AsyncIterator[None]:
    """Deliveries to webhooks, in the background for the process's life (cleaned up after storage)."""
    task = asyncio.get_running_loop().create_task(app[NOTIFIER].run())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _endpoint_expiry(app: web.Application) -> AsyncIterator[None]:
    async def sweep() -> None:
        runner = app[rollout_api.RUNNER]
        while True:
            await asyncio.sleep(ENDPOINT_EXPIRY_INTERVAL)
            if not runner.leading:
                continue  # the leader expires endpoints; followers learn it from the database
            try:
                with runner.acting():
                    await app[traffic_api.TRAFFIC].expire_endpoints()
            except NotLeader as exc:
                log.warning("endpoint expiry not stored: %s", exc.message)
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
        # This loop must outlive every bad file: a dead watcher ignores every later edit and
        # SIGHUP until a restart, while GET /v1/policies still shows the last state.
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), app[SETTINGS].integrations.policy_reload_seconds)
            forced = wake.is_set()
            wake.clear()
            try:
                if forced or await asyncio.to_thread(policies.changed_since_last_check):
                    await asyncio.to_thread(policies.reload)
                    _log_policies(policies, "reloaded")
            except Exception:
                log.exception("policy reload failed; the policies in force stay, the next edit retries")

    task = loop.create_task(watch())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _warn_what_is_missing(settings: Settings, policies: PolicyRegistry | None) -> None:
    """A first start runs without a signing key or policies; say what that means and what to set."""
    if settings.security.keyring.signing_key_id is None:
        log.warning(
            "no model signing key: every registration is refused until one is set; set "
            "AEGIS_MODEL_SIGN_KEY (a secret) or AEGIS_MODEL_SIGN_KEYS (kid:secret,..., the first signs), "
            "or AEGIS_MODEL_SIGN_KEY_FILE, and restart"
        )
    if policies is None:
        log.warning(
            "no rollout policies: AEGIS_POLICIES is not set, so promoting a version to canary starts "
            "no rollout; set AEGIS_POLICIES to a policy file or folder (deploy/policies/ has one)"
        )
    elif not policies.policies:
        log.warning(
            "no rollout policy in force from %s: promoting a version to canary starts no rollout "
            "until a policy there matches the model (`aegis policy validate` checks a file)", policies.path
        )


def _log_policies(policies: PolicyRegistry, what: str) -> None:
    """One line for the outcome, then one per error with its file:line (GET /v1/policies lists them too)."""
    log.log(
        logging.ERROR if policies.errors else logging.INFO,
        "policies %s from %s: %d in force, %d error(s)",
        what, policies.path, len(policies.policies), len(policies.errors),
    )
    for error in policies.errors:
        log.error("policy error: %s", error)
