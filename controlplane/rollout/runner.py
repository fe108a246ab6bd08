"""The rollout runner: feeds the state machine its inputs and carries out its actions.

It decides nothing itself. Each tick, for each active rollout, it gathers the time,
Envoy's acknowledgement and (when due) the analysis verdicts, asks
`machine.decide`, applies the actions through the traffic and registry services, and
stores the state and the decision. Operator commands and alerts go through the same
path at once, waking no loop: they take the rollout's lock and decide immediately.

Only the leader acts. On the leader every entry point runs inside its term's fence,
so each transaction it opens (the rollout's, the traffic's, the registry's) checks the
epoch first and a deposed leader writes nothing. On a follower the same entry points
store a command for the leader and wait for its outcome (`cluster.commands`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar

from controlplane.cluster.commands import CommandKind, CommandQueue, Outcome
from controlplane.cluster.store import EpochFence, NotLeader
from controlplane.notifications.events import RolloutEvent, transition_event
from controlplane.rollout.analysis import Verdict
from controlplane.rollout.evaluation import CounterSource as MetricSource
from controlplane.rollout.evaluation import Evaluation, evaluate, reading_instant
from controlplane.rollout.machine import (
    Action,
    ActionKind,
    Command,
    Decision,
    Inputs,
    Phase,
    RolloutState,
    analysis_due,
    decide,
    decide_without_policy,
)
from controlplane.rollout.metrics import RolloutMetrics
from controlplane.rollout.policy import Policy, first_matching
from controlplane.rollout.store import RolloutRow, RolloutStore, state_from_json
from controlplane.traffic.service import (
    FOLLOW_ATTEMPTS,
    ROLLOUT_OWNER,
    FollowRace,
    TrafficRequest,
    TrafficService,
)
from registry.domain import ChangeAction, Stage, StageChange
from registry.errors import Conflict, NotFound, RegistryError
from registry.service import RegistryService
from registry.store import fenced

log = logging.getLogger(__name__)

ACTOR = "aegis-rollout"
T = TypeVar("T")
# Seconds a follower waits for the leader to act on a command it stored: a healthy leader
# takes it within its pick-up interval; past this, no leader is there to take it.
FORWARD_TIMEOUT_SECONDS = 5.0


class Leadership(Protocol):
    """Whether this replica leads now, and the fence of its term (None on a follower)."""

    @property
    def leading(self) -> bool: ...

    @property
    def fence(self) -> EpochFence | None: ...

    @property
    def replica_id(self) -> str: ...


class ForwardedError(RegistryError):
    """The leader refused a command a follower stored for it: its answer, passed on as it was."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class NoLeader(RegistryError):
    status = 503
    code = "no_leader"


class PolicySource(Protocol):
    @property
    def policies(self) -> tuple[Policy, ...]: ...


@dataclass
class ActiveRollout:
    rollout_id: int
    state: RolloutState
    lock: asyncio.Lock


