"""The state machine with checks against the baseline: decisive fails and passes, holds, shared incidents."""

from __future__ import annotations

from dataclasses import replace

import pytest

from controlplane.rollout.analysis import Verdict, VerdictKind
from controlplane.rollout.machine import ActionKind, Decision, Inputs, Phase, RolloutState, decide
from controlplane.rollout.policy import (
    AnalysisSpec,
    BaselineComparison,
    BaselineUnhealthy,
    MetricCheck,
    Pause,
    Policy,
    SetWeight,
    ThresholdRange,
)

COMPARED = MetricCheck("error-rate", ThresholdRange(max=0.04), template="request-error-rate",
                       compare=BaselineComparison())
THRESHOLD = MetricCheck("p99", ThresholdRange(max=300), template="request-duration-p99")


def policy(*checks: MetricCheck, unhealthy: BaselineUnhealthy = BaselineUnhealthy.HOLD) -> Policy:
    analysis = AnalysisSpec(interval_seconds=10, window_seconds=30, failure_limit=1, inconclusive_limit=3,
                            metrics=checks or (COMPARED,), baseline_unhealthy=unhealthy)
    return Policy("p", ("*",), (SetWeight(10), Pause(600), SetWeight(50), Pause(None)), analysis)


# At the 10 % step's pause, 60 s into its 600 s.
PAUSED_AT_10 = RolloutState("m", "p", "1", "2", canary_weight=10, step_index=1, weight_acked_at=100,
                            step_started_at=130, passed_at_weight=True)


def judged(kind: VerdictKind, *, decisive: bool = False, metric: str = "error-rate",
           state: RolloutState = PAUSED_AT_10, checks: tuple[MetricCheck, ...] = (),
           unhealthy: BaselineUnhealthy = BaselineUnhealthy.HOLD,
           more: tuple[Verdict, ...] = ()) -> Decision:
    verdicts = (Verdict(metric, kind, 1.0, f"{metric} {kind}", decisive=decisive), *more)
    return decide(policy(*checks, unhealthy=unhealthy), state, Inputs(now=190, acked=True, verdicts=verdicts))


def test_a_sequential_fail_rolls_back_at_once_whatever_the_failure_limit() -> None:
    decision = judged(VerdictKind.FAIL, decisive=True)

    assert decision.state.phase is Phase.ROLLED_BACK
    assert [a.kind for a in decision.actions] == [ActionKind.ROLLBACK]
    assert decision.reason == "error-rate fail: rolled back at once (a sequential test's fail)"


def test_a_threshold_fail_still_counts_against_the_failure_limit() -> None:
    decision = judged(VerdictKind.FAIL)

    assert decision.state.phase is Phase.PROGRESSING
    assert decision.state.failures == 1


def test_no_regression_so_far_lets_a_pause_run_to_its_end_without_counting_as_no_data() -> None:
    state = replace(PAUSED_AT_10, inconclusive_streak=2)
    decision = judged(VerdictKind.HOLD, state=state)

    assert decision.actions == ()
    assert decision.state.phase is Phase.PROGRESSING and decision.state.step_index == 1
    assert decision.state.inconclusive_streak == 0
    assert decision.state.passed_at_weight is True
    assert decision.reason == "no regression so far: error-rate hold"


def test_at_the_end_of_the_pause_no_regression_so_far_advances() -> None:
    hold = (Verdict("error-rate", VerdictKind.HOLD, 1.0, "inconclusive"),)

    decision = decide(policy(), PAUSED_AT_10, Inputs(now=130 + 600, acked=True, verdicts=hold))

    assert [(a.kind, a.canary_weight) for a in decision.actions] == [(ActionKind.SET_WEIGHT, 50)]
    assert "paused 600s and analysis passed" in decision.reason


def test_many_holds_in_a_row_never_pause() -> None:
    state = PAUSED_AT_10
    for tick in range(10):
        state = decide(policy(), state, Inputs(now=190 + 10 * tick, acked=True, verdicts=(
            Verdict("error-rate", VerdictKind.HOLD, 1.0, "inconclusive"),))).state

    assert state.phase is Phase.PROGRESSING and state.step_index == 1


@pytest.mark.parametrize(
    ("setting", "phase", "reason"),
    [
        (BaselineUnhealthy.HOLD, Phase.PROGRESSING,
         "error-rate baseline_unhealthy: baseline unhealthy, holding"),
        (BaselineUnhealthy.PAUSE, Phase.PAUSED,
         "error-rate baseline_unhealthy: baseline unhealthy; resume when prod recovers"),
    ],
)
def test_a_shared_incident_holds_or_pauses_as_the_policy_says_and_never_rolls_back(
    setting: BaselineUnhealthy, phase: Phase, reason: str
) -> None:
    decision = judged(VerdictKind.BASELINE_UNHEALTHY, unhealthy=setting)

    assert decision.state.phase is phase
    assert decision.actions == ()
    assert decision.reason == reason


def test_a_decisive_pass_of_every_check_ends_a_timed_pause_early() -> None:
    decision = judged(VerdictKind.PASS, decisive=True)

    assert [(a.kind, a.canary_weight) for a in decision.actions] == [(ActionKind.SET_WEIGHT, 50)]
    assert decision.state.step_index == 2
    assert "step 2 ended early" in decision.reason


def test_a_threshold_check_beside_it_keeps_the_pause_to_its_end() -> None:
    threshold_pass = Verdict("p99", VerdictKind.PASS, 80.0, "p99 80 within max 300")
    decision = judged(VerdictKind.PASS, decisive=True, checks=(COMPARED, THRESHOLD), more=(threshold_pass,))

    assert decision.actions == ()
    assert decision.state.step_index == 1
    assert decision.state.passed_at_weight is True


def test_a_decisive_pass_does_not_skip_a_manual_gate() -> None:
    at_gate = replace(PAUSED_AT_10, canary_weight=50, step_index=3)

    decision = judged(VerdictKind.PASS, decisive=True, state=at_gate)

    assert decision.state.phase is Phase.PAUSED
    assert decision.reason.endswith("step 4: waiting for an operator to promote")
