"""The lease row, the replicas' heartbeats, and the fence that checks an epoch inside a transaction.

The lease is one row, `leases(name='leader', holder, epoch, expires_at)`, taken or
renewed with one conditional UPDATE on the database's clock (`now()`), never on a
replica's. The epoch goes up by one whenever the lease changes hands (or is taken
again after it lapsed): it is the fencing token the leader's writes carry.

SQLite serves one replica (a file lock guarantees it), so there the lease is taken
once at start-up, with a new epoch, and never runs out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import BigInteger, Column, DateTime, case, func, update
from sqlmodel import Field, SQLModel, col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from controlplane.cluster.lease import Attempt, AttemptKind
from registry.errors import RegistryError
from registry.store import Database, as_utc

LEADER = "leader"
# Far enough that SQLite's single replica never sees its lease lapse.
_NEVER = datetime(9999, 1, 1, tzinfo=UTC)


class LeaseRow(SQLModel, table=True):
    __tablename__ = "leases"

    name: str = Field(primary_key=True, max_length=64)
    holder: str = Field(max_length=320)
    epoch: int = Field(sa_column=Column(BigInteger, nullable=False))
    expires_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


class ReplicaRow(SQLModel, table=True):
    __tablename__ = "replicas"

    replica_id: str = Field(primary_key=True, max_length=255)
    address: str = Field(max_length=255)
    hostname: str = Field(max_length=255)
    pid: int
    version: str = Field(max_length=64)
    started_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    last_seen: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


class NotLeader(RegistryError):
    """A write of the leader's was refused: its epoch is over. Nothing of it was stored."""

    status = 503
    code = "not_leader"


def replica_of(holder: str) -> str:
    """The replica id in a lease holder (`<replica id>#<process instance>`)."""
    return holder.rpartition("#")[0] or holder


@dataclass(frozen=True)
class LeaseState:
    holder: str
    epoch: int
    expires_at: datetime
    now: datetime  # the database's time when this was read

    @property
    def leader_id(self) -> str | None:
        """The replica that leads, or None when the lease has lapsed."""
        return replica_of(self.holder) if self.holder and self.expires_at > self.now else None


class LeaseStore:
    def __init__(self, database: Database, *, name: str = LEADER) -> None:
        self.database = database
        self.name = name
        self._taken_alone = False

    async def attempt(self, holder: str, *, lease_seconds: float, started_at: float) -> Attempt:
        """Acquire or renew; raises on a database error (the caller counts it as FAILED)."""
        if self.database.is_sqlite:
            return await self._attempt_alone(holder, started_at)
        holder_column, expires_at = col(LeaseRow.holder), col(LeaseRow.expires_at)
        epoch_column = col(LeaseRow.epoch)
        mine = (holder_column == holder) & (expires_at > func.now())
        async with self.database.transaction() as session:
            taken = await session.exec(
                update(LeaseRow)
                .where(
                    col(LeaseRow.name) == self.name, (holder_column == holder) | (expires_at <= func.now())
                )
                # Renewing an unexpired lease keeps the epoch; anything else starts a new one.
                .values(
                    epoch=case((mine, epoch_column), else_=epoch_column + 1),
                    holder=holder,
                    expires_at=func.now() + timedelta(seconds=lease_seconds),
                )
                .returning(epoch_column)
            )
            epoch = taken.scalar_one_or_none()
            if epoch is not None:
                return Attempt(AttemptKind.HELD, started_at, epoch=int(epoch), holder=holder)
            row = await session.get(LeaseRow, self.name)
        assert row is not None, "the leases row is made by migration 0002"
        return Attempt(AttemptKind.TAKEN, started_at, epoch=row.epoch, holder=row.holder)

    async def _attempt_alone(self, holder: str, started_at: float) -> Attempt:
        """SQLite: the first attempt takes the lease whoever held it (the file lock says no other
        process runs); later ones keep it, unless another app of this process took it since."""
        async with self.database.transaction() as session:
            row = await session.get(LeaseRow, self.name)
            assert row is not None, "the leases row is made by migration 0002"
            if not self._taken_alone:
                self._taken_alone = True
                row.holder, row.epoch, row.expires_at = holder, row.epoch + 1, _NEVER
                session.add(row)
            kind = AttemptKind.HELD if row.holder == holder else AttemptKind.TAKEN
            return Attempt(kind, started_at, epoch=row.epoch, holder=row.holder)

    async def read(self) -> LeaseState:
        async with self.database.transaction() as session:
            row = await session.get(LeaseRow, self.name)
            now = await _database_now(session, self.database)
        assert row is not None, "the leases row is made by migration 0002"
        return LeaseState(row.holder, row.epoch, as_utc(row.expires_at), now)

    async def release(self, holder: str) -> None:
        """Give the lease up (a clean shutdown), so the next leader need not wait for it to lapse."""
        if self.database.is_sqlite:
            return
        async with self.database.transaction() as session:
            await session.exec(
                update(LeaseRow)
                .where(col(LeaseRow.name) == self.name, col(LeaseRow.holder) == holder)
                .values(expires_at=func.now())
            )


