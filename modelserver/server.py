"""The model server's lifecycle: download and verify, then serve and announce; close undoes it in reverse.

Nothing is served before the artifact has verified, and the endpoint is announced
only once the port is listening, so the control plane never routes to a server
that cannot answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web

from modelserver.announce import EndpointAnnouncer, EndpointRegistration
from modelserver.app import create_app
from modelserver.artifact import VerifiedArtifact, fetch_verified_artifact
from modelserver.settings import ModelServerSettings, announced_address
from registry.signing import Keyring

log = logging.getLogger(__name__)

# Seconds: connecting should be quick; a read may stall while the registry streams a large blob.
CLIENT_TIMEOUT = aiohttp.ClientTimeout(total=None, connect=10, sock_read=60)


@dataclass
class RunningModelServer:
    """A started server; `close()` withdraws the endpoint, stops serving and removes temporary files."""

    settings: ModelServerSettings
    artifact: VerifiedArtifact
    app: web.Application
    port: int
    announcer: EndpointAnnouncer
    _resources: contextlib.AsyncExitStack = field(repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.settings.host}:{self.port}"

    async def close(self) -> None:
        await self._resources.aclose()


async def start_model_server(
    settings: ModelServerSettings, *, keyring: Keyring, draw: Callable[[], float] = random.random
) -> RunningModelServer:
    """Download, verify, listen, announce. Raises ModelServerError (and serves nothing) on a bad artifact."""
    resources = contextlib.AsyncExitStack()
    try:
        session = await resources.enter_async_context(aiohttp.ClientSession(timeout=CLIENT_TIMEOUT))
        data_dir = settings.data_dir
        if data_dir is None:
            data_dir = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="aegis-model-"))
            resources.callback(shutil.rmtree, data_dir, ignore_errors=True)
        artifact = await fetch_verified_artifact(
            session, settings.registry_url, settings.model_name, settings.version,
            token=settings.token, data_dir=data_dir, keyring=keyring,
        )
        app = create_app(artifact, faults=settings.faults, admin_token=settings.admin_token, draw=draw)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        resources.push_async_callback(runner.cleanup)
        await web.TCPSite(runner, settings.host, settings.port).start()
        port = int(runner.addresses[0][1])
        registration = EndpointRegistration(
            settings.model_name, settings.version, announced_address(settings), port, settings.ttl_seconds
        )
        announcer = EndpointAnnouncer(session, settings.registry_url, registration, token=settings.token)
        stop_announcing = asyncio.Event()
        announcing = asyncio.create_task(announcer.run(stop_announcing))
        # Closed first: the endpoint is withdrawn while the port still answers in-flight requests.
        resources.push_async_callback(_withdraw, announcer, stop_announcing, announcing)
    except BaseException:
        await resources.aclose()
        raise
    log.info("serving %s %s on http://%s:%d", artifact.model_name, artifact.version, settings.host, port)
    return RunningModelServer(settings, artifact, app, port, announcer, resources)


async def _withdraw(
    announcer: EndpointAnnouncer, stop: asyncio.Event, announcing: asyncio.Task[None]
) -> None:
    stop.set()
    await announcing
    await announcer.withdraw()


async def serve(settings: ModelServerSettings, *, keyring: Keyring, stop: asyncio.Event) -> None:
    """Run until `stop` is set; a stop during download or verification abandons the start."""
    starting = asyncio.create_task(start_model_server(settings, keyring=keyring))
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await starting
        return
    stopping.cancel()
    server = starting.result()
    try:
        await stop.wait()
    finally:
        log.info("stopping %s %s", settings.model_name, settings.version)
        await server.close()
