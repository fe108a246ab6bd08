"""The follower applies other replicas' changes in order, once per model, and reconciles when it must."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from controlplane.follow.follower import Follower
from registry.changes import Change, ChangeKind

ME, OTHER = "me", "other"


class Recorder:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.fail_next = False

    def reload(self, what: str) -> Callable[..., Awaitable[None]]:
        async def call(model_name: str = "") -> None:
            self.calls.append(f"{what} {model_name}".strip())
            if self.fail_next:
                self.fail_next = False
                raise ConnectionError("the database went away")

        return call


def follower(recorder: Recorder) -> Follower:
    return Follower(
        origin=ME, reload_routing=recorder.reload("routing"), reload_rollout=recorder.reload("rollout"),
        reconcile_steps=[recorder.reload("all")], refresh_nodes=recorder.reload("nodes"),
        reconcile_seconds=3600,
    )


async def settle() -> None:
    """Let the follower's task run until it waits again."""
    for _ in range(20):
        await asyncio.sleep(0)


async def started(subject: Follower) -> asyncio.Task[None]:
    """Running, after the reconcile the listener asks for when it connects."""
    task = asyncio.get_running_loop().create_task(subject.run())
    await subject.request_reconcile()
    await settle()
    return task


def change(kind: ChangeKind, model: str = "", origin: str = OTHER) -> Change:
    return Change(kind, model, origin, 1)


async def test_changes_are_applied_once_per_model_and_own_writes_are_skipped() -> None:
    recorder = Recorder()
    subject = follower(recorder)
    task = await started(subject)
    assert recorder.calls == ["all", "nodes"], "a first reconcile"
    recorder.calls.clear()
    for item in (
        change(ChangeKind.TRAFFIC, "a"), change(ChangeKind.ENDPOINTS, "a"), change(ChangeKind.TRAFFIC, "a"),
        change(ChangeKind.ROLLOUT, "a"), change(ChangeKind.TRAFFIC, "b", origin=ME),
        change(ChangeKind.REGISTRY, "c", origin=ME), change(ChangeKind.NODES), change(ChangeKind.NODES),
    ):
        subject.on_change(item)
    await settle()
    task.cancel()
    # Own traffic is in memory already; own registry changes (registrations) are not.
    assert recorder.calls == ["routing a", "rollout a", "routing c", "nodes"]


async def test_a_change_that_cannot_be_read_leads_to_a_reconcile_soon() -> None:
    recorder = Recorder()
    subject = follower(recorder)
    task = await started(subject)
    recorder.calls.clear()
    recorder.fail_next = True
    subject.on_change(change(ChangeKind.TRAFFIC, "a"))
    subject.on_change(change(ChangeKind.TRAFFIC, "b"))
    await settle()
    assert recorder.calls == ["routing a"], "the rest waits for the reconcile"
    assert subject.reconcile_pending, "shown as aegis_follower_reconcile_pending"
    reconciles = subject.reconciles
    await asyncio.sleep(1.1)
    task.cancel()
    assert recorder.calls == ["routing a", "all", "nodes"]
    assert (subject.reconcile_pending, subject.reconciles) == (False, reconciles + 1)


async def test_a_reconcile_is_pending_from_a_connect_until_it_has_read_everything() -> None:
    reading = asyncio.Event()

    async def slow_read() -> None:
        await reading.wait()

    subject = Follower(
        origin=ME, reload_routing=Recorder().reload("routing"), reload_rollout=Recorder().reload("rollout"),
        reconcile_steps=[slow_read], reconcile_seconds=3600,
    )
    assert not subject.reconcile_pending, "start-up loaded everything"
    await subject.request_reconcile()
    assert subject.reconcile_pending
    task = asyncio.get_running_loop().create_task(subject.run())
    await settle()
    assert (subject.reconcile_pending, subject.reconciles) == (True, 0), "still reading"
    reading.set()
    await settle()
    task.cancel()
    assert (subject.reconcile_pending, subject.reconciles) == (False, 1)


async def test_a_stored_command_wakes_the_pick_up_at_once_and_reloads_nothing() -> None:
    recorder, woken = Recorder(), []
    subject = Follower(
        origin=ME, reload_routing=recorder.reload("routing"), reload_rollout=recorder.reload("rollout"),
        reconcile_steps=[recorder.reload("all")], on_commands=lambda: woken.append("pick up"),
        reconcile_seconds=3600,
    )
    task = await started(subject)
    recorder.calls.clear()
    subject.on_change(change(ChangeKind.COMMANDS))
    assert woken == ["pick up"], "called from the listener's callback, not after the queue of reloads"
    await settle()
    task.cancel()
    assert recorder.calls == []
