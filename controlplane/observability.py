"""Process metrics and logging: one CollectorRegistry per app, served at /metrics."""

from __future__ import annotations

import logging

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

METRICS_REGISTRY = web.AppKey("metrics_registry", CollectorRegistry)


def new_metrics_registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


async def metrics_endpoint(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS_REGISTRY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def configure_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # aiohttp's access log line includes the query string, which for signed
    # download URLs holds a signature: keep the access log quiet.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
