"""Received Alertmanager alerts: one row per delivery acted on, keyed so that a re-send is a duplicate."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, DateTime
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field, SQLModel, col, select

from registry.store import Database


class AlertRow(SQLModel, table=True):
    # `alert_events` (keyed by fingerprint, startsAt and status only) was the earlier table;
    # its key let two fingerprint-less alerts about different models collide.
    __tablename__ = "alert_deliveries"

    id: int | None = Field(default=None, primary_key=True)
    dedupe_key: str = Field(max_length=64, unique=True)
    fingerprint: str = Field(max_length=64)
    starts_at: str = Field(max_length=64)
    status: str = Field(max_length=16)
    alertname: str
    model_name: str | None = None
    received_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    action: str


class AlertStore:
    def __init__(self, database: Database) -> None:
        self.database = database

    async def seen(self, dedupe_key: str) -> bool:
        async with self.database.transaction() as session:
            found = await session.exec(select(AlertRow.id).where(AlertRow.dedupe_key == dedupe_key))
            return found.first() is not None

    async def record(self, alert: AlertRow) -> bool:
        """Store a handled alert; False when another replica recorded the same delivery first."""
        try:
            async with self.database.transaction() as session:
                session.add(alert)
        except IntegrityError:
            return False
        return True

    async def recent(self, *, limit: int) -> list[AlertRow]:
        """The newest deliveries first: what the console lists."""
        async with self.database.transaction() as session:
            found = await session.exec(select(AlertRow).order_by(col(AlertRow.id).desc()).limit(limit))
            return list(found.all())
