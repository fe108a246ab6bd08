"""Tables for announced endpoints and traffic settings; the database is the source of truth.

Endpoint expiry is wall-clock time so that a restarted process agrees with the
one before it about which endpoints are still alive.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Column, DateTime
from sqlmodel import Field, SQLModel, col, delete, select

from controlplane.xds.desired import TrafficSetting
from registry.changes import ChangeKind, note_change
from registry.store import Database, as_utc


class EndpointRow(SQLModel, table=True):
    __tablename__ = "traffic_endpoints"
    __change_kind__ = ChangeKind.ENDPOINTS

    model_name: str = Field(primary_key=True, max_length=128)
    version: str = Field(primary_key=True, max_length=64)
    address: str = Field(primary_key=True, max_length=64)
    port: int = Field(primary_key=True)
    ttl_seconds: int
    expires_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    registered_by: str


class TrafficRow(SQLModel, table=True):
    __tablename__ = "traffic_settings"
    __change_kind__ = ChangeKind.TRAFFIC

    model_name: str = Field(primary_key=True, max_length=128)
    weights: dict[str, int] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    match: list[dict[str, str]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    mirror_percent: int = 0
    # Who drives this model's weights: "operator" (PUT /v1/traffic) or "rollout".
    owner: str = "operator"
    updated_by: str = ""
    updated_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


class TrafficStore:
    def __init__(self, database: Database) -> None:
        self.database = database

    async def load_endpoints(self, model_name: str | None = None) -> list[EndpointRow]:
        """Every stored endpoint, or one model's."""
        query = select(EndpointRow)
        if model_name is not None:
            query = query.where(EndpointRow.model_name == model_name)
        async with self.database.transaction() as session:
            rows = list((await session.exec(query)).all())
        for row in rows:
            row.expires_at = as_utc(row.expires_at)
        return rows

    async def upsert_endpoint(self, row: EndpointRow) -> None:
        async with self.database.transaction() as session:
            existing = await session.get(
                EndpointRow, (row.model_name, row.version, row.address, row.port)
            )
            if existing is None:
                session.add(row)
            else:
                existing.ttl_seconds = row.ttl_seconds
                existing.expires_at = row.expires_at
                existing.registered_by = row.registered_by
                session.add(existing)

    async def delete_endpoint(self, model_name: str, version: str, address: str, port: int) -> bool:
        async with self.database.transaction() as session:
            existing = await session.get(EndpointRow, (model_name, version, address, port))
            if existing is None:
                return False
            await session.delete(existing)
            return True

    async def delete_expired(self, now: datetime) -> None:
        async with self.database.transaction() as session:
            gone = await session.exec(
                delete(EndpointRow).where(col(EndpointRow.expires_at) < now).returning(
                    col(EndpointRow.model_name)
                )
            )
            # A bulk delete bypasses the unit of work: announce its models here.
            for model_name in set(gone.scalars().all()):
                await note_change(session, ChangeKind.ENDPOINTS, model_name)

    async def load_settings(self, model_name: str | None = None) -> dict[str, TrafficRow]:
        query = select(TrafficRow)
        if model_name is not None:
            query = query.where(TrafficRow.model_name == model_name)
        async with self.database.transaction() as session:
            rows = (await session.exec(query)).all()
        return {row.model_name: row for row in rows}

    async def load_setting(self, model_name: str) -> TrafficRow | None:
        async with self.database.transaction() as session:
            return await session.get(TrafficRow, model_name)

    async def save_setting(self, row: TrafficRow) -> None:
        async with self.database.transaction() as session:
            existing = await session.get(TrafficRow, row.model_name)
            if existing is None:
                session.add(row)
                return
            for name in ("weights", "match", "mirror_percent", "owner", "updated_by", "updated_at"):
                setattr(existing, name, getattr(row, name))
            session.add(existing)

    async def delete_setting(self, model_name: str) -> None:
        async with self.database.transaction() as session:
            existing = await session.get(TrafficRow, model_name)
            if existing is not None:
                await session.delete(existing)


def setting_of(row: TrafficRow) -> TrafficSetting:
    return TrafficSetting(
        weights=dict(row.weights),
        match=tuple(dict(m) for m in row.match),
        mirror_percent=row.mirror_percent,
    )
