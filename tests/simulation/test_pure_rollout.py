"""Simulated rollouts through the whole pure path: cumulative counters per arm, `compare_tick`, `decide`.

What the runner is to do, in a loop with a simulated clock and Envoy: read each arm's
counters every tick, carry each check's state through JSON (as the database would),
start counting afresh at every weight change, and hand the verdicts to the machine.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field

from controlplane.rollout.analysis import Verdict
from controlplane.rollout.comparison import ArmReading, CheckRecord, ComparisonState, compare_tick, rebase
from controlplane.rollout.machine import ActionKind, Inputs, Phase, RolloutState, analysis_due, decide
from controlplane.rollout.policy import (
    AnalysisSpec,
    BaselineComparison,
    MetricCheck,
    Pause,
    Policy,
    SetWeight,
    ThresholdRange,
)
from tests.simulation.canaries import BOUNDARIES_MS, ArmTick, Scenario, Traffic, binomial_upper

ERRORS = MetricCheck("error-rate", ThresholdRange(max=0.04), template="request-error-rate",
                     compare=BaselineComparison())
LATENCY = MetricCheck("latency", ThresholdRange(max=250.0), template="request-duration-p99",
                      compare=BaselineComparison(slower_than_ms=50.0))
POLICY = Policy(
    "sequential", ("*",),
    (SetWeight(5), Pause(120), SetWeight(25), Pause(120), SetWeight(50), Pause(120)),
    # minRequests per 10 s tick: 10 (a 5 % canary at 50 requests/s sees 25 on average).
    AnalysisSpec(interval_seconds=10, window_seconds=10, min_requests=10, metrics=(ERRORS, LATENCY)),
)
TICK_SECONDS = 10.0
LIMIT_SECONDS = 3600.0


@dataclass
class Counters:
    """One arm's cumulative counters, as Envoy exports them."""

    requests: int = 0
    errors: int = 0
    buckets: dict[float, float] = field(
        default_factory=lambda: dict.fromkeys((*BOUNDARIES_MS, math.inf), 0.0)
    )

    def count(self, tick: ArmTick) -> None:
        self.requests += tick.requests
        self.errors += tick.errors
        for bound, slower in zip(BOUNDARIES_MS, tick.slower, strict=True):
            self.buckets[bound] += tick.requests - slower
        self.buckets[math.inf] += tick.requests

    def reading(self, check: MetricCheck) -> ArmReading:
        if check.template == "request-duration-p99":
            return ArmReading.of(buckets=dict(self.buckets))
        return ArmReading.of(requests=self.requests, events=self.errors)


@dataclass
class Outcome:
    state: RolloutState
    reasons: list[str]
    records: list[CheckRecord]
    seconds: float


def roll_out(scenario: Scenario, seed: int) -> Outcome:
    traffic = Traffic(scenario, random.Random(seed))
    canary, baseline = Counters(), Counters()
    stored: dict[str, dict[str, object] | None] = {check.name: None for check in POLICY.analysis.metrics}
    decision = decide(POLICY, RolloutState("m", POLICY.name, "1", "2"), Inputs(now=0.0))
    state, reasons, records, now = decision.state, [decision.reason], [], 0.0
    while state.active and now < LIMIT_SECONDS:
        now += TICK_SECONDS
        tick = traffic.tick(state.canary_weight)  # Envoy serves the weight set so far
        canary.count(tick.canary)
        baseline.count(tick.baseline)
        verdicts: tuple[Verdict, ...] | None = None
        if analysis_due(POLICY, state, now):
            judged = []
            for check in POLICY.analysis.metrics:
                document = stored[check.name]
                previous = None if document is None else ComparisonState.from_document(document)
                following, record = compare_tick(
                    check, previous, canary=canary.reading(check), baseline=baseline.reading(check),
                    canary_version="2", stable_version="1", min_requests=POLICY.analysis.min_requests,
                )
                # Through JSON, as the database keeps it between ticks.
                stored[check.name] = (
                    None if following is None else json.loads(json.dumps(following.as_document()))
                )
                judged.append(record.verdict())
                records.append(record)
            verdicts = tuple(judged)
        decision = decide(POLICY, state, Inputs(now=now, acked=True, verdicts=verdicts))
        state = decision.state
        if decision.reason:
            reasons.append(decision.reason)
        if any(action.kind is ActionKind.SET_WEIGHT for action in decision.actions):
            for check in POLICY.analysis.metrics:  # a tick must not span two weights
                document = stored[check.name]
                if document is not None:
                    rebased = rebase(ComparisonState.from_document(document),
                                     canary=canary.reading(check), baseline=baseline.reading(check))
                    stored[check.name] = rebased.as_document()
    return Outcome(state, reasons, records, now)


def test_healthy_canaries_with_a_noisy_prod_are_promoted_and_busy_ones_early() -> None:
    for rate in (50, 500):
        scenario = Scenario(f"healthy, {rate} rq/s", requests_per_second=rate, incident_probability=0.05)
        outcomes = [roll_out(scenario, seed) for seed in range(10)]
        phases = [o.state.phase for o in outcomes]

        # Two checks at alpha 0.01: a false rollback is possible, more than two in ten is not plausible.
        assert phases.count(Phase.ROLLED_BACK) <= binomial_upper(10, 0.02, tail=0.001) == 2
        assert phases.count(Phase.SUCCEEDED) == 10 - phases.count(Phase.ROLLED_BACK), phases
        assert any("baseline unhealthy" in reason for o in outcomes for reason in o.reasons)
        promoted = [o for o in outcomes if o.state.phase is Phase.SUCCEEDED]
        if rate == 500:
            # Pauses end early once both checks ruled out 1.5x: most rollouts take well under the
            # 360 s of pauses, though one caught in an incident holds until prod has recovered.
            seconds = sorted(o.seconds for o in promoted)
            assert seconds[len(seconds) // 2] < 360, seconds
            assert all(any("ended early" in reason for reason in o.reasons) for o in promoted)


def test_a_canary_with_twice_the_errors_is_rolled_back_with_its_evidence() -> None:
    scenario = Scenario("2x errors, 500 rq/s", requests_per_second=500, error_ratio=2.0)
    outcomes = [roll_out(scenario, seed) for seed in range(10)]

    assert {o.state.phase for o in outcomes} == {Phase.ROLLED_BACK}
    assert all("rolled back at once (a sequential test's fail)" in o.state.message for o in outcomes)
    by_errors = [o for o in outcomes if o.state.message.startswith("error-rate: canary")]
    assert len(by_errors) >= 9  # the healthy latency check may (rarely) fail first
    for outcome in by_errors:
        failed = next(r for r in reversed(outcome.records) if r.check == "error-rate")
        assert failed.result is not None and failed.result.e_value >= 100
        canary, baseline = (arm.total.rate for arm in failed.arms)
        assert canary is not None and baseline is not None and canary > baseline


def test_a_slower_canary_is_rolled_back_in_its_first_step() -> None:
    scenario = Scenario("+50% latency, 50 rq/s", requests_per_second=50, latency_factor=1.5)
    outcomes = [roll_out(scenario, seed) for seed in range(10)]

    assert {o.state.phase for o in outcomes} == {Phase.ROLLED_BACK}
    assert all(o.state.message.startswith("latency: canary") for o in outcomes)
    assert all(o.seconds <= 130 for o in outcomes), [o.seconds for o in outcomes]
