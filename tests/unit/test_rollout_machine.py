"""The rollout state machine as tables: each decision, its actions and its reason."""

from __future__ import annotations

from dataclasses import replace

import pytest

from controlplane.rollout.analysis import Observation, ObservationKind, Verdict, VerdictKind, judge
from controlplane.rollout.machine import (
    ActionKind,
    Command,
    Inputs,
    Phase,
    RolloutState,
    analysis_due,
    decide,
    decide_without_policy,
)
from controlplane.rollout.policy import AnalysisSpec, MetricCheck, Pause, Policy, SetWeight, ThresholdRange

ERROR_RATE = MetricCheck("error-rate", ThresholdRange(max=0.05), template="request-error-rate")
ANALYSIS = AnalysisSpec(
    interval_seconds=10,
    window_seconds=30,
    failure_limit=1,
    inconclusive_limit=3,
    consecutive_error_limit=4,
    min_requests=20,
    metrics=(ERROR_RATE,),
)
POLICY = Policy("default", ("*",), (SetWeight(10), Pause(30), SetWeight(50), Pause(None)), ANALYSIS)
PLAIN = Policy("plain", ("*",), (SetWeight(20), Pause(5)))
START = RolloutState("m", "default", "1", "2")


def verdict(kind: VerdictKind, value: float | None = None, message: str = "") -> tuple[Verdict, ...]:
    return (Verdict("error-rate", kind, value, message or f"error-rate {kind}"),)


def test_the_first_step_sets_the_canary_weight() -> None:
    decision = decide(POLICY, START, Inputs(now=100))
    assert [(a.kind, a.canary_weight) for a in decision.actions] == [(ActionKind.SET_WEIGHT, 10)]
    assert decision.state.canary_weight == 10
    assert decision.state.weight_acked_at is None
    assert decision.reason == "canary weight 0 -> 10"


def test_nothing_advances_before_envoy_acknowledged_the_weight() -> None:
    state = decide(POLICY, START, Inputs(now=100)).state
    waiting = decide(POLICY, state, Inputs(now=200, acked=False))
    assert waiting.actions == () and waiting.state.step_index == 0
    assert not analysis_due(POLICY, waiting.state, 200)


@pytest.mark.parametrize(
    ("acked_at", "last_analysis", "now", "due"),
    [
        (100, None, 129, False),  # the window would start before the acknowledgement
        (100, None, 130, True),
        (100, 130, 139, False),  # within the interval
        (100, 130, 140, True),
        (None, None, 1000, False),
    ],
)
def test_analysis_counts_only_windows_after_the_acknowledgement(
    acked_at: float | None, last_analysis: float | None, now: float, due: bool
) -> None:
    state = replace(START, canary_weight=10, weight_acked_at=acked_at, last_analysis_at=last_analysis)
    assert analysis_due(POLICY, state, now) is due


def at_weight(weight: int = 10, step: int = 0) -> RolloutState:
    return replace(START, canary_weight=weight, step_index=step, weight_acked_at=100, step_started_at=100)


def test_a_pass_after_the_acknowledgement_advances_to_the_pause() -> None:
    decision = decide(
        POLICY, at_weight(), Inputs(now=130, acked=True, verdicts=verdict(VerdictKind.PASS, 0.01))
    )
    assert decision.state.step_index == 1
    assert decision.state.passed_at_weight
    assert "weight 10 acknowledged and analysis passed" in decision.reason


@pytest.mark.parametrize("kind", [VerdictKind.NO_DATA, VerdictKind.ERROR])
def test_no_data_and_errors_never_advance_and_never_fail(kind: VerdictKind) -> None:
    decision = decide(POLICY, at_weight(), Inputs(now=130, acked=True, verdicts=verdict(kind)))
    assert decision.state.step_index == 0
    assert decision.state.phase is Phase.PROGRESSING
    assert decision.state.failures == 0
    assert decision.actions == ()
    assert "holding" in decision.reason


