"""The sequential canary-against-baseline test: known values from the papers' formulas, behaviour."""

from __future__ import annotations

import json
import math
import re

import pytest

from controlplane.rollout.analysis import Observation, VerdictKind, judge
from controlplane.rollout.policy import MetricCheck, ThresholdRange
from controlplane.rollout.sequential import (
    ArmCounts,
    Evidence,
    Outcome,
    SequentialTest,
    TickCounts,
    boundary_for_share,
    counter_increase,
    histogram_increase,
    slower_than,
)


def tick(canary_requests: int, canary_events: int, baseline_requests: int, baseline_events: int
         ) -> TickCounts:
    return TickCounts(
        ArmCounts(canary_requests, canary_events), ArmCounts(baseline_requests, baseline_events)
    )


def gathered(test: SequentialTest, *ticks: TickCounts) -> Evidence:
    evidence = test.start()
    for counts in ticks:
        evidence = evidence.add(counts)
    return evidence


def binomial_lr(x: int, n: int, theta: float, theta0: float) -> float:
    """Likelihood ratio of x of n events in the canary, share theta against theta0 (the paper's formula)."""
    return (theta / theta0) ** x * ((1 - theta) / (1 - theta0)) ** (n - x)


def theta(ratio: float, canary_requests: int, baseline_requests: int) -> float:
    return ratio * canary_requests / (ratio * canary_requests + baseline_requests)


# --- Known values -----------------------------------------------------------------------------------------


def test_one_alternative_is_the_binomial_likelihood_ratio_of_the_paper() -> None:
    # grid_points=1: the mixture is one alternative, r = max_ratio (fail) and tolerance / max_ratio (pass).
    test = SequentialTest(alpha=0.01, tolerance=1.5, max_ratio=2.0, grid_points=1)

    result = test.judge(gathered(test, tick(1000, 10, 1000, 2)))

    # Equal shares: theta0 = 1/2, theta(2) = 2/3, so LR = (4/3)^10 (2/3)^2 = 7.89.
    assert result.e_value == pytest.approx(binomial_lr(10, 12, 2 / 3, 1 / 2), rel=1e-12)
    assert result.e_value == pytest.approx(7.892, abs=1e-3)
    # Pass: "r >= 1.5" against r = 0.75 at the same counts.
    assert result.pass_e_value == pytest.approx(
        binomial_lr(10, 12, theta(0.75, 1000, 1000), theta(1.5, 1000, 1000)), rel=1e-12
    )
    assert result.outcome is Outcome.CONTINUE


