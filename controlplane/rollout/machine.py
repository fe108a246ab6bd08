"""The rollout state machine: one pure function from (policy, state, inputs) to (state, actions).

Nothing here reads a clock, a database or Prometheus: the runner passes the time,
whether Envoy has acknowledged the current weight, the verdicts of an analysis that
just ran and any operator command or alert, then carries out the actions. Every
decision carries its reason, so every decision can be explained and tested as a table.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

from controlplane.rollout.analysis import Verdict, VerdictKind
from controlplane.rollout.policy import BaselineUnhealthy, Pause, Policy, SetWeight


class Phase(StrEnum):
    PROGRESSING = "progressing"
    PAUSED = "paused"
    SUCCEEDED = "succeeded"
    ROLLED_BACK = "rolled_back"


ACTIVE_PHASES = frozenset({Phase.PROGRESSING, Phase.PAUSED})


class Command(StrEnum):
    PAUSE = "pause"
    RESUME = "resume"
    PROMOTE = "promote"  # past the current step (a `pause: {}` waits for this)
    PROMOTE_FULL = "promote_full"
    ABORT = "abort"
    ALERT = "alert"


@dataclass(frozen=True)
class RolloutState:
    """Everything a rollout needs to resume after a restart; times are wall-clock seconds."""

    model_name: str
    policy_name: str
    stable_version: str
    canary_version: str
    phase: Phase = Phase.PROGRESSING
    step_index: int = 0
    canary_weight: int = 0
    step_started_at: float = 0.0
    # When Envoy acknowledged `canary_weight`; analysis windows start here.
    weight_acked_at: float | None = None
    last_analysis_at: float | None = None
    # True once an analysis whose window started after the acknowledgement passed.
    passed_at_weight: bool = False
    failures: int = 0
    inconclusive_streak: int = 0
    error_streak: int = 0
    message: str = ""
    # When the rollout was paused: a timed pause's clock stands still until it resumes.
    paused_at: float | None = None

    @property
    def active(self) -> bool:
        return self.phase in ACTIVE_PHASES


@dataclass(frozen=True)
class Inputs:
    now: float
    # Every live Envoy node runs the routes that carry `state.canary_weight`.
    acked: bool = False
    verdicts: tuple[Verdict, ...] | None = None
    command: Command | None = None
    command_reason: str = ""


class ActionKind(StrEnum):
    SET_WEIGHT = "set_weight"
    PROMOTE = "promote"
    ROLLBACK = "rollback"


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    canary_weight: int = 0
    reason: str = ""


@dataclass(frozen=True)
class Decision:
    state: RolloutState
    actions: tuple[Action, ...]
    reason: str

    @property
    def changed(self) -> bool:
        return bool(self.actions) or bool(self.reason)


def analysis_due(policy: Policy, state: RolloutState, now: float) -> bool:
    """Whether an analysis should run now (pure).

    Only windows that start after Envoy acknowledged the current weight count, so the
    first analysis at a weight waits a whole window after the acknowledgement.
    """
    spec = policy.analysis
    if not spec.metrics or state.phase is not Phase.PROGRESSING or state.weight_acked_at is None:
        return False
    if now - spec.window_seconds < state.weight_acked_at:
        return False
    return state.last_analysis_at is None or now - state.last_analysis_at >= spec.interval_seconds


def decide(policy: Policy, state: RolloutState, inputs: Inputs) -> Decision:
    """The next state and the actions that lead there (pure)."""
    if not state.active:
        return Decision(state, (), "")
    if inputs.command is not None:
        return _command(policy, state, inputs)
    if state.phase is Phase.PAUSED:
        return Decision(state, (), "")
    if inputs.verdicts is not None:
        judged = _judge(policy, state, inputs)
        if judged.state.phase is not Phase.PROGRESSING or judged.actions:
            return judged
        state, analysis_reason = judged.state, judged.reason
    else:
        analysis_reason = ""
    stepped = _step(policy, _note_ack(state, inputs), inputs)
    reason = "; ".join(r for r in (analysis_reason, stepped.reason) if r)
    return Decision(stepped.state, stepped.actions, reason)


def decide_without_policy(
    state: RolloutState, now: float, *, command: Command | None, reason: str
) -> Decision:
    """A rollout whose policy is gone holds until it is back; abort and alerts still act (pure)."""
    if command in (Command.ABORT, Command.ALERT):
        # An empty policy is all an abort needs: the machine rolls back at once.
        return decide(
            Policy(state.policy_name, ("*",), ()), state, Inputs(now, command=command, command_reason=reason)
        )
    if state.phase is not Phase.PROGRESSING:
        return Decision(state, (), "")
    why = f"policy {state.policy_name!r} is no longer loaded; fix the policy files, then resume"
    return _pause(state, why, now)


def _command(policy: Policy, state: RolloutState, inputs: Inputs) -> Decision:
    """An operator command or an alert, at any step and in any active phase.

    Each branch returns the whole decision (state and actions) of exactly one move:
    the runner carries out `actions`, so a branch that moved the weight without
    returning its action would leave Envoy on the old split.
    """
    why, now = inputs.command_reason, inputs.now
    match inputs.command:
        case Command.ABORT | Command.ALERT:
            return _rollback(_unpaused(state, now), why or "aborted by an operator")
        case Command.PAUSE:
            return _pause(state, why or "paused by an operator", now)
        case Command.RESUME:
            if state.phase is not Phase.PAUSED:
                return Decision(state, (), "")  # nothing to resume; streaks stay counted
            resumed = replace(_unpaused(state, now), message=why or "resumed by an operator")
            if _is_manual_pause(_current_step(policy, state)):
                return _advance(policy, resumed, now, why or "resumed past a manual pause")
            return Decision(resumed, (), resumed.message)
        case Command.PROMOTE_FULL:
            return _promote(
                _unpaused(state, now), why or "promoted to prod by an operator, skipping the remaining steps"
            )
        case _:
            # Promote = complete the current step, whatever it is, and move to the next one:
            # one advance, with the weight change it implies.
            skipped = why or f"step {state.step_index + 1} skipped by an operator"
            return _advance(policy, _unpaused(state, now), now, skipped)


def _unpaused(state: RolloutState, now: float) -> RolloutState:
    """The state progressing again; a timed pause continues with the time it had left."""
    started = state.step_started_at
    if state.phase is Phase.PAUSED and state.paused_at is not None:
        started += max(0.0, now - state.paused_at)
    return replace(
        state,
        phase=Phase.PROGRESSING,
        paused_at=None,
        step_started_at=started,
        inconclusive_streak=0,
        error_streak=0,
    )


def _is_manual_pause(step: SetWeight | Pause | None) -> bool:
    return isinstance(step, Pause) and step.duration_seconds is None


def _judge(policy: Policy, state: RolloutState, inputs: Inputs) -> Decision:
    """Count this analysis against the limits: roll back, pause, or carry on."""
    assert inputs.verdicts is not None
    spec = policy.analysis
    failed = [v for v in inputs.verdicts if v.kind is VerdictKind.FAIL]
    errors = [v for v in inputs.verdicts if v.kind is VerdictKind.ERROR]
    no_data = [v for v in inputs.verdicts if v.kind is VerdictKind.NO_DATA]
    state = replace(state, last_analysis_at=inputs.now)
    if failed:
        failures = state.failures + len(failed)
        state = replace(
            state, failures=failures, inconclusive_streak=0, error_streak=0, passed_at_weight=False
        )
        detail = "; ".join(v.message for v in failed)
        if any(v.decisive for v in failed):
            # A sequential test's fail already bounds false rollbacks by its alpha over the whole
            # rollout: counting it against failureLimit would only delay the rollback.
            return _rollback(state, f"{detail}: rolled back at once (a sequential test's fail)")
        if failures > spec.failure_limit:
            return _rollback(state, f"{detail}: failures {failures} > failureLimit {spec.failure_limit}")
        return Decision(state, (), f"{detail}: failures {failures} <= failureLimit {spec.failure_limit}")
    if errors:
        streak = state.error_streak + 1
        state = replace(state, error_streak=streak, passed_at_weight=False)
        detail = "; ".join(v.message for v in errors)
        if streak >= spec.consecutive_error_limit:
            return _pause(
                state,
                f"{detail}: errors {streak} in a row >= consecutiveErrorLimit "
                f"{spec.consecutive_error_limit}; resume when the metric source is back",
                inputs.now,
            )
        return Decision(state, (), f"{detail}: holding (errors {streak} in a row)")
    if no_data:
        streak = state.inconclusive_streak + 1
        state = replace(state, inconclusive_streak=streak, error_streak=0, passed_at_weight=False)
        detail = "; ".join(v.message for v in no_data)
        if streak >= spec.inconclusive_limit:
            return _pause(
                state,
                f"{detail}: no data {streak} times in a row >= inconclusiveLimit "
                f"{spec.inconclusive_limit}; check the canary gets traffic, then resume",
                inputs.now,
            )
        return Decision(state, (), f"{detail}: holding (no data {streak} in a row)")
    return _judge_passing(policy, state, inputs)


def _judge_passing(policy: Policy, state: RolloutState, inputs: Inputs) -> Decision:
    """No failure, error or missing data: a shared incident, evidence still coming in, or a pass."""
    assert inputs.verdicts is not None
    unhealthy = [v for v in inputs.verdicts if v.kind is VerdictKind.BASELINE_UNHEALTHY]
    holding = [v for v in inputs.verdicts if v.kind is VerdictKind.HOLD]
    state = replace(state, inconclusive_streak=0, error_streak=0)
    if unhealthy:
        # Prod itself breaks the SLO: not the canary's fault, and no time to advance either.
        detail = "; ".join(v.message for v in unhealthy)
        state = replace(state, passed_at_weight=False)
        if policy.analysis.baseline_unhealthy is BaselineUnhealthy.PAUSE:
            return _pause(state, f"{detail}: baseline unhealthy; resume when prod recovers", inputs.now)
        return Decision(state, (), f"{detail}: baseline unhealthy, holding")
    passed = replace(state, passed_at_weight=True)
    if holding:
        # No regression shown: the step may end when its time is up, but not early.
        return Decision(passed, (), "no regression so far: " + "; ".join(v.message for v in inputs.verdicts))
    reason = "analysis passed: " + "; ".join(v.message for v in inputs.verdicts)
    step = _current_step(policy, state)
    timed_pause = isinstance(step, Pause) and step.duration_seconds is not None
    if timed_pause and all(v.decisive for v in inputs.verdicts):
        # Every check is a sequential test that ruled out a regression beyond its tolerance.
        return _advance(policy, passed, inputs.now, f"{reason}; step {state.step_index + 1} ended early")
    return Decision(passed, (), reason)


def _note_ack(state: RolloutState, inputs: Inputs) -> RolloutState:
    if inputs.acked and state.weight_acked_at is None:
        return replace(state, weight_acked_at=inputs.now)
    return state


def _step(policy: Policy, state: RolloutState, inputs: Inputs) -> Decision:
    """Carry out or complete the current step."""
    step = _current_step(policy, state)
    if step is None:
        return _promote(state, "all steps completed")
    if isinstance(step, SetWeight):
        if state.canary_weight != step.weight:
            return _set_weight(state, step.weight, inputs.now)
        if state.weight_acked_at is None or not _analysis_allows(policy, state):
            return Decision(state, (), "")
        return _advance(policy, state, inputs.now, f"weight {step.weight} acknowledged" + _passed(policy))
    if step.duration_seconds is None:
        return _pause(state, f"step {state.step_index + 1}: waiting for an operator to promote", inputs.now)
    if inputs.now - state.step_started_at < step.duration_seconds or not _analysis_allows(policy, state):
        return Decision(state, (), "")
    return _advance(policy, state, inputs.now, f"paused {step.duration_seconds:g}s" + _passed(policy))


def _analysis_allows(policy: Policy, state: RolloutState) -> bool:
    """No metrics: nothing to wait for. With metrics: a pass after the acknowledgement."""
    return not policy.analysis.metrics or state.passed_at_weight


def _passed(policy: Policy) -> str:
    return " and analysis passed" if policy.analysis.metrics else ""


def _current_step(policy: Policy, state: RolloutState) -> SetWeight | Pause | None:
    return policy.steps[state.step_index] if state.step_index < len(policy.steps) else None


def _advance(policy: Policy, state: RolloutState, now: float, reason: str) -> Decision:
    advanced = replace(state, step_index=state.step_index + 1, step_started_at=now, message=reason)
    if advanced.step_index >= len(policy.steps):
        return _promote(advanced, f"{reason}; all steps completed")
    following = policy.steps[advanced.step_index]
    if isinstance(following, SetWeight) and following.weight != state.canary_weight:
        moved = _set_weight(advanced, following.weight, now)
        return Decision(moved.state, moved.actions, f"{reason}; {moved.reason}")
    return Decision(advanced, (), f"{reason}; step {advanced.step_index + 1} of {len(policy.steps)}")


def _set_weight(state: RolloutState, weight: int, now: float) -> Decision:
    moved = replace(
        state,
        canary_weight=weight,
        weight_acked_at=None,
        passed_at_weight=False,
        last_analysis_at=None,
        step_started_at=now,
        inconclusive_streak=0,
        error_streak=0,
    )
    reason = f"canary weight {state.canary_weight} -> {weight}"
    return Decision(replace(moved, message=reason), (Action(ActionKind.SET_WEIGHT, weight, reason),), reason)


def _pause(state: RolloutState, reason: str, now: float) -> Decision:
    if state.phase is Phase.PAUSED and state.message == reason:
        return Decision(state, (), "")
    # Paused again (another reason): the clock stopped at the first pause.
    paused_at = state.paused_at if state.phase is Phase.PAUSED else now
    return Decision(replace(state, phase=Phase.PAUSED, message=reason, paused_at=paused_at), (), reason)


def _promote(state: RolloutState, reason: str) -> Decision:
    done = replace(state, phase=Phase.SUCCEEDED, canary_weight=100, message=reason)
    return Decision(done, (Action(ActionKind.PROMOTE, 100, reason),), reason)


def _rollback(state: RolloutState, reason: str) -> Decision:
    done = replace(state, phase=Phase.ROLLED_BACK, canary_weight=0, message=reason)
    return Decision(done, (Action(ActionKind.ROLLBACK, 0, reason),), reason)