class EpochFence:
    """Lets a transaction go on only while `holder` still holds the lease under `epoch`.

    On PostgreSQL the lease row is read FOR SHARE: until this transaction ends, nobody
    can take the lease, so the check stays true up to the commit. `on_refused` tells the
    elector at once that this term is over.
    """

    def __init__(
        self, database: Database, *, holder: str, epoch: int, on_refused: Callable[[int], None],
        name: str = LEADER,
    ) -> None:
        self.database = database
        self.holder = holder
        self.epoch = epoch
        self.on_refused = on_refused
        self.name = name

    async def check(self, session: AsyncSession) -> None:
        # FOR SHARE on PostgreSQL; SQLite has no row locks (and needs none: one process).
        found = await session.exec(
            select(LeaseRow.epoch)
            .where(
                col(LeaseRow.name) == self.name,
                col(LeaseRow.holder) == self.holder,
                col(LeaseRow.expires_at) > func.now(),
            )
            .with_for_update(read=True)
        )
        epoch = found.first()
        if epoch != self.epoch:
            self.on_refused(self.epoch)
            raise NotLeader(
                f"this replica's leadership (epoch {self.epoch}) is over: nothing was written; "
                "retry, and the replica that leads now acts on it"
            )


class ReplicaStore:
    def __init__(self, database: Database) -> None:
        self.database = database

    async def heartbeat(self, replica: ReplicaRow) -> None:
        """Insert or refresh this replica's row; `last_seen` on the database's clock."""
        async with self.database.transaction() as session:
            now = await _database_now(session, self.database)
            existing = await session.get(ReplicaRow, replica.replica_id)
            if existing is None:
                session.add(ReplicaRow.model_validate({**replica.model_dump(), "last_seen": now}))
                return
            for name in ("address", "hostname", "pid", "version", "started_at"):
                setattr(existing, name, getattr(replica, name))
            existing.last_seen = now
            session.add(existing)

    async def all(self) -> tuple[list[ReplicaRow], datetime]:
        """Every replica ever seen, by id, with the database's time now."""
        async with self.database.transaction() as session:
            rows = list((await session.exec(select(ReplicaRow).order_by(col(ReplicaRow.replica_id)))).all())
            now = await _database_now(session, self.database)
        for row in rows:
            row.started_at, row.last_seen = as_utc(row.started_at), as_utc(row.last_seen)
        return rows, now


async def _database_now(session: AsyncSession, database: Database) -> datetime:
    if database.is_sqlite:
        return datetime.now(UTC)  # one process: its clock is the only one
    return as_utc((await session.exec(select(func.now()))).one())


def live(row: ReplicaRow, now: datetime, *, within_seconds: float) -> bool:
    return now - row.last_seen <= timedelta(seconds=within_seconds)