@pytest.mark.parametrize(
    ("canary_events", "baseline_events", "canary_requests", "baseline_requests"),
    [(30, 70, 100, 400), (0, 25, 50, 950), (12, 12, 100, 100), (40, 10, 300, 700)],
)
def test_mixture_over_a_beta_prior_matches_the_closed_form_beta_binomial_e_value(
    canary_events: int, baseline_events: int, canary_requests: int, baseline_requests: int
) -> None:
    # With one share theta0 in every tick, a Beta(a, b) prior on theta gives
    # E = B(a + x, b + n - x) / B(a, b) / (theta0^x (1 - theta0)^(n - x)).
    a, b = 2.0, 5.0
    x, n = canary_events, canary_events + baseline_events
    theta0 = canary_requests / (canary_requests + baseline_requests)

    def log_beta(p: float, q: float) -> float:
        return math.lgamma(p) + math.lgamma(q) - math.lgamma(p + q)

    closed_form = math.exp(
        log_beta(a + x, b + n - x) - log_beta(a, b) - x * math.log(theta0) - (n - x) * math.log(1 - theta0)
    )
    # The same prior on a fine grid of theta, each point as its rate ratio r = theta/(1-theta) · R_b/R_c.
    points = 4000
    thetas = [(i + 0.5) / points for i in range(points)]
    ratios = [1.0] + [t / (1 - t) * baseline_requests / canary_requests for t in thetas]
    weights = [
        math.exp((a - 1) * math.log(t) + (b - 1) * math.log(1 - t) - log_beta(a, b)) / points for t in thetas
    ]
    # Counts split over ten ticks of the same share.
    evidence = Evidence.start(ratios)
    for i in range(10):
        evidence = evidence.add(
            tick(canary_requests, x * (i + 1) // 10 - x * i // 10,
                 baseline_requests, (n - x) * (i + 1) // 10 - (n - x) * i // 10)
        )

    mixture = evidence.log_e_value(null=0, alternatives=range(1, points + 1), weights=weights)

    assert math.exp(mixture) == pytest.approx(closed_form, rel=1e-4)


def test_default_e_value_is_the_equal_weight_mixture_over_the_log_spaced_grid() -> None:
    test = SequentialTest()  # alpha 0.01, 30 regressions evenly in log r up to 20x
    counts = [tick(200, 6, 1800, 20), tick(500, 9, 1500, 16), tick(1000, 12, 1000, 11)]

    result = test.judge(gathered(test, *counts))

    def mixture(ratios: list[float], null: float) -> float:
        total = 0.0
        for ratio in ratios:
            lr = 1.0
            for c in counts:
                n = c.canary.events + c.baseline.events
                lr *= binomial_lr(
                    c.canary.events, n, theta(ratio, c.canary.requests, c.baseline.requests),
                    theta(null, c.canary.requests, c.baseline.requests),
                )
            total += lr / len(ratios)
        return total

    above = [20 ** (k / 30) for k in range(1, 31)]
    below = [1.5 * 20 ** (-k / 30) for k in range(1, 31)]
    assert result.e_value == pytest.approx(mixture(above, 1.0), rel=1e-9)
    assert result.pass_e_value == pytest.approx(mixture(below, 1.5), rel=1e-9)


# --- Behaviour ----------------------------------------------------------------------------------------


def test_the_same_counts_in_one_tick_or_ten_give_the_same_answer_when_shares_are_constant() -> None:
    test = SequentialTest()
    one = gathered(test, tick(1000, 36, 9000, 110))
    ten = gathered(test, *(tick(100, e, 900, f) for e, f in zip(
        [4, 3, 5, 1, 6, 4, 3, 4, 2, 4], [10, 12, 9, 14, 11, 10, 13, 8, 12, 11], strict=True)))

    assert ten.canary == one.canary and ten.baseline == one.baseline
    for a, b in zip(one.log_likelihood, ten.log_likelihood, strict=True):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-9)
    assert test.judge(ten).log_e_value == pytest.approx(test.judge(one).log_e_value, rel=1e-9)
    assert test.judge(ten).outcome is test.judge(one).outcome is Outcome.FAIL  # 3.6 % against 1.2 %


@pytest.mark.parametrize("baseline_events", [0, 5, 20])
def test_more_canary_events_is_more_evidence_of_a_regression_and_less_of_a_pass(baseline_events: int) -> None:
    test = SequentialTest()
    results = [test.judge(gathered(test, tick(1000, x, 4000, baseline_events))) for x in range(0, 30, 3)]

    fail_e = [r.log_e_value for r in results]
    pass_e = [r.log_pass_e_value for r in results]
    assert fail_e == sorted(fail_e) and len(set(fail_e)) == len(fail_e)
    assert pass_e == sorted(pass_e, reverse=True) and len(set(pass_e)) == len(pass_e)


def test_more_baseline_events_is_less_evidence_against_the_canary() -> None:
    test = SequentialTest()
    fail_e = [test.judge(gathered(test, tick(1000, 10, 4000, y))).log_e_value for y in range(0, 80, 8)]

    assert fail_e == sorted(fail_e, reverse=True) and len(set(fail_e)) == len(fail_e)


def test_a_shared_incident_is_no_evidence_against_the_canary_while_a_canary_alone_threshold_fails() -> None:
    test = SequentialTest()
    evidence = gathered(test, tick(500, 5, 4500, 45))  # 1 % in both arms
    before = test.judge(evidence)
    check = MetricCheck("error-rate", ThresholdRange(max=0.04), template="request-error-rate")
    for _ in range(10):  # a downstream outage: both arms at 8 %
        incident = tick(500, 40, 4500, 360)
        evidence = evidence.add(incident)
        after = test.judge(evidence)
        assert after.e_value <= before.e_value <= 1.0
        assert after.outcome is not Outcome.FAIL
        threshold = judge(
            check, Observation.of(40 / 500), canary_requests=Observation.of(500), min_requests=20
        )
        assert threshold.kind is VerdictKind.FAIL


