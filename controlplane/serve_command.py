"""`aegis serve`: settings, the bootstrap admin token, the garbage collector's tuning, and the app run."""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
from pathlib import Path

from aiohttp import web

from controlplane.app import create_app
from controlplane.observability import configure_logging
from controlplane.settings import Settings, kept_secret, load_settings
from registry.auth import TokenTable

log = logging.getLogger("aegis")


def serve(*, config_file: Path | None) -> int:
    configure_logging(os.environ.get("AEGIS_LOG_LEVEL", "INFO"))
    settings = load_settings(config_file=config_file)
    settings = _with_bootstrap_token(settings)
    app = create_app(settings)
    app.on_startup.append(_tune_garbage_collection)
    web.run_app(
        app, host=settings.server.host, port=settings.server.port,
        access_log=None, print=lambda message: log.info(message),
        # Held xDS long-polls end within the hold time; do not wait a minute for them.
        shutdown_timeout=2.0,
        # A fleet of Envoys reconnecting at once must not be refused at the listen queue.
        backlog=4096,
    )
    return 0


# Objects allocated (net) between young-generation collections; CPython's default is 700.
# Thousands of ADS streams keep a large live heap, and every fan-out leaves objects
# that outlive a young collection (each stream's pending read and wait): at 700, a
# full collection ran about once per weight change at 5,000 streams and held the
# event loop 0.4-0.7 s of a ~1 s fan-out. At 10,000 it runs every dozen changes or
# so; a young collection stays a few milliseconds, and garbage in cycles waits a
# little longer (at most this many objects).
YOUNG_COLLECTION_THRESHOLD = 100_000


async def _tune_garbage_collection(_app: web.Application) -> None:
    # Everything built at start-up lives as long as the process: moved out of the
    # collector's reach, full collections stop scanning it on every xDS poll's garbage.
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, middle, old)


def _with_bootstrap_token(settings: Settings) -> Settings:
    """With no tokens configured, make an admin token in the data directory, never in the log."""
    if settings.security.tokens.entries:
        return settings
    path = settings.server.data_dir / "admin.token"
    tokens = TokenTable.parse(f"admin:{kept_secret(path)}")
    log.warning(
        "AEGIS_API_TOKENS is not set: an admin token is in %s (use it as AEGIS_TOKEN)", path
    )
    return dataclasses.replace(
        settings, security=dataclasses.replace(settings.security, tokens=tokens)
    )