def test_failures_past_the_limit_roll_back_with_the_reason() -> None:
    first = decide(
        POLICY,
        at_weight(),
        Inputs(now=130, acked=True, verdicts=verdict(VerdictKind.FAIL, 0.21, "error-rate 0.21 > max 0.05")),
    )
    assert first.state.phase is Phase.PROGRESSING and first.state.failures == 1
    second = decide(
        POLICY,
        first.state,
        Inputs(now=140, acked=True, verdicts=verdict(VerdictKind.FAIL, 0.21, "error-rate 0.21 > max 0.05")),
    )
    assert second.state.phase is Phase.ROLLED_BACK
    assert [a.kind for a in second.actions] == [ActionKind.ROLLBACK]
    assert second.reason == "error-rate 0.21 > max 0.05: failures 2 > failureLimit 1"
    assert second.state.canary_weight == 0


@pytest.mark.parametrize(
    ("kind", "limit", "message"),
    [(VerdictKind.NO_DATA, 3, "inconclusiveLimit 3"), (VerdictKind.ERROR, 4, "consecutiveErrorLimit 4")],
)
def test_repeated_no_data_or_errors_pause_at_their_limit_never_roll_back(
    kind: VerdictKind, limit: int, message: str
) -> None:
    state = at_weight()
    for tick in range(limit):
        decision = decide(POLICY, state, Inputs(now=130 + 10 * tick, acked=True, verdicts=verdict(kind)))
        state = decision.state
    assert state.phase is Phase.PAUSED
    assert message in decision.reason
    assert decision.actions == ()


def test_a_pass_resets_the_no_data_streak() -> None:
    state = replace(at_weight(), inconclusive_streak=2)
    decision = decide(POLICY, state, Inputs(now=130, acked=True, verdicts=verdict(VerdictKind.PASS, 0.0)))
    assert decision.state.inconclusive_streak == 0


def test_a_timed_pause_waits_its_duration_then_sets_the_next_weight() -> None:
    state = replace(at_weight(step=1), passed_at_weight=True, step_started_at=200)
    assert decide(POLICY, state, Inputs(now=229, acked=True)).actions == ()
    moved = decide(POLICY, state, Inputs(now=230, acked=True))
    assert [(a.kind, a.canary_weight) for a in moved.actions] == [(ActionKind.SET_WEIGHT, 50)]
    assert moved.state.step_index == 2


def test_a_manual_pause_waits_for_an_operator_then_promote_finishes() -> None:
    state = replace(at_weight(50, step=3), passed_at_weight=True)
    waiting = decide(POLICY, state, Inputs(now=300, acked=True))
    assert waiting.state.phase is Phase.PAUSED
    assert "waiting for an operator to promote" in waiting.reason
    assert decide(POLICY, waiting.state, Inputs(now=400, acked=True)).actions == ()
    promoted = decide(POLICY, waiting.state, Inputs(now=500, command=Command.PROMOTE))
    assert promoted.state.phase is Phase.SUCCEEDED
    assert [a.kind for a in promoted.actions] == [ActionKind.PROMOTE]


def test_without_analysis_the_rollout_walks_its_steps_and_promotes() -> None:
    state = RolloutState("m", "plain", "1", "2")
    state = decide(PLAIN, state, Inputs(now=0)).state
    state = decide(PLAIN, state, Inputs(now=1, acked=True)).state
    assert state.step_index == 1
    assert decide(PLAIN, state, Inputs(now=5, acked=True)).actions == ()
    done = decide(PLAIN, state, Inputs(now=6.1, acked=True))
    assert done.state.phase is Phase.SUCCEEDED
    assert "all steps completed" in done.reason


@pytest.mark.parametrize(
    ("command", "phase", "action"),
    [
        (Command.ABORT, Phase.ROLLED_BACK, ActionKind.ROLLBACK),
        (Command.ALERT, Phase.ROLLED_BACK, ActionKind.ROLLBACK),
        (Command.PROMOTE_FULL, Phase.SUCCEEDED, ActionKind.PROMOTE),
        (Command.PAUSE, Phase.PAUSED, None),
    ],
)
def test_operator_commands_and_alerts_act_at_once(
    command: Command, phase: Phase, action: ActionKind | None
) -> None:
    decision = decide(POLICY, at_weight(), Inputs(now=101, command=command, command_reason="why"))
    assert decision.state.phase is phase
    assert [a.kind for a in decision.actions] == ([action] if action else [])
    assert decision.reason == "why"