def test_each_tick_is_judged_at_its_own_share_so_a_weight_change_during_an_incident_blames_no_one() -> None:
    # 50 % canary during an outage (8 % errors in both arms), then 10 % canary at 1 %:
    # pooled, the canary looks twice as bad (41/600 against 49/1400); tick by tick it is not.
    test = SequentialTest()
    counts = [tick(500, 40, 500, 40), tick(100, 1, 900, 9)]
    evidence = gathered(test, *counts)

    result = test.judge(evidence)
    assert result.observed_ratio == pytest.approx((41 / 600) / (49 / 1400))
    assert result.observed_ratio is not None and result.observed_ratio > 1.9
    assert result.e_value <= 1.0
    assert result.outcome is Outcome.CONTINUE


@pytest.mark.parametrize(
    ("ticks", "outcome", "words"),
    [
        ([], Outcome.CONTINUE, "inconclusive, 0 events so far (e-value 1, fails at 100"),
        ([tick(100, 0, 900, 0)] * 5, Outcome.CONTINUE, "inconclusive, 0 events so far"),
        ([tick(1000, 30, 9000, 90)], Outcome.FAIL, "worse than the baseline (e-value"),
        ([tick(5000, 500, 5000, 500)] * 4, Outcome.PASS, "no more than 1.5x the baseline"),
        (
            [tick(0, 0, 1000, 10)] * 3,
            Outcome.CONTINUE,
            "canary no requests (0/0) against baseline 1.000% (30/3000)",
        ),
    ],
)
def test_decisions_say_what_they_are_and_why(ticks: list[TickCounts], outcome: Outcome, words: str) -> None:
    test = SequentialTest()

    result = test.judge(gathered(test, *ticks))

    assert result.outcome is outcome
    assert words in result.message
    assert result.as_document()["outcome"] == outcome.value


def test_an_overwhelming_regression_is_shown_as_a_finite_number() -> None:
    test = SequentialTest()

    result = test.judge(gathered(test, *[tick(100_000, 50_000, 100_000, 10)] * 5))

    assert result.outcome is Outcome.FAIL
    assert result.log_e_value > 1000
    assert json.loads(json.dumps(result.as_document(), allow_nan=False))["e_value"] == 1e300


def test_evidence_survives_a_round_trip_through_json() -> None:
    test = SequentialTest(alpha=0.05, tolerance=1.2)
    evidence = gathered(test, tick(300, 4, 2700, 30), tick(700, 9, 2300, 25))

    restored = Evidence.from_document(json.loads(json.dumps(evidence.as_document())))

    assert restored == evidence
    assert restored.log_ratios == evidence.log_ratios
    assert test.judge(restored) == test.judge(evidence)
    more = tick(500, 7, 500, 5)
    assert restored.add(more) == evidence.add(more)


@pytest.mark.parametrize(
    ("document", "error"),
    [
        ({}, "not a sequential test's evidence"),
        ({"ratios": [1.0], "log_likelihood": [0.0, 1.0], "canary": {"requests": 0, "events": 0},
          "baseline": {"requests": 0, "events": 0}, "ticks": 0}, "differ in length"),
        ({"ratios": [-1.0], "log_likelihood": [0.0], "canary": {"requests": 0, "events": 0},
          "baseline": {"requests": 0, "events": 0}, "ticks": 0}, "positive finite"),
        ({"ratios": [1.0], "log_likelihood": [0.0], "canary": {"requests": 1, "events": 2},
          "baseline": {"requests": 0, "events": 0}, "ticks": 0}, "more events (2) than requests (1)"),
        ({"ratios": "1", "log_likelihood": [0.0], "canary": {}, "baseline": {}, "ticks": 0},
         "list of numbers"),
        ({"ratios": [1.0], "log_likelihood": [float("nan")], "canary": {"requests": 0, "events": 0},
          "baseline": {"requests": 0, "events": 0}, "ticks": 0}, "not a finite number"),
        ({"ratios": [1.0], "log_likelihood": [0.0], "canary": {"requests": 0, "events": 0},
          "baseline": {"requests": 0, "events": 0}, "ticks": -3}, "ticks must be a count, got -3"),
    ],
)
def test_a_damaged_evidence_document_is_refused_with_the_reason(
    document: dict[str, object], error: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(error)):
        Evidence.from_document(document)


