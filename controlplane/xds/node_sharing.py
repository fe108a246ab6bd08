"""Envoy nodes shared between replicas through the database, in batches, not a write per poll.

Each replica writes what changed in its node table (acknowledged, served and
rejected versions per type, streams, when last seen) every FLUSH_SECONDS, or at
once after an acknowledgement, in one statement per batch, and re-announces its
live nodes every `heartbeat` seconds. Times are stored as ages at the moment of
writing, and the write time is the database's own clock, so no two replicas'
clocks are ever compared. Every write tells the other replicas (a `nodes` change
notification); they read the table again (`refresh`) and merge it with their own
nodes (NodeTracker.replace_remote). A node no replica re-announced within the node
timeout is ignored, so a dead replica's nodes drop out like silent ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, DateTime, Float, func
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlmodel import Field, SQLModel, col, delete, select

from controlplane.xds.cache import Publisher
from controlplane.xds.nodes import (
    NODE_CLUSTER_MAX_CHARS,
    NODE_ID_MAX_CHARS,
    NodeState,
    NodeTracker,
    Transport,
    TypeState,
)
from controlplane.xds.snapshot import ResourceType
from registry.changes import ChangeKind, note_change
from registry.store import Database

log = logging.getLogger(__name__)

# Seconds between writes of the node table's changes (an acknowledgement writes sooner).
FLUSH_SECONDS = 0.2
# After an acknowledgement, wait this long for the rest of the wave before writing.
ACK_BATCH_SECONDS = 0.01
# Rows per INSERT statement: PostgreSQL takes at most 32,767 parameters in one.
ROWS_PER_STATEMENT = 1000
# Rows nobody re-announced for this many node timeouts are deleted.
FORGET_AFTER_TIMEOUTS = 4
# Seconds between log lines about failed writes while the database is away.
FAILURE_LOG_INTERVAL = 30.0


_KEY = ("replica", "node_id")


class SharedNodeRow(SQLModel, table=True):
    __tablename__ = "xds_node_states"

    replica: str = Field(primary_key=True, max_length=255)
    node_id: str = Field(primary_key=True, max_length=NODE_ID_MAX_CHARS)
    cluster: str = Field(max_length=NODE_CLUSTER_MAX_CHARS)
    transport: str = Field(max_length=16)
    authenticated: bool
    streams: int
    # Seconds before `updated_at` that the node was first and last seen.
    first_seen_ago: float = Field(sa_column=Column(Float, nullable=False))
    last_seen_ago: float = Field(sa_column=Column(Float, nullable=False))
    # type URL -> {acked, served, rejected, message, confirmed_ago}
    types: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    updated_at: datetime = Field(
        sa_column=Column(DateTime(timezone=True), nullable=False, server_default=func.now(), index=True)
    )


def _row_of(node: NodeState, *, replica: str, now: float) -> dict[str, Any]:
    """A node as ages from `now` (pure). A streaming node is live now: seen and confirmed now."""
    streaming = node.streams > 0
    return {
        "replica": replica,
        "node_id": node.node_id,
        "cluster": node.cluster,
        "transport": node.transport.value,
        "authenticated": node.authenticated,
        "streams": node.streams,
        "first_seen_ago": max(0.0, now - node.first_seen),
        "last_seen_ago": 0.0 if streaming else max(0.0, now - node.last_seen),
        "types": {
            str(kind): {
                "acked": state.acked_version,
                "served": state.served_version,
                "rejected": list(state.rejected_versions),
                "message": state.rejection_message,
                "confirmed_ago": _ago(state.confirmed_at, now=now, streaming=streaming),
            }
            for kind, state in node.types.items()
        },
    }


def _ago(moment: float | None, *, now: float, streaming: bool) -> float | None:
    if moment is None:
        return None
    return 0.0 if streaming else max(0.0, now - moment)


def _node_of(row: SharedNodeRow, *, written_ago: float, now: float) -> NodeState:
    """A node another replica shared, with its times on this process's clock (pure)."""
    node = NodeState(
        node_id=row.node_id, cluster=row.cluster,
        first_seen=now - written_ago - row.first_seen_ago, last_seen=now - written_ago - row.last_seen_ago,
        authenticated=row.authenticated, transport=Transport(row.transport), streams=row.streams,
        replica=row.replica,
    )
    for type_url, shared in row.types.items():
        confirmed_ago = shared.get("confirmed_ago")
        node.types[ResourceType(type_url)] = TypeState(
            acked_version=str(shared.get("acked", "")),
            served_version=str(shared.get("served", "")),
            rejected_versions=[str(v) for v in shared.get("rejected", [])],
            rejection_message=str(shared.get("message", "")),
            confirmed_at=None if confirmed_ago is None else now - written_ago - float(confirmed_ago),
        )
    return node