class RolloutRunner:
    def __init__(
        self,
        store: RolloutStore,
        policies: PolicySource,
        metrics_source: MetricSource,
        traffic: TrafficService,
        registry: RegistryService,
        metrics: RolloutMetrics,
        *,
        leadership: Leadership,
        commands: CommandQueue,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.policy_source = policies
        self.metrics_source = metrics_source
        self.traffic = traffic
        self.registry = registry
        self.metrics = metrics
        self.clock = clock
        self.leadership = leadership
        self.commands = commands
        # The rollouts this replica drives: empty on a follower.
        self.active: dict[str, ActiveRollout] = {}
        self._stores = 0  # rollout states this process stored (see _read_quietly)
        # Told of every transition worth an event (the app wires the notifier's); must not block.
        self.notify: Callable[[RolloutEvent | None], None] = lambda _event: None

    # --- leadership ---------------------------------------------------------

    @property
    def leading(self) -> bool:
        return self.leadership.leading

    @contextlib.contextmanager
    def acting(self) -> Iterator[None]:
        """The leader's work: every transaction inside checks this term's epoch."""
        fence = self.leadership.fence
        if fence is None:
            raise NotLeader("this replica does not lead now: nothing was written; retry")
        with fenced(fence):
            yield

    async def elected(self, fence: EpochFence) -> None:
        """A new term: drive every rollout the database holds as active, from where it stands."""
        self.active.clear()
        with fenced(fence):
            result = await self.traffic.reload()
            if not result.published:
                log.error("the stored routing could not be published: %s", result.error)
            await self.load()

    async def deposed(self) -> None:
        self.active.clear()

    async def forward(
        self, kind: CommandKind, payload: dict[str, Any], model_name: str | None, *, cancel: bool = True
    ) -> Outcome:
        """On a follower: store the command for the leader and wait for its outcome."""
        command_id = await self.commands.submit(
            kind, payload, model_name=model_name, submitted_by=self.leadership.replica_id
        )
        outcome = await self.commands.wait(command_id, seconds=FORWARD_TIMEOUT_SECONDS, cancel=cancel)
        if outcome is None:
            raise NoLeader(
                f"no leader took this command within {FORWARD_TIMEOUT_SECONDS:g} s (GET /v1/cluster "
                "shows the replicas and the leader): nothing was done; retry"
            )
        if not outcome.ok:
            result = outcome.result
            raise ForwardedError(int(result["status"]), str(result["code"]), str(result["message"]))
        return outcome

    async def load(self) -> None:
        """Pick up every rollout that was active when the last leader stopped."""
        for rollout_id, state in await self.store.active():
            self.active[state.model_name] = ActiveRollout(rollout_id, state, asyncio.Lock())
            self.metrics.observe_state(state)
            log.info("resuming rollout of %s at step %d", state.model_name, state.step_index + 1)

    async def follow(self, model_name: str) -> None:
        """Take a model's latest rollout as the database has it: another replica wrote it."""
        latest = await self._read_quietly(lambda: self.store.history(model_name, limit=1))
        self._follow_row(model_name, latest[0][0] if latest else None)

    async def follow_all(self) -> None:
        """Every model's latest rollout as stored (after a lost connection, and now and then)."""
        rows = {row.model_name: row for row in await self._read_quietly(self.store.latest_per_model)}
        for model_name in set(rows) | set(self.active):
            self._follow_row(model_name, rows.get(model_name))

    async def _read_quietly(self, read: Callable[[], Awaitable[T]]) -> T:
        """What `read` returns, read while this process stored no rollout state itself (a state
        stored here meanwhile may be newer than the one read)."""
        for _attempt in range(FOLLOW_ATTEMPTS):
            stores = self._stores
            found = await read()
            if stores == self._stores:
                return found
        raise FollowRace(f"rollouts were stored here during {FOLLOW_ATTEMPTS} reads in a row")

    def _follow_row(self, model_name: str, row: RolloutRow | None) -> None:
        """What this process holds of a model's rollout becomes what is stored.

        No lock is taken: a decision in progress here stores its own state after this,
        as it would have without the notification.
        """
        if row is None or row.id is None:
            self.active.pop(model_name, None)
            return
        state = state_from_json(row.state)
        self.metrics.observe_state(state)
        running = self.active.get(model_name)
        if not state.active:
            self.active.pop(model_name, None)
        elif running is None or running.rollout_id != row.id:
            self.active[model_name] = ActiveRollout(row.id, state, asyncio.Lock())
        else:
            running.state = state

    def policy(self, name: str) -> Policy | None:
        return next((p for p in self.policy_source.policies if p.name == name), None)

    # --- starting -----------------------------------------------------------

    async def guard_promotion(self, changes: list[StageChange], *, force: bool = False) -> None:
        """Before a version becomes canary under a policy: a prod to compare with must exist.

        `force` does not waive this: a rollout without a stable version cannot start.
        """
        for change in changes:
            if change.to_stage is not Stage.CANARY:
                continue
            policy = first_matching(self.policy_source.policies, change.model_name)
            versions = await self.registry.list_versions(change.model_name)
            if policy is not None and not any(v.stage is Stage.PROD for v in versions):
                raise Conflict(
                    f"policy {policy.name!r} would roll out {change.model_name} {change.version}, but the "
                    "model has no prod version to compare with: promote a version to prod first"
                )

    async def on_stage_change(self, changes: list[StageChange]) -> None:
        """A version moved in the registry: a rollout starts, or the one it ends stops."""
        if not self.leading:
            payload = {"changes": [_change_document(change) for change in changes]}
            model_name = changes[0].model_name if changes else None
            # Not cancelled when no leader takes it in time: the change happened, the next leader acts.
            with contextlib.suppress(NoLeader):
                await self.forward(CommandKind.STAGE_CHANGE, payload, model_name, cancel=False)
            return
        with self.acting():
            await self._on_stage_change_here(changes)

    async def _on_stage_change_here(self, changes: list[StageChange]) -> None:
        for change in changes:
            running = self.active.get(change.model_name)
            if change.to_stage is Stage.CANARY:
                policy = first_matching(self.policy_source.policies, change.model_name)
                if policy is not None and running is None:
                    await self._start_here(change.model_name, policy, started_by=change.actor)
                elif policy is None:
                    log.warning(
                        "%s %s is canary but no rollout started: %s",
                        change.model_name, change.version, self.no_policy_reason(change.model_name),
                    )
            elif (
                running is not None
                and change.version == running.state.canary_version
                and change.actor != ACTOR
            ):
                await self._end_from_registry(running, change)

    def no_policy_reason(self, model_name: str) -> str:
        policies = self.policy_source.policies
        if not policies:
            return (
                "no rollout policy is loaded (set AEGIS_POLICIES to a policy file or folder); "
                "traffic stays on prod until you set weights with `aegis traffic`"
            )
        patterns = "; ".join(f"{p.name}: {', '.join(p.models)}" for p in policies)
        return (
            f"no policy's models pattern matches {model_name!r} ({patterns}); add a pattern, or start "
            "one by hand with POST /v1/rollouts; traffic stays on prod meanwhile"
        )

    async def promotion_report(self, model_name: str, version: str, stage: Stage) -> dict[str, Any]:
        """What a promotion to canary started, for the promotion's answer."""
        if stage is not Stage.CANARY:
            return {}
        for _rollout_id, state in await self.store.active():
            if state.model_name == model_name and state.canary_version == version:
                return {"rollout": {"started": True, "policy": state.policy_name, "reason": ""}}
        policy = first_matching(self.policy_source.policies, model_name)
        if policy is None:
            reason = self.no_policy_reason(model_name)
        else:
            reason = f"policy {policy.name!r} matches, but its rollout did not start: see aegis serve's log"
        return {"rollout": {"started": False, "policy": policy.name if policy else None, "reason": reason}}

    async def start(self, model_name: str, policy: Policy, *, started_by: str) -> RolloutState:
        if not self.leading:
            payload = {"policy": policy.name, "started_by": started_by}
            await self.forward(CommandKind.START_ROLLOUT, payload, model_name)
            return await self._stored_state(model_name)
        with self.acting():
            return await self._start_here(model_name, policy, started_by=started_by)

    async def _stored_state(self, model_name: str) -> RolloutState:
        found = await self.store.latest(model_name, decisions=0)
        if found is None:
            raise NotFound(f"{model_name} has no rollout; GET /v1/rollouts lists them")
        return state_from_json(found[0].state)

    async def _start_here(self, model_name: str, policy: Policy, *, started_by: str) -> RolloutState:
        stages = self.traffic.live_stages(model_name)
        if stages.prod is None or stages.canary is None:
            raise Conflict(
                f"{model_name} needs a prod and a canary version for a rollout (prod: {stages.prod}, "
                f"canary: {stages.canary}); promote a version to canary first"
            )
        if model_name in self.active:
            raise Conflict(f"{model_name} already has an active rollout; abort or finish it first")
        state = RolloutState(
            model_name,
            policy.name,
            stages.prod,
            stages.canary,
            step_started_at=self.clock(),
            message=f"started by {started_by} with policy {policy.name!r}",
        )
        rollout_id = await self.store.create(state, started_by=started_by)
        active = ActiveRollout(rollout_id, state, asyncio.Lock())
        self.active[model_name] = active
        self._stores += 1
        await self.store.save(
            rollout_id, state, reason=state.message,
            inputs={**self._decided_by(), "decided_at": state.step_started_at},
        )
        self.notify(transition_event(None, state, reason=state.message, at=self.clock(), actor=started_by))
        log.info("rollout of %s %s started (policy %s)", model_name, stages.canary, policy.name)
        await self._tick_here(model_name)
        return self.active[model_name].state if model_name in self.active else state

    # --- ticking ------------------------------------------------------------

    async def tick_all(self) -> None:
        if not self.leading:
            return
        for model_name in list(self.active):
            try:
                await self.tick(model_name)
            except NotLeader as exc:
                log.warning("rollout tick for %s not stored: %s", model_name, exc.message)
                return
            except Exception:
                log.exception("rollout tick for %s failed", model_name)

    async def tick(self, model_name: str) -> None:
        with self.acting():
            await self._tick_here(model_name)

    async def _tick_here(self, model_name: str) -> None:
        active = self.active.get(model_name)
        if active is None:
            return
        policy = self.policy(active.state.policy_name)
        evaluation: Evaluation | None = None
        analysed_state = active.state
        if policy is not None and analysis_due(policy, active.state, self.clock()):
            evaluation = await self._analyse(policy, active.state)
        async with active.lock:
            if active.state is not analysed_state:
                evaluation = None  # decided meanwhile (an alert, an operator): this analysis is stale
            await self._decide(active, policy, evaluation=evaluation)

    async def command(
        self, model_name: str, command: Command, *, reason: str, actor: str = ""
    ) -> RolloutState:
        """Act on an operator's command (or an alert) now; `actor` is kept with the decision."""
        if not self.leading:
            payload = {"command": command.value, "reason": reason, "actor": actor}
            await self.forward(CommandKind.ROLLOUT_COMMAND, payload, model_name)
            return await self._stored_state(model_name)
        with self.acting():
            return await self._command_here(model_name, command, reason=reason, actor=actor)

    async def _command_here(
        self, model_name: str, command: Command, *, reason: str, actor: str = ""
    ) -> RolloutState:
        active = self.active.get(model_name)
        if active is None:
            raise NotFound(f"{model_name} has no active rollout; GET /v1/rollouts lists them")
        async with active.lock:
            await self._decide(
                active, self.policy(active.state.policy_name), command=command, reason=reason, actor=actor
            )
        return active.state

    async def _decide(
        self,
        active: ActiveRollout,
        policy: Policy | None,
        *,
        evaluation: Evaluation | None = None,
        command: Command | None = None,
        reason: str = "",
        actor: str = "",
    ) -> None:
        state, now = active.state, self.clock()
        verdicts = None if evaluation is None else evaluation.verdicts
        if evaluation is not None:
            # The sequential tests' evidence moves on with the analysis, stored with the decision.
            state = replace(state, comparisons=evaluation.comparisons)
        if policy is None:
            decision = decide_without_policy(state, now, command=command, reason=reason)
        else:
            inputs = Inputs(
                now, acked=self._acked(state), verdicts=verdicts, command=command, command_reason=reason
            )
            decision = decide(policy, state, inputs)
        decision = await self._apply(policy, decision)
        if decision.state != active.state or decision.reason:
            await self._store(active, decision, verdicts=verdicts, command=command, actor=actor,
                              checks=evaluation.documents() if evaluation is not None else [],
                              analysed_at=evaluation.at if evaluation is not None else None,
                              decided_at=now)

    def _acked(self, state: RolloutState) -> bool:
        return self.traffic.runs(state.model_name, _split(state, state.canary_weight))

    async def _analyse(self, policy: Policy, state: RolloutState) -> Evaluation:
        now = self.clock()
        # Read at an explicit instant, stored with the decision: a replay at the same instants
        # reads the same counters.
        at = reading_instant(now)
        evaluation = await evaluate(policy, state, self.metrics_source, now=now, at=at)
        for verdict in evaluation.verdicts:
            self.metrics.verdicts.labels(state.model_name, verdict.metric, verdict.kind.value).inc()
        return evaluation

    # --- acting -------------------------------------------------------------

    async def _apply(self, policy: Policy | None, decision: Decision) -> Decision:
        """Carry out the actions; a failed action holds the rollout with the reason."""
        for action in decision.actions:
            try:
                await self._act(policy, decision.state, action)
            except NotLeader:
                raise  # not a failed action: this replica must stop, and the next leader acts
            except RegistryError as exc:
                reason = (
                    f"{decision.reason}; but {action.kind.value} failed: {exc.message}; fix it, then resume"
                )
                log.error("rollout of %s: %s", decision.state.model_name, reason)
                return Decision(replace(decision.state, phase=Phase.PAUSED, message=reason), (), reason)
        return decision

    async def _act(self, policy: Policy | None, state: RolloutState, action: Action) -> None:
        model_name = state.model_name
        if action.kind is ActionKind.SET_WEIGHT:
            await self._set_weight(policy, state, action.canary_weight)
        elif action.kind is ActionKind.PROMOTE:
            await self._set_weight(policy, state, 100)
            await self.registry.promote(
                model_name, state.canary_version, Stage.PROD, actor=ACTOR, reason=action.reason
            )
            await self.traffic.release(model_name)
        else:
            # A retry of a rollback whose registry change was committed (then recording the
            # decision failed) finds the canary gone: only the traffic is left to hand back.
            if await self._still_canary(state):
                await self._set_weight(policy, state, 0)
                await self.registry.rollback(
                    model_name, actor=ACTOR, reason=action.reason, canary_version=state.canary_version
                )
            await self.traffic.release(model_name)

    async def _still_canary(self, state: RolloutState) -> bool:
        versions = await self.registry.list_versions(state.model_name)
        return any(v.version == state.canary_version and v.stage is Stage.CANARY for v in versions)

    async def _set_weight(self, policy: Policy | None, state: RolloutState, weight: int) -> None:
        match = [dict(m.headers) for m in policy.match] if policy is not None and weight < 100 else []
        mirror = policy.mirror_percent if policy is not None and weight < 100 else 0
        request = TrafficRequest(_split(state, weight), match, mirror)
        await self.traffic.set_traffic(state.model_name, request, actor=ACTOR, owner=ROLLOUT_OWNER)

    async def _store(
        self,
        active: ActiveRollout,
        decision: Decision,
        *,
        verdicts: tuple[Verdict, ...] | None,
        command: Command | None,
        actor: str = "",
        checks: list[dict[str, object]] | None = None,
        analysed_at: float | None = None,
        decided_at: float | None = None,
    ) -> None:
        inputs: dict[str, Any] = {
            "verdicts": [v.as_document() for v in verdicts] if verdicts else [],
            # The compared checks explained: per arm the counts and rates, e-values, thresholds.
            "checks": checks or [],
            "analysed_at": analysed_at,
            # Stored rows are stamped after the actions ran, which can take a while: a replay of a
            # decision without analysis needs the instant the machine decided at.
            "decided_at": self.clock() if decided_at is None else decided_at,
            "command": command.value if command else None,
            "actor": actor or None,
            "acked_at": decision.state.weight_acked_at,
            **self._decided_by(),
        }
        await self.store.save(active.rollout_id, decision.state, reason=decision.reason, inputs=inputs)
        self.notify(transition_event(
            active.state, decision.state, reason=decision.reason, at=self.clock(),
            inputs=inputs, actor=actor or None,
        ))
        active.state = decision.state
        self._stores += 1
        self.metrics.observe_state(decision.state)
        if decision.reason:
            log.info("rollout of %s: %s", decision.state.model_name, decision.reason)
        if not decision.state.active:
            self.active.pop(decision.state.model_name, None)

    def _decided_by(self) -> dict[str, Any]:
        """Which leader decided, under which epoch (a deposed leader's decision is never stored)."""
        fence = self.leadership.fence
        return {"replica": self.leadership.replica_id, "epoch": fence.epoch if fence is not None else None}

    async def _end_from_registry(self, active: ActiveRollout, change: StageChange) -> None:
        """An operator moved the canary in the registry: the rollout ends the same way."""
        promoted = change.to_stage is Stage.PROD
        phase = Phase.SUCCEEDED if promoted else Phase.ROLLED_BACK
        reason = f"canary moved to {change.to_stage.value} in the registry by {change.actor}: {change.reason}"
        async with active.lock:
            # The canary's share is what it is now: all of it as prod, none of it otherwise.
            state = replace(active.state, phase=phase, canary_weight=100 if promoted else 0, message=reason)
            await self._store(
                active, Decision(state, (), reason), verdicts=None, command=None, actor=change.actor
            )
        await self.traffic.release(active.state.model_name)


def _change_document(change: StageChange) -> dict[str, Any]:
    document = dataclasses.asdict(change)
    document.update(
        from_stage=change.from_stage.value, to_stage=change.to_stage.value, action=change.action.value
    )
    return document


def change_of(document: dict[str, Any]) -> StageChange:
    return StageChange(
        model_name=document["model_name"], version=document["version"],
        from_stage=Stage(document["from_stage"]), to_stage=Stage(document["to_stage"]),
        actor=document["actor"], reason=document["reason"], action=ChangeAction(document["action"]),
    )


def _split(state: RolloutState, canary_weight: int) -> dict[str, int]:
    """The weights of a rollout's two versions for a canary share in percent."""
    return {state.stable_version: 100 - canary_weight, state.canary_version: canary_weight}