def test_evidence_of_another_test_is_refused() -> None:
    evidence = SequentialTest(tolerance=1.5).start()

    with pytest.raises(ValueError, match="gathered for another test"):
        SequentialTest(tolerance=2.0).judge(evidence)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"alpha": 0.0}, "alpha must be between 0 and 1"),
        ({"alpha": 1.0}, "alpha must be between 0 and 1"),
        ({"tolerance": 1.0}, "tolerance must be a rate ratio above 1"),
        ({"tolerance": math.inf}, "tolerance must be a rate ratio above 1"),
        ({"max_ratio": 0.5}, "max_ratio must be above 1"),
        ({"grid_points": 0}, "grid_points must be at least 1"),
    ],
)
def test_a_test_with_impossible_parameters_is_refused(kwargs: dict[str, float], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        SequentialTest(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("requests", "events", "error"),
    [(10, 11, "more events"), (-1, 0, "cannot be negative"), (5, -2, "cannot be negative")],
)
def test_impossible_counts_are_refused(requests: int, events: int, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        ArmCounts(requests, events)


# --- From Prometheus counters to counts ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("previous", "current", "increase"),
    [
        (100.0, 130.0, 30),
        (100.0, 100.0, 0),
        (None, 7.0, 7),  # Envoy created the 5xx series at the first 5xx of this tick
        (100.0, None, 0),  # the series is gone: Envoy restarted
        (500.0, 12.0, 12),  # counter reset: it counted from zero since
        (10.0, 12.4999, 2),  # Prometheus values are floats
    ],
)
def test_counter_increase_handles_new_series_and_resets(
    previous: float | None, current: float | None, increase: int
) -> None:
    assert counter_increase(previous, current) == increase


INF = math.inf


def test_histogram_increase_per_bucket_and_after_a_reset() -> None:
    before = {10.0: 50.0, 50.0: 90.0, 100.0: 98.0, INF: 100.0}
    after = {10.0: 150.0, 50.0: 280.0, 100.0: 296.0, INF: 300.0}
    restarted = {10.0: 20.0, 50.0: 28.0, 100.0: 30.0, INF: 30.0}

    assert histogram_increase(before, after) == {10.0: 100, 50.0: 190, 100.0: 198, INF: 200}
    assert histogram_increase(after, restarted) == {10.0: 20, 50.0: 28, 100.0: 30, INF: 30}
    assert slower_than(histogram_increase(before, after), 50.0) == ArmCounts(200, 10)
    assert slower_than(histogram_increase(after, restarted), 10.0) == ArmCounts(30, 10)


def test_slower_than_needs_a_real_boundary_and_the_total() -> None:
    with pytest.raises(ValueError, match="75 is not a bucket boundary of the histogram; boundaries: 10, 50"):
        slower_than({10.0: 1, 50.0: 2, INF: 3}, 75.0)
    with pytest.raises(ValueError, match=r"no \+Inf bucket"):
        slower_than({10.0: 1, 50.0: 2}, 50.0)


@pytest.mark.parametrize(
    ("share", "boundary"),
    [(0.5, 10.0), (0.1, 50.0), (0.02, 100.0), (0.0, 250.0), (0.05, 100.0)],
)
def test_boundary_for_share_is_the_smallest_bucket_few_enough_requests_exceed(
    share: float, boundary: float
) -> None:
    baseline = {10.0: 600, 50.0: 920, 100.0: 990, 250.0: 1000, INF: 1000}

    assert boundary_for_share(baseline, share) == boundary


def test_boundary_for_share_without_requests_or_a_fitting_bucket_is_none() -> None:
    assert boundary_for_share({10.0: 0, INF: 0}, 0.05) is None
    assert boundary_for_share({10.0: 10, INF: 100}, 0.05) is None
