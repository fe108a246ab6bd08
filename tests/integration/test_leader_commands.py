"""Commands stored for the leader: acted on or refused, never both; a dead leader's not replayed blindly."""

from __future__ import annotations

import asyncio

from controlplane.cluster.commands import CommandKind, CommandQueue, Outcome
from controlplane.migrations import migrate
from registry.store import Database


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
