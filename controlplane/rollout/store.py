"""Rollout rows and their decisions: what a restarted process resumes from."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Column, DateTime, Index, text
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field, SQLModel, col, func, select

from controlplane.rollout.machine import ACTIVE_PHASES, Phase, RolloutState
from registry.changes import ChangeKind
from registry.errors import Conflict
from registry.store import Database, as_utc


class RolloutRow(SQLModel, table=True):
    __tablename__ = "rollouts"
    # One active rollout per model, whatever races the application loses.
    __table_args__ = (
        Index(
            "uq_rollout_active_model",
            "model_name",
            unique=True,
            sqlite_where=text("active"),
            postgresql_where=text("active"),
        ),
    )
    __change_kind__ = ChangeKind.ROLLOUT

    id: int | None = Field(default=None, primary_key=True)
    model_name: str = Field(max_length=128, index=True)
    active: bool = Field(index=True)
    # The whole RolloutState as JSON: the machine's state is one value, stored as one.
    state: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    started_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    started_by: str


class DecisionRow(SQLModel, table=True):
    __tablename__ = "rollout_decisions"

    id: int | None = Field(default=None, primary_key=True)
    rollout_id: int = Field(foreign_key="rollouts.id", index=True)
    at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    phase: str
    step_index: int
    canary_weight: int
    reason: str
    # The inputs behind the decision: verdicts with their values, the command, the ack.
    inputs: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


def state_to_json(state: RolloutState) -> dict[str, Any]:
    document = dataclasses.asdict(state)
    document["phase"] = state.phase.value
    return document


def state_from_json(document: dict[str, Any]) -> RolloutState:
    known = {f.name for f in dataclasses.fields(RolloutState)}
    values = {key: value for key, value in document.items() if key in known}
    values["phase"] = Phase(values["phase"])
    return RolloutState(**values)


class RolloutStore:
    def __init__(self, database: Database) -> None:
        self.database = database

    async def create(self, state: RolloutState, *, started_by: str) -> int:
        try:
            async with self.database.transaction() as session:
                row = RolloutRow(
                    model_name=state.model_name,
                    active=True,
                    state=state_to_json(state),
                    started_at=datetime.now(UTC),
                    started_by=started_by,
                )
                session.add(row)
                await session.flush()
                assert row.id is not None
                return row.id
        except IntegrityError as exc:
            raise Conflict(
                f"{state.model_name} already has an active rollout; abort or finish it first"
            ) from exc

    async def save(
        self, rollout_id: int, state: RolloutState, *, reason: str, inputs: dict[str, Any]
    ) -> None:
        """Store the new state and, when something was decided, the decision: one transaction."""
        async with self.database.transaction() as session:
            row = await session.get(RolloutRow, rollout_id)
            assert row is not None
            row.state = state_to_json(state)
            row.active = state.phase in ACTIVE_PHASES
            session.add(row)
            if reason:
                session.add(
                    DecisionRow(
                        rollout_id=rollout_id,
                        at=datetime.now(UTC),
                        phase=state.phase.value,
                        step_index=state.step_index,
                        canary_weight=state.canary_weight,
                        reason=reason,
                        inputs=inputs,
                    )
                )

    async def active_of(self, model_name: str) -> tuple[int, RolloutState] | None:
        """A model's active rollout, if it has one."""
        query = select(RolloutRow).where(col(RolloutRow.active), RolloutRow.model_name == model_name)
        async with self.database.transaction() as session:
            row = (await session.exec(query)).first()
        return None if row is None or row.id is None else (row.id, state_from_json(row.state))

    async def active(self) -> list[tuple[int, RolloutState]]:
        async with self.database.transaction() as session:
            rows = (await session.exec(select(RolloutRow).where(col(RolloutRow.active)))).all()
        return [(row.id, state_from_json(row.state)) for row in rows if row.id is not None]

    async def latest(
        self, model_name: str, *, decisions: int = 20
    ) -> tuple[RolloutRow, list[DecisionRow]] | None:
        """A model's newest rollout with its newest decisions."""
        history = await self.history(model_name, limit=1)
        if not history:
            return None
        row = history[0][0]
        assert row.id is not None
        return row, await self.decisions(row.id, limit=decisions)

    async def one(self, model_name: str, rollout_id: int) -> RolloutRow | None:
        async with self.database.transaction() as session:
            row = await session.get(RolloutRow, rollout_id)
        return row if row is not None and row.model_name == model_name else None

    async def decisions(
        self, rollout_id: int, *, limit: int, before: int | None = None
    ) -> list[DecisionRow]:
        """A rollout's decisions, newest first; `before` (a decision id) pages back."""
        query = select(DecisionRow).where(DecisionRow.rollout_id == rollout_id)
        if before is not None:
            query = query.where(col(DecisionRow.id) < before)
        async with self.database.transaction() as session:
            rows = await session.exec(query.order_by(col(DecisionRow.id).desc()).limit(limit))
            return list(rows.all())

    async def history(
        self, model_name: str, *, limit: int, before: int | None = None
    ) -> list[tuple[RolloutRow, int, datetime | None]]:
        """A model's rollouts, newest first, each with its decision count and last decision time."""
        query = select(RolloutRow).where(RolloutRow.model_name == model_name)
        if before is not None:
            query = query.where(col(RolloutRow.id) < before)
        async with self.database.transaction() as session:
            rows = list((await session.exec(query.order_by(col(RolloutRow.id).desc()).limit(limit))).all())
            ids = [row.id for row in rows]
            counts = (
                await session.exec(
                    select(DecisionRow.rollout_id, func.count(), func.max(DecisionRow.at))
                    .where(col(DecisionRow.rollout_id).in_(ids))
                    .group_by(col(DecisionRow.rollout_id))
                )
            ).all() if ids else []
        summary: dict[int, tuple[int, datetime | None]] = {
            rollout_id: (count, as_utc(last) if last is not None else None)
            for rollout_id, count, last in counts
        }
        return [(row, *summary.get(row.id or 0, (0, None))) for row in rows]

    async def latest_per_model(self) -> list[RolloutRow]:
        async with self.database.transaction() as session:
            rows = (await session.exec(select(RolloutRow).order_by(col(RolloutRow.id)))).all()
        latest: dict[str, RolloutRow] = {}
        for row in rows:
            latest[row.model_name] = row
        return [latest[name] for name in sorted(latest)]
