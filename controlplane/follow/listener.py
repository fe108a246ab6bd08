"""One dedicated PostgreSQL connection that LISTENs for change notifications and survives outages.

Not a connection from SQLAlchemy's pool: the pool would hand it to other work and
reset it (UNLISTEN). A notification sent while the connection is down is never
delivered, so after every (re)connect the listener calls `on_connected` (a full
reconcile) once LISTEN is in place: nothing committed after that moment can be missed,
and everything before it is read. A lost connection is noticed at once when the
server closes it (termination listener) and within `health_interval` seconds when
the network drops it silently (a health query that times out).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import asyncpg
from sqlalchemy.engine import make_url

from registry.changes import CHANNEL, Change, parse_change

log = logging.getLogger(__name__)

# Seconds between health queries on an idle connection (a silent network drop is seen this late).
HEALTH_INTERVAL = 2.0
# Reconnect backoff: starts small (a restarted server is back in a second), capped.
FIRST_BACKOFF = 0.1
MAX_BACKOFF = 5.0
CONNECT_TIMEOUT = 5.0


def asyncpg_dsn(database_url: str) -> str:
    """The libpq-style DSN asyncpg takes, from SQLAlchemy's `postgresql+asyncpg://` URL."""
    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


class ChangeListener:
    def __init__(
        self, dsn: str, *, on_change: Callable[[Change], None], on_connected: Callable[[], Awaitable[None]],
        name: str = "aegis-follow", health_interval: float = HEALTH_INTERVAL,
    ) -> None:
        self._dsn = dsn
        # The connection's application_name: which replica's listener it is in pg_stat_activity.
        self.name = name
        self.on_change = on_change
        self.on_connected = on_connected
        self.health_interval = health_interval
        self.connected = False
        self.connections = 0  # successful (re)connects, for the log

    async def run(self) -> None:
        """Listen until cancelled, reconnecting with a growing backoff after each loss."""
        backoff = FIRST_BACKOFF
        while True:
            try:
                await self._listen_once()
                backoff = FIRST_BACKOFF
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # The server is down or restarting: xDS is served from memory meanwhile.
                log.warning("change listener: %s; reconnecting in %.1f s", _describe(exc), backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)

    async def _listen_once(self) -> None:
        """One connection's life: LISTEN, reconcile, then watch it until it is lost."""
        connection = await asyncpg.connect(
            self._dsn, timeout=CONNECT_TIMEOUT, server_settings={"application_name": self.name}
        )
        lost = asyncio.Event()
        try:
            connection.add_termination_listener(lambda _connection: lost.set())
            await connection.add_listener(CHANNEL, self._notified)
            self.connected = True
            self.connections += 1
            log.info("change listener connected (connection %d); reconciling", self.connections)
            await self.on_connected()
            while not lost.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lost.wait(), self.health_interval)
                if not lost.is_set():
                    await connection.fetchval("SELECT 1", timeout=self.health_interval)
            log.warning("change listener: the connection was closed; reconnecting")
        finally:
            self.connected = False
            # terminate, not close: close waits on a socket that may be dead.
            connection.terminate()

    def _notified(self, _connection: object, _pid: int, _channel: str, payload: str) -> None:
        change = parse_change(payload)
        if change is None:
            log.warning("change listener: ignored a notification that is not ours: %.80r", payload)
            return
        self.on_change(change)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