class NodeSharing:
    """Writes this replica's node changes in batches and reads the other replicas' nodes."""

    def __init__(
        self, database: Database, nodes: NodeTracker, publisher: Publisher, *, replica: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.database = database
        self.nodes = nodes
        self.publisher = publisher
        self.replica = replica
        self.clock = clock
        # Re-announce live nodes well within the node timeout, so none drops out elsewhere.
        self.heartbeat = max(FLUSH_SECONDS, min(nodes.stale_after / 3, 5.0))
        self._wake = asyncio.Event()
        self._last_cleanup = 0.0
        self._last_failure_log = -FAILURE_LOG_INTERVAL
        nodes.on_ack = self._wake.set

    async def run(self) -> None:
        """Write the node table's changes every FLUSH_SECONDS, sooner after an acknowledgement."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), FLUSH_SECONDS)
            if self._wake.is_set():
                await asyncio.sleep(ACK_BATCH_SECONDS)
            self._wake.clear()
            try:
                await self.flush()
            except Exception as exc:
                # The database is away: xDS goes on from memory; the changes are written later.
                now = self.clock()
                if now - self._last_failure_log >= FAILURE_LOG_INTERVAL:
                    self._last_failure_log = now
                    log.warning("Envoy node states not shared (retrying): %s", exc)

    async def flush(self) -> int:
        """Write what changed since the last write; returns the number of nodes written."""
        now = self.clock()
        changed = self.nodes.take_shared(now=now, heartbeat=self.heartbeat)
        if not changed:
            return 0
        rows = [_row_of(node, replica=self.replica, now=now) for node in changed]
        try:
            async with self.database.transaction() as session:
                for start in range(0, len(rows), ROWS_PER_STATEMENT):
                    insert = postgresql_insert(SharedNodeRow).values(rows[start:start + ROWS_PER_STATEMENT])
                    updated = {name: insert.excluded[name] for name in rows[0] if name not in _KEY}
                    await session.exec(
                        insert.on_conflict_do_update(
                            index_elements=["replica", "node_id"], set_={**updated, "updated_at": func.now()}
                        )
                    )
                if now - self._last_cleanup >= self.nodes.stale_after:
                    self._last_cleanup = now
                    horizon = func.now() - func.make_interval(
                        0, 0, 0, 0, 0, 0, self.nodes.stale_after * FORGET_AFTER_TIMEOUTS
                    )
                    await session.exec(delete(SharedNodeRow).where(col(SharedNodeRow.updated_at) < horizon))
                await note_change(session, ChangeKind.NODES)
        except BaseException:
            self.nodes.reshare(node.node_id for node in changed)
            raise
        return len(rows)

    async def refresh(self) -> None:
        """Read the other replicas' nodes again, and rebuild: their acknowledgements may let
        held-back routes go out and drained clusters leave."""
        written_ago = func.extract("epoch", func.now() - col(SharedNodeRow.updated_at))
        horizon = func.now() - func.make_interval(0, 0, 0, 0, 0, 0, self.nodes.stale_after)
        query = select(SharedNodeRow, written_ago).where(
            SharedNodeRow.replica != self.replica, col(SharedNodeRow.updated_at) > horizon
        )
        async with self.database.transaction() as session:
            found = (await session.exec(query)).all()
        now = self.clock()
        self.nodes.replace_remote(_node_of(row, written_ago=float(ago), now=now) for row, ago in found)
        self.publisher.request_rebuild()
