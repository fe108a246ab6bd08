"""Commands stored for the leader: acted on or refused, never both; a dead leader's not replayed blindly."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from controlplane.cluster.commands import CommandKind, CommandQueue, Outcome
from controlplane.follow.listener import asyncpg_dsn
from controlplane.migrations import migrate
from registry.changes import CHANNEL, ChangeKind, parse_change
from registry.store import Database
from tests.e2e.replicas import create_database, drop_database


async def _queue(database_url: str) -> tuple[Database, CommandQueue]:
    database = Database(database_url)
    await migrate(database)
    return database, CommandQueue(database)


async def test_a_command_no_leader_takes_in_time_is_cancelled_and_never_acted_on(database_url: str) -> None:
    database, queue = await _queue(database_url)
    try:
        refused = await queue.submit(CommandKind.ROLLOUT_COMMAND, {}, model_name="m", submitted_by="r2")
        assert await queue.wait(refused, seconds=0.1) is None
        kept = await queue.submit(CommandKind.STAGE_CHANGE, {}, model_name="m", submitted_by="r2")
        assert await queue.wait(kept, seconds=0.1, cancel=False) is None
        assert [c.id for c in await queue.take(epoch=1)] == [kept]  # the stage change waits for a leader
    finally:
        await database.dispose()


async def test_the_sender_gets_the_leaders_outcome(database_url: str) -> None:
    database, queue = await _queue(database_url)
    try:
        command = await queue.submit(CommandKind.ALERT, {}, model_name="m", submitted_by="r2")
        waiting = asyncio.ensure_future(queue.wait(command, seconds=5))
        [taken] = await queue.take(epoch=3)
        assert (taken.id, taken.state, taken.taken_epoch) == (command, "taken", 3)
        await queue.finish(command, Outcome(True, {"action": "rollback"}))
        assert await waiting == Outcome(True, {"action": "rollback"})
        assert await queue.take(epoch=3) == []
    finally:
        await database.dispose()


async def test_what_a_dead_leader_took_is_replayed_only_when_idempotent(database_url: str) -> None:
    database, queue = await _queue(database_url)
    try:
        promote = await queue.submit(CommandKind.ROLLOUT_COMMAND, {}, model_name="m", submitted_by="r2")
        alert = await queue.submit(CommandKind.ALERT, {}, model_name="m", submitted_by="r2")
        assert len(await queue.take(epoch=1)) == 2  # then epoch 1's leader dies
        assert [c.id for c in await queue.take(epoch=2)] == [alert]
        outcome = await queue.wait(promote, seconds=1)
        assert outcome is not None and not outcome.ok
        assert outcome.result["code"] == "leader_changed"
        assert "look at the rollout and send it again" in outcome.result["message"]
    finally:
        await database.dispose()


@pytest.mark.postgres
async def test_a_stored_command_notifies_the_replicas_once_at_commit_and_taking_it_does_not() -> None:
    """The leader's pick-up is woken by this notification instead of waiting for its next poll."""
    url = (await create_database()).replace("postgresql://", "postgresql+asyncpg://")
    database, queue = await _queue(url)
    listener = await asyncpg.connect(asyncpg_dsn(url))
    heard: asyncio.Queue[str] = asyncio.Queue()
    try:
        await listener.add_listener(CHANNEL, lambda *args: heard.put_nowait(args[3]))
        command = await queue.submit(CommandKind.ALERT, {}, model_name="m", submitted_by="r2")
        change = parse_change(await asyncio.wait_for(heard.get(), 2))
        assert change is not None and (change.kind, change.model_name) == (ChangeKind.COMMANDS, "")
        assert [c.id for c in await queue.take(epoch=1)] == [command]
        await queue.finish(command, Outcome(True, {}))
        await asyncio.sleep(0.2)
        assert heard.empty(), "taking and finishing wake nobody"
    finally:
        await listener.close()
        await database.dispose()
        await drop_database(url.replace("postgresql+asyncpg://", "postgresql://"))