def test_resume_clears_the_streaks_and_finished_rollouts_ignore_everything() -> None:
    paused = replace(at_weight(), phase=Phase.PAUSED, error_streak=4)
    resumed = decide(POLICY, paused, Inputs(now=200, command=Command.RESUME))
    assert resumed.state.phase is Phase.PROGRESSING and resumed.state.error_streak == 0
    finished = replace(START, phase=Phase.SUCCEEDED)
    assert decide(POLICY, finished, Inputs(now=1, command=Command.ABORT)).actions == ()


@pytest.mark.parametrize(
    ("measurement", "requests", "kind", "message"),
    [
        (
            Observation(ObservationKind.VALUE, 0.01),
            Observation(ObservationKind.VALUE, 500),
            VerdictKind.PASS,
            "error-rate 0.01 within max 0.05",
        ),
        (
            Observation(ObservationKind.VALUE, 0.21),
            Observation(ObservationKind.VALUE, 500),
            VerdictKind.FAIL,
            "error-rate 0.21 > max 0.05",
        ),
        (
            Observation(ObservationKind.VALUE, 0.21),
            Observation(ObservationKind.VALUE, 12),
            VerdictKind.NO_DATA,
            "12 canary requests in the window < minRequests 20",
        ),
        (
            Observation(ObservationKind.NO_DATA, message="query returned no series"),
            None,
            VerdictKind.NO_DATA,
            "query returned no series",
        ),
        (Observation(ObservationKind.VALUE, float("nan")), None, VerdictKind.NO_DATA, "no value"),
        (
            Observation(ObservationKind.ERROR, message="prometheus unreachable"),
            None,
            VerdictKind.ERROR,
            "prometheus unreachable",
        ),
    ],
)
def test_judge(
    measurement: Observation, requests: Observation | None, kind: VerdictKind, message: str
) -> None:
    result = judge(ERROR_RATE, measurement, canary_requests=requests, min_requests=20)
    assert result.kind is kind
    assert message in result.message


def test_a_minimum_threshold_fails_below_it() -> None:
    recall = MetricCheck("top-k-recall", ThresholdRange(min=0.9), query="q")
    result = judge(recall, Observation(ObservationKind.VALUE, 0.7), canary_requests=None, min_requests=20)
    assert (result.kind, result.message) == (VerdictKind.FAIL, "top-k-recall 0.7 < min 0.9")


@pytest.mark.parametrize(
    ("phase", "command", "expected_phase", "action"),
    [
        (Phase.PROGRESSING, None, Phase.PAUSED, None),
        (Phase.PAUSED, None, Phase.PAUSED, None),
        (Phase.PROGRESSING, Command.ABORT, Phase.ROLLED_BACK, ActionKind.ROLLBACK),
        (Phase.PAUSED, Command.ALERT, Phase.ROLLED_BACK, ActionKind.ROLLBACK),
        (Phase.PROGRESSING, Command.RESUME, Phase.PAUSED, None),
    ],
)
def test_a_rollout_without_its_policy_holds_but_can_be_rolled_back(
    phase: Phase, command: Command | None, expected_phase: Phase, action: ActionKind | None
) -> None:
    decision = decide_without_policy(replace(at_weight(), phase=phase), 200, command=command, reason="why")
    assert decision.state.phase is expected_phase
    assert [a.kind for a in decision.actions] == ([action] if action else [])


# --- every command at every kind of step --------------------------------------------------------

