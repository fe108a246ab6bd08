"""Decision quality on simulated canaries (seeded, no Prometheus): sequential test and thresholds, same data.

Sized for CI (a few seconds); `bench/decision_quality.py` runs the same simulation
larger and reports the figures.
"""

from __future__ import annotations

import statistics
from functools import cache

from controlplane.rollout.sequential import SequentialTest
from tests.simulation.canaries import Scenario, ScenarioResult, Thresholds, binomial_upper, run_scenario

ALPHA = 0.01
TEST = SequentialTest(alpha=ALPHA)
# Today's canary-alone checks: the generous SLO, and limits set tight around prod's own
# 1 % errors and ~86 ms p99 (as Prometheus reads it from Envoy's buckets).
SLO = Thresholds("slo", max_error_rate=0.04, max_p99_ms=250.0)
TIGHT = Thresholds("tight", max_error_rate=0.02, max_p99_ms=100.0)
SEED = 12
# Healthy canaries (canary = baseline) through steps of 5, 10, 25, 50 % (the weight changes
# every 10 ticks), at three traffic levels, with and without a noisy prod: 1,000 in all.
HEALTHY = (
    Scenario("healthy, 5 rq/s", requests_per_second=5),
    Scenario("healthy, 50 rq/s", requests_per_second=50),
    Scenario("healthy, 50 rq/s, noisy prod", requests_per_second=50, incident_probability=0.02),
    Scenario("healthy, 500 rq/s, noisy prod", requests_per_second=500, incident_probability=0.02),
)
CANARIES_PER_HEALTHY = 250
REGRESSIONS = (
    Scenario("2x errors at 1 %, 500 rq/s", requests_per_second=500, error_ratio=2.0),
    Scenario("+50 % latency, 50 rq/s", requests_per_second=50, latency_factor=1.5),
)
CANARIES_PER_REGRESSION = 100


@cache
def healthy() -> tuple[ScenarioResult, ...]:
    return tuple(
        run_scenario(s, canaries=CANARIES_PER_HEALTHY, seed=SEED + i, test=TEST, thresholds=(SLO, TIGHT))
        for i, s in enumerate(HEALTHY)
    )


@cache
def regressions() -> tuple[ScenarioResult, ...]:
    return tuple(
        run_scenario(
            s, canaries=CANARIES_PER_REGRESSION, seed=SEED + 100 + i, test=TEST, thresholds=(SLO, TIGHT)
        )
        for i, s in enumerate(REGRESSIONS)
    )


def test_healthy_canaries_are_rolled_back_by_each_check_at_most_alpha_of_the_time() -> None:
    results = healthy()
    canaries = sum(r.sequential.canaries for r in results)
    # With a true rate of alpha, more than this many of 1,000 happens with probability <= 0.1 %.
    allowed = binomial_upper(canaries, ALPHA, tail=0.001)

    per_check = {
        check: sum(r.sequential.check_failures.get(check, 0) for r in results)
        for check in ("errors", "latency")
    }
    rolled_back = sum(r.sequential.rolled_back for r in results)

    assert canaries == 1000
    assert allowed == 21
    assert per_check["errors"] <= allowed and per_check["latency"] <= allowed, per_check
    # Two checks each at alpha: the rollout at most 2 alpha (union bound).
    assert rolled_back <= binomial_upper(canaries, 2 * ALPHA, tail=0.001), rolled_back


def test_thresholds_on_the_same_healthy_canaries_roll_back_for_prod_noise_and_small_windows() -> None:
    by_name = {r.scenario.name: r for r in healthy()}
    noisy = by_name["healthy, 50 rq/s, noisy prod"]
    quiet = by_name["healthy, 50 rq/s"]

    # A shared incident (both arms at 8 % errors) breaks the SLO: the healthy canary is blamed.
    assert noisy.thresholds["slo"].rollback_rate > 0.3
    assert noisy.sequential.rollback_rate <= 2 * ALPHA
    # Limits tight enough to see a 2x regression trip on a 75-request window's noise.
    assert quiet.thresholds["tight"].rollback_rate > 0.5
    assert quiet.sequential.rollback_rate <= 2 * ALPHA


def test_at_high_traffic_healthy_canaries_are_shown_within_tolerance_before_the_rollout_ends() -> None:
    busy = {r.scenario.name: r for r in healthy()}["healthy, 500 rq/s, noisy prod"]

    assert busy.sequential.passed >= 0.9 * busy.sequential.canaries
    rollout_seconds = busy.scenario.ticks * busy.scenario.tick_seconds
    assert statistics.median(busy.sequential.seconds_to_pass) < rollout_seconds / 2


def test_a_2x_error_regression_is_rolled_back_and_the_slo_threshold_misses_it() -> None:
    errors = regressions()[0]

    assert errors.sequential.rollback_rate >= 0.95
    median_requests = errors.sequential.median_canary_requests()
    assert median_requests is not None and median_requests < 5000  # canary requests until the rollback
    assert errors.thresholds["slo"].rollback_rate < 0.05


def test_a_50_percent_latency_regression_is_rolled_back_within_the_first_step() -> None:
    latency = regressions()[1]

    assert latency.sequential.rollback_rate >= 0.95
    median_seconds = latency.sequential.median_seconds()
    assert median_seconds is not None and median_seconds <= latency.scenario.ticks_per_step * 10.0
    assert latency.thresholds["slo"].rollback_rate < 0.1
