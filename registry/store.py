"""The registry's tables and the one place that owns database sessions.

SQLite (the embedded default) and PostgreSQL (several replicas) behind SQLAlchemy's
async engine. "At most one canary and one prod per model" is a partial unique index,
so two concurrent promotions cannot both win whatever the application checked.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import JSON, Column, DateTime, Index, UniqueConstraint, event, text
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlmodel import Field, SQLModel, col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from registry.changes import ChangeKind, ChangeNotifier
from registry.domain import ChangeAction, HistoryEntry, ModelVersion, Stage, StageChange
from registry.errors import Conflict

_EXCLUSIVE = "stage IN ('canary', 'prod')"


class ModelRow(SQLModel, table=True):
    __tablename__ = "registry_models"

    name: str = Field(primary_key=True, max_length=128)
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


class VersionRow(SQLModel, table=True):
    __tablename__ = "registry_versions"
    __table_args__ = (
        UniqueConstraint("model_name", "version", name="uq_registry_version"),
        Index(
            "uq_registry_exclusive_stage", "model_name", "stage", unique=True,
            sqlite_where=text(_EXCLUSIVE), postgresql_where=text(_EXCLUSIVE),
        ),
    )
    __change_kind__ = ChangeKind.REGISTRY

    id: int | None = Field(default=None, primary_key=True)
    model_name: str = Field(foreign_key="registry_models.name", max_length=128, index=True)
    version: str = Field(max_length=64)
    checksum: str = Field(max_length=64)
    size_bytes: int
    signature: str
    key_id: str
    algorithm: str
    stage: str = Field(max_length=16)
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    created_by: str
    extra: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class HistoryRow(SQLModel, table=True):
    __tablename__ = "registry_history"

    id: int | None = Field(default=None, primary_key=True)
    model_name: str = Field(max_length=128, index=True)
    version: str = Field(max_length=64)
    from_stage: str
    to_stage: str
    action: str
    at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    actor: str
    reason: str


class Fence(Protocol):
    """Refuses a transaction (by raising) unless the writer still holds what it acts on."""

    async def check(self, session: AsyncSession) -> None: ...


# The fence of the work running in this task (the leader's term), or None. A context
# variable, so that every store the leader's work reaches is fenced without being told.
_FENCE: ContextVar[Fence | None] = ContextVar("aegis_fence", default=None)


@contextmanager
def fenced(fence: Fence) -> Iterator[None]:
    """Every transaction opened inside (in this task and tasks it starts) checks `fence` first."""
    token = _FENCE.set(fence)
    try:
        yield
    finally:
        _FENCE.reset(token)


class Database:
    """An async engine and its sessions; SQLite gets WAL and write transactions that lock early.

    On PostgreSQL every transaction announces the changes it commits (registry/changes.py):
    other replicas follow them. `notifier.origin` tells a replica its own announcements.
    """

    def __init__(self, url: str, *, notifier: ChangeNotifier | None = None) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        connect_args: dict[str, Any] = {"timeout": 30} if self.is_sqlite else {}
        self.engine: AsyncEngine = create_async_engine(url, connect_args=connect_args)
        self.notifier = notifier or ChangeNotifier()
        self._session_info = {} if self.is_sqlite else self.notifier.session_info()
        if self.is_sqlite:
            _lock_early(self.engine)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """One transaction; under `fenced`, checked by the fence inside it before anything else."""
        async with (
            AsyncSession(self.engine, expire_on_commit=False, info=dict(self._session_info)) as session,
            session.begin(),
        ):
            fence = _FENCE.get()
            if fence is not None:
                await fence.check(session)
            yield session

    async def dispose(self) -> None:
        await self.engine.dispose()


def _lock_early(engine: AsyncEngine) -> None:
    # SQLite's default deferred transaction upgrades its lock at the first write and
    # fails at once (no busy wait) when another writer got there first. BEGIN
    # IMMEDIATE takes the write lock up front, so concurrent writers queue instead.
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def as_utc(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything stored is UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _to_domain(row: VersionRow, history: list[HistoryRow]) -> ModelVersion:
    return ModelVersion(
        model_name=row.model_name,
        version=row.version,
        checksum=row.checksum,
        size_bytes=row.size_bytes,
        signature=row.signature,
        key_id=row.key_id,
        algorithm=row.algorithm,
        stage=Stage(row.stage),
        created_at=as_utc(row.created_at),
        created_by=row.created_by,
        metadata=dict(row.extra),
        history=tuple(
            HistoryEntry(
                from_stage=Stage(h.from_stage), to_stage=Stage(h.to_stage), at=as_utc(h.at),
                actor=h.actor, reason=h.reason, action=ChangeAction(h.action),
            )
            for h in history
        ),
    )


class RegistryStore:
    """Reads and writes model versions and their history; every write is one transaction."""

    def __init__(self, database: Database) -> None:
        self.database = database

    async def get_version(self, model_name: str, version: str) -> ModelVersion | None:
        async with self.database.transaction() as session:
            row = (
                await session.exec(
                    select(VersionRow).where(
                        VersionRow.model_name == model_name, VersionRow.version == version
                    )
                )
            ).first()
            if row is None:
                return None
            history = await _history(session, model_name, version)
            return _to_domain(row, history)

    async def list_versions(self, model_name: str) -> list[ModelVersion]:
        async with self.database.transaction() as session:
            rows = (
                await session.exec(
                    select(VersionRow)
                    .where(VersionRow.model_name == model_name)
                    .order_by(col(VersionRow.id))
                )
            ).all()
            history = (
                await session.exec(
                    select(HistoryRow)
                    .where(HistoryRow.model_name == model_name)
                    .order_by(col(HistoryRow.id))
                )
            ).all()
        by_version: dict[str, list[HistoryRow]] = {}
        for entry in history:
            by_version.setdefault(entry.version, []).append(entry)
        return [_to_domain(row, by_version.get(row.version, [])) for row in rows]


    async def list_models(self) -> list[tuple[str, datetime, list[tuple[str, str]]]]:
        """Each model's name, creation time and (version, stage) pairs in registration order."""
        async with self.database.transaction() as session:
            models = (await session.exec(select(ModelRow).order_by(col(ModelRow.name)))).all()
            rows = (
                await session.exec(
                    select(VersionRow.model_name, VersionRow.version, VersionRow.stage).order_by(
                        col(VersionRow.id)
                    )
                )
            ).all()
        stages: dict[str, list[tuple[str, str]]] = {}
        for model_name, version, stage in rows:
            stages.setdefault(model_name, []).append((version, stage))
        return [(m.name, as_utc(m.created_at), stages.get(m.name, [])) for m in models]

    async def insert_version(self, version: ModelVersion) -> bool:
        """Store a new version with its first history entry; False when (model, version) exists.

        Concurrent first registrations of a model all create its row: the insert does
        nothing when another transaction got there first (ON CONFLICT DO NOTHING on
        both SQLite and PostgreSQL), instead of failing the later ones.
        """
        insert = sqlite_insert if self.database.is_sqlite else postgresql_insert
        try:
            async with self.database.transaction() as session:
                await session.exec(
                    insert(ModelRow)
                    .values(name=version.model_name, created_at=version.created_at)
                    .on_conflict_do_nothing(index_elements=["name"])
                )
                session.add(
                    VersionRow(
                        model_name=version.model_name, version=version.version,
                        checksum=version.checksum, size_bytes=version.size_bytes,
                        signature=version.signature, key_id=version.key_id,
                        algorithm=version.algorithm, stage=version.stage.value,
                        created_at=version.created_at, created_by=version.created_by,
                        extra=version.metadata,
                    )
                )
                await session.flush()
                for entry in version.history:
                    session.add(_history_row(version.model_name, version.version, entry))
        except IntegrityError:
            # The only constraint a new staging version can break is (model, version)
            # being unique: someone registered it between our read and our write.
            return False
        return True

    async def apply_changes(self, changes: list[StageChange], *, at: datetime) -> None:
        """Apply stage changes atomically; Conflict if any version moved meanwhile."""
        try:
            async with self.database.transaction() as session:
                for change in changes:
                    await _apply_one(session, change, at=at)
        except IntegrityError as exc:
            model_name = changes[0].model_name if changes else "?"
            raise Conflict(
                f"another stage change of {model_name} won a race: at most one canary and one "
                "prod version per model; fetch the model and try again"
            ) from exc

    async def referenced_checksums(self) -> set[str]:
        """Every checksum a version row names: the blobs that must be kept."""
        async with self.database.transaction() as session:
            return set((await session.exec(select(VersionRow.checksum).distinct())).all())

    async def named_checksums(self, checksums: list[str]) -> set[str]:
        """Those of `checksums` that a version row names."""
        async with self.database.transaction() as session:
            query = select(VersionRow.checksum).where(col(VersionRow.checksum).in_(checksums))
            return set((await session.exec(query.distinct())).all())


