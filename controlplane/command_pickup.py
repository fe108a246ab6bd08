"""The leader's side of commands that followers stored: take them, act, store each outcome.

`pick_up` is the one entry point: the leader calls it every `PICKUP_INTERVAL_SECONDS`
(and a change notification may call it at once). Each command goes through the same
code as one this replica received itself (`RolloutRunner`, `AlertIntake`), inside the
term's fence: a deposed leader takes nothing and finishes nothing.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from controlplane.alert_webhook import Alert
from controlplane.alerts import AlertIntake
from controlplane.cluster.commands import CommandKind, CommandQueue, CommandRow, Outcome, error_outcome
from controlplane.cluster.store import NotLeader
from controlplane.rollout.machine import Command
from controlplane.rollout.runner import RolloutRunner, change_of
from registry.errors import InvalidInput, RegistryError

log = logging.getLogger(__name__)

# A follower's command waits at most this long for the leader, so that an alert stored by a
# follower still rolls back within the 3 s target with time to spare.
PICKUP_INTERVAL_SECONDS = 0.2


class CommandPickup:
    def __init__(self, queue: CommandQueue, runner: RolloutRunner, intake: AlertIntake) -> None:
        self.queue = queue
        self.runner = runner
        self.intake = intake
        self._lock = asyncio.Lock()  # one pick-up at a time: a timer and a notification may overlap

    async def pick_up(self) -> int:
        """Act on every waiting command; returns how many. Does nothing on a follower."""
        if not self.runner.leading:
            return 0
        async with self._lock:
            fence = self.runner.leadership.fence
            if fence is None:
                return 0
            with self.runner.acting():
                commands = await self.queue.take(fence.epoch)
                for command in commands:
                    outcome = await self._act(command)
                    assert command.id is not None
                    await self.queue.finish(command.id, outcome)
            return len(commands)

    async def _act(self, command: CommandRow) -> Outcome:
        try:
            return Outcome(True, await self._dispatch(command))
        except NotLeader:
            raise  # finishing would be refused too: the next leader takes it up
        except RegistryError as exc:
            return error_outcome(exc.status, exc.code, exc.message)
        except Exception:
            log.exception("command %s (%s) failed", command.id, command.kind)
            return error_outcome(500, "internal_error", "the leader failed to act on it; see its log")

    async def _dispatch(self, command: CommandRow) -> dict[str, Any]:
        payload, model_name = command.payload, command.model_name or ""
        kind = CommandKind(command.kind)
        if model_name:
            # The replica that stored it may have changed the model just before (a promotion).
            await self.runner.traffic.refresh(model_name)
        if kind is CommandKind.ROLLOUT_COMMAND:
            await self.runner.command(
                model_name, Command(payload["command"]), reason=payload["reason"], actor=payload["actor"]
            )
        elif kind is CommandKind.START_ROLLOUT:
            policy = self.runner.policy(payload["policy"])
            if policy is None:
                raise InvalidInput(f"policy {payload['policy']!r} is not loaded on the leader")
            await self.runner.start(model_name, policy, started_by=payload["started_by"])
        elif kind is CommandKind.STAGE_CHANGE:
            await self.runner.on_stage_change([change_of(change) for change in payload["changes"]])
        else:
            action = await self.intake.receive(self.runner, Alert.model_validate(payload))
            return {"action": action}
        return {}