GATE = Policy(
    "gate",
    ("*",),
    (SetWeight(10), Pause(30), SetWeight(50), Pause(None), SetWeight(80), Pause(None)),
    ANALYSIS,
)
GATE_START = RolloutState("m", "gate", "1", "2")
STEP_KINDS = {
    "setWeight pending ack": replace(GATE_START, canary_weight=10, step_started_at=100),
    "setWeight acked, analysing": replace(
        GATE_START, canary_weight=10, step_started_at=100, weight_acked_at=110, last_analysis_at=140
    ),
    "timed pause": replace(
        GATE_START, step_index=1, canary_weight=10, weight_acked_at=110, passed_at_weight=True,
        step_started_at=150,
    ),
    "manual pause": replace(
        GATE_START, step_index=3, canary_weight=50, weight_acked_at=210, passed_at_weight=True,
        phase=Phase.PAUSED, paused_at=250, step_started_at=240,
        message="step 4: waiting for an operator to promote",
    ),
    "last step": replace(
        GATE_START, step_index=5, canary_weight=80, weight_acked_at=310, passed_at_weight=True,
        phase=Phase.PAUSED, paused_at=350, step_started_at=340,
        message="step 6: waiting for an operator to promote",
    ),
    "paused phase at a setWeight": replace(
        GATE_START, step_index=2, canary_weight=50, weight_acked_at=210, phase=Phase.PAUSED,
        paused_at=230, step_started_at=200, error_streak=4, message="errors 4 in a row",
    ),
    "succeeded": replace(GATE_START, step_index=6, canary_weight=100, phase=Phase.SUCCEEDED),
    "rolled back": replace(GATE_START, step_index=2, canary_weight=0, phase=Phase.ROLLED_BACK),
}
ROLLED_BACK = (Phase.ROLLED_BACK, None, 0, [(ActionKind.ROLLBACK, 0)])
SUCCEEDED = (Phase.SUCCEEDED, None, 100, [(ActionKind.PROMOTE, 100)])
# (kind of step, command) -> (phase, step index or None for "any", canary weight, actions)
COMMAND_TABLE: dict[tuple[str, Command], tuple[Phase, int | None, int, list[tuple[ActionKind, int]]]] = {
    ("setWeight pending ack", Command.PAUSE): (Phase.PAUSED, 0, 10, []),
    ("setWeight pending ack", Command.RESUME): (Phase.PROGRESSING, 0, 10, []),
    ("setWeight pending ack", Command.PROMOTE): (Phase.PROGRESSING, 1, 10, []),
    ("setWeight acked, analysing", Command.PAUSE): (Phase.PAUSED, 0, 10, []),
    ("setWeight acked, analysing", Command.RESUME): (Phase.PROGRESSING, 0, 10, []),
    ("setWeight acked, analysing", Command.PROMOTE): (Phase.PROGRESSING, 1, 10, []),
    ("timed pause", Command.PAUSE): (Phase.PAUSED, 1, 10, []),
    ("timed pause", Command.RESUME): (Phase.PROGRESSING, 1, 10, []),
    ("timed pause", Command.PROMOTE): (Phase.PROGRESSING, 2, 50, [(ActionKind.SET_WEIGHT, 50)]),
    ("manual pause", Command.PAUSE): (Phase.PAUSED, 3, 50, []),
    ("manual pause", Command.RESUME): (Phase.PROGRESSING, 4, 80, [(ActionKind.SET_WEIGHT, 80)]),
    ("manual pause", Command.PROMOTE): (Phase.PROGRESSING, 4, 80, [(ActionKind.SET_WEIGHT, 80)]),
    ("last step", Command.PAUSE): (Phase.PAUSED, 5, 80, []),
    ("last step", Command.RESUME): SUCCEEDED,
    ("last step", Command.PROMOTE): SUCCEEDED,
    ("paused phase at a setWeight", Command.PAUSE): (Phase.PAUSED, 2, 50, []),
    ("paused phase at a setWeight", Command.RESUME): (Phase.PROGRESSING, 2, 50, []),
    ("paused phase at a setWeight", Command.PROMOTE): (Phase.PROGRESSING, 3, 50, []),
}
for _kind in STEP_KINDS:
    if _kind in ("succeeded", "rolled back"):
        for _command in Command:
            _before = STEP_KINDS[_kind]
            COMMAND_TABLE[(_kind, _command)] = (_before.phase, _before.step_index, _before.canary_weight, [])
    else:
        COMMAND_TABLE[(_kind, Command.PROMOTE_FULL)] = SUCCEEDED
        COMMAND_TABLE[(_kind, Command.ABORT)] = ROLLED_BACK
        COMMAND_TABLE[(_kind, Command.ALERT)] = ROLLED_BACK


