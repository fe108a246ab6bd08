"""Commands for the leader: what a follower received (an operator's command, an alert) and stored.

A follower inserts the command and waits for its outcome; the leader takes pending
commands (`take`, fenced), acts on each through the same code as a command it received
itself, and stores the outcome (`finish`, fenced). A command the follower gave up on
is cancelled first, so it is either acted on or refused, never both.

A command taken under an older epoch whose leader never finished it (the leader died
while acting) is not replayed blindly: a kind marked `replayable` (alerts and stage
changes, idempotent by construction) is taken again; an operator's rollout command is
finished as failed, with a message telling the operator to look and decide.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, DateTime, or_, update
from sqlmodel import Field, SQLModel, col, select

from registry.store import Database

PENDING, TAKEN, DONE, FAILED, CANCELLED = "pending", "taken", "done", "failed", "cancelled"
# How often a follower looks for its command's outcome (replaced by NOTIFY when it comes).
OUTCOME_POLL_SECONDS = 0.05


class CommandKind(StrEnum):
    ROLLOUT_COMMAND = "rollout_command"  # pause, resume, promote, abort
    START_ROLLOUT = "start_rollout"
    STAGE_CHANGE = "stage_change"  # the registry moved a version: the leader starts or ends rollouts
    ALERT = "alert"

    @property
    def replayable(self) -> bool:
        return self in (CommandKind.STAGE_CHANGE, CommandKind.ALERT)


class CommandRow(SQLModel, table=True):
    __tablename__ = "leader_commands"

    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(max_length=32)
    model_name: str | None = Field(default=None, max_length=128)
    payload: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    state: str = Field(max_length=16, index=True)
    submitted_by: str = Field(max_length=255)
    submitted_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    taken_epoch: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    result: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    finished_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )


@dataclass(frozen=True)
class Outcome:
    """What the leader did: `result` on success, or the error it answered (status, code, message)."""

    ok: bool
    result: dict[str, Any]

    @classmethod
    def of(cls, row: CommandRow) -> Outcome:
        return cls(row.state == DONE, dict(row.result or {}))


class CommandQueue:
    def __init__(self, database: Database) -> None:
        self.database = database

    async def submit(
        self, kind: CommandKind, payload: dict[str, Any], *, model_name: str | None, submitted_by: str
    ) -> int:
        async with self.database.transaction() as session:
            row = CommandRow(
                kind=kind.value, model_name=model_name, payload=payload, state=PENDING,
                submitted_by=submitted_by, submitted_at=datetime.now(UTC),
            )
            session.add(row)
            await session.flush()
            assert row.id is not None
            return row.id

    async def wait(self, command_id: int, *, seconds: float, cancel: bool = True) -> Outcome | None:
        """The outcome once the leader stored it; None when no leader took it in time.

        With `cancel`, a command no leader took is cancelled (so it is never acted on
        after its sender was told it was not); without, it stays for the next leader.
        """
        deadline = time.monotonic() + seconds
        while True:
            row = await self._get(command_id)
            if row.state in (DONE, FAILED):
                return Outcome.of(row)
            now = time.monotonic()
            expired = now >= deadline and row.state == PENDING
            if expired and (not cancel or await self._cancel(command_id)):
                return None
            if now >= deadline + seconds:
                # Taken, never finished: the leader is stuck or its outcome was not stored.
                return error_outcome(
                    504, "leader_busy",
                    f"the leader took this command but did not finish it within {2 * seconds:g} s: it may "
                    "still happen; look at the rollout before sending it again",
                )
            await asyncio.sleep(OUTCOME_POLL_SECONDS)

    async def _get(self, command_id: int) -> CommandRow:
        async with self.database.transaction() as session:
            row = await session.get(CommandRow, command_id)
        assert row is not None
        return row

    async def _cancel(self, command_id: int) -> bool:
        async with self.database.transaction() as session:
            cancelled = await session.exec(
                update(CommandRow)
                .where(col(CommandRow.id) == command_id, col(CommandRow.state) == PENDING)
                .values(state=CANCELLED, finished_at=datetime.now(UTC))
            )
            return bool(cancelled.rowcount)

    async def take(self, epoch: int) -> list[CommandRow]:
        """Pending commands (and replayable ones a previous leader left unfinished), oldest first.

        Run it fenced: the rows are marked taken under `epoch` in the same transaction
        that checked this replica still leads under it.
        """
        async with self.database.transaction() as session:
            query = (
                select(CommandRow)
                .where(or_(col(CommandRow.state) == PENDING,
                           (col(CommandRow.state) == TAKEN) & (col(CommandRow.taken_epoch) != epoch)))
                .order_by(col(CommandRow.id))
                .with_for_update(skip_locked=True)
            )
            rows = list((await session.exec(query)).all())
            now = datetime.now(UTC)
            taken = []
            for row in rows:
                if row.state == TAKEN and not CommandKind(row.kind).replayable:
                    row.state, row.finished_at = FAILED, now
                    row.result = _error(
                        503, "leader_changed",
                        f"the leader changed (epoch {row.taken_epoch}) while acting on this command: it may "
                        "or may not have been carried out; look at the rollout and send it again if needed",
                    )
                else:
                    row.state, row.taken_epoch = TAKEN, epoch
                    taken.append(row)
                session.add(row)
        return taken

    async def finish(self, command_id: int, outcome: Outcome) -> None:
        async with self.database.transaction() as session:
            row = await session.get(CommandRow, command_id)
            assert row is not None
            row.state = DONE if outcome.ok else FAILED
            row.result = outcome.result
            row.finished_at = datetime.now(UTC)
            session.add(row)


def _error(status: int, code: str, message: str) -> dict[str, Any]:
    return {"status": status, "code": code, "message": message}


def error_outcome(status: int, code: str, message: str) -> Outcome:
    return Outcome(False, _error(status, code, message))