async def _apply_one(session: AsyncSession, change: StageChange, *, at: datetime) -> None:
    row = (
        await session.exec(
            select(VersionRow)
            .where(
                VersionRow.model_name == change.model_name,
                VersionRow.version == change.version,
                VersionRow.stage == change.from_stage.value,
            )
            .with_for_update()
        )
    ).first()
    if row is None:
        raise Conflict(
            f"{change.model_name} {change.version} is no longer {change.from_stage.value}: "
            "another change happened first; fetch the model and try again"
        )
    row.stage = change.to_stage.value
    session.add(row)
    # Flush per change so a uniqueness violation surfaces in order (archive before promote).
    await session.flush()
    entry = HistoryEntry(
        change.from_stage, change.to_stage, at, change.actor, change.reason, change.action
    )
    session.add(_history_row(change.model_name, change.version, entry))


async def _history(session: AsyncSession, model_name: str, version: str) -> list[HistoryRow]:
    return list(
        (
            await session.exec(
                select(HistoryRow)
                .where(HistoryRow.model_name == model_name, HistoryRow.version == version)
                .order_by(col(HistoryRow.id))
            )
        ).all()
    )


def _history_row(model_name: str, version: str, entry: HistoryEntry) -> HistoryRow:
    return HistoryRow(
        model_name=model_name, version=version, from_stage=entry.from_stage.value,
        to_stage=entry.to_stage.value, action=entry.action.value, at=entry.at,
        actor=entry.actor, reason=entry.reason,
    )