@pytest.mark.parametrize(("kind", "command"), sorted(COMMAND_TABLE), ids=lambda v: str(v))
def test_every_command_at_every_kind_of_step_returns_its_state_and_actions(
    kind: str, command: Command
) -> None:
    before = STEP_KINDS[kind]
    phase, step, weight, actions = COMMAND_TABLE[(kind, command)]
    decision = decide(GATE, before, Inputs(now=400, acked=True, command=command, command_reason="why"))
    assert decision.state.phase is phase
    if step is not None:
        assert decision.state.step_index == step
    assert decision.state.canary_weight == weight
    assert [(a.kind, a.canary_weight) for a in decision.actions] == actions
    # The class of bug behind a lost step: the state claims a weight no action published.
    published = decision.actions[-1].canary_weight if decision.actions else before.canary_weight
    assert published == decision.state.canary_weight


def test_every_command_and_kind_of_step_is_in_the_table() -> None:
    assert set(COMMAND_TABLE) == {(kind, command) for kind in STEP_KINDS for command in Command}


def test_promote_at_a_manual_gate_runs_the_next_weight_and_its_analysis_before_the_end() -> None:
    gate = STEP_KINDS["manual pause"]
    first = decide(GATE, gate, Inputs(now=400, command=Command.PROMOTE))
    assert (first.state.step_index, first.state.canary_weight) == (4, 80)
    assert first.state.weight_acked_at is None and not first.state.passed_at_weight
    # Nothing moves on until Envoy runs 80% and an analysis at 80% passed.
    assert not analysis_due(GATE, first.state, 500)
    acked = decide(GATE, first.state, Inputs(now=410, acked=True))
    assert acked.state.step_index == 4 and acked.actions == ()
    assert analysis_due(GATE, acked.state, 440)
    passed = decide(GATE, acked.state, Inputs(now=440, acked=True, verdicts=verdict(VerdictKind.PASS, 0.0)))
    assert passed.state.step_index == 5
    held = decide(GATE, passed.state, Inputs(now=441, acked=True))
    assert held.state.phase is Phase.PAUSED
    done = decide(GATE, held.state, Inputs(now=450, command=Command.PROMOTE))
    assert done.state.phase is Phase.SUCCEEDED


def test_an_operator_pause_freezes_a_timed_pause_and_resume_continues_with_the_time_left() -> None:
    timed = STEP_KINDS["timed pause"]  # a 30 s pause that started at 150
    paused = decide(GATE, timed, Inputs(now=160, acked=True, command=Command.PAUSE)).state
    assert decide(GATE, paused, Inputs(now=500, acked=True)).actions == ()
    resumed = decide(GATE, paused, Inputs(now=500, acked=True, command=Command.RESUME)).state
    assert resumed.phase is Phase.PROGRESSING
    assert decide(GATE, resumed, Inputs(now=519, acked=True)).actions == ()  # 10 s + 19 s < 30 s
    moved = decide(GATE, resumed, Inputs(now=520, acked=True))
    assert [(a.kind, a.canary_weight) for a in moved.actions] == [(ActionKind.SET_WEIGHT, 50)]


def test_a_second_pause_keeps_the_clock_stopped_at_the_first() -> None:
    timed = STEP_KINDS["timed pause"]
    paused = decide(GATE, timed, Inputs(now=160, command=Command.PAUSE, command_reason="a")).state
    again = decide(GATE, paused, Inputs(now=300, command=Command.PAUSE, command_reason="b")).state
    assert (again.message, again.paused_at) == ("b", 160)
