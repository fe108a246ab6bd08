"""Process wiring: builds the aiohttp application from settings and owns its lifecycle."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from controlplane.observability import METRICS_REGISTRY, metrics_endpoint, new_metrics_registry
from controlplane.settings import Settings, url_signing_key
from registry import api as registry_api
from registry.blobs import BlobStore
from registry.http import TOKENS, json_errors
from registry.metrics import RegistryMetrics
from registry.service import RegistryService
from registry.store import Database, RegistryStore

log = logging.getLogger(__name__)

SETTINGS = web.AppKey("settings", Settings)
DATABASE = web.AppKey("database", Database)


def create_app(settings: Settings) -> web.Application:
    """The whole HTTP surface; storage opens in the app's startup, not here."""
    # client_max_size bounds only read()/post(); uploads stream past it.
    app = web.Application(middlewares=[json_errors])
    app[SETTINGS] = settings
    app[TOKENS] = settings.security.tokens
    metrics_registry = new_metrics_registry()
    app[METRICS_REGISTRY] = metrics_registry
    app[registry_api.METRICS] = RegistryMetrics(metrics_registry)
    app.cleanup_ctx.append(_storage)
    app.router.add_get("/metrics", metrics_endpoint)
    app.router.add_get("/healthz", _healthz)
    registry_api.add_routes(app)
    return app


async def _storage(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    data_dir = settings.server.data_dir
    await asyncio.to_thread(data_dir.mkdir, parents=True, exist_ok=True)
    blobs = BlobStore(data_dir / "blobs")
    await asyncio.to_thread(blobs.prepare)
    database = Database(settings.server.effective_database_url)
    await database.create_schema()
    service = RegistryService(RegistryStore(database), blobs, settings.security.keyring)
    service.on_stage_change(registry_api.record_stage_changes(app[registry_api.METRICS]))
    app[DATABASE] = database
    app[registry_api.BLOBS] = blobs
    app[registry_api.SERVICE] = service
    app[registry_api.CONFIG] = registry_api.RegistryApiConfig(
        max_artifact_bytes=settings.registry.max_artifact_bytes,
        download_url_key=await asyncio.to_thread(url_signing_key, settings),
        download_url_ttl_seconds=settings.registry.download_url_ttl_seconds,
    )
    log.info("storage ready: data in %s", data_dir)
    yield
    await database.dispose()


async def _healthz(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})
