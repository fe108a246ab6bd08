"""decision_quality: how often canary analysis rolls back a healthy canary, and how fast it catches a bad one.

The seeded simulation of `tests/simulation/canaries.py` (no Prometheus), larger
than in CI: healthy canaries (canary = baseline) at 5, 50 and 500 requests/s, with
and without a noisy prod (shared incidents: both arms at 8x errors and 2x latency
for 30 s, starting in 2 % of ticks), and regressions (2x errors at a 1 % baseline,
+50 % latency). Steps of 5, 10, 25 and 50 % canary, 100 s each, 10 s ticks. The same
counts are judged by the sequential test (alpha 0.01 per check, tolerance 1.5x)
and by today's canary-alone thresholds, at the issue's SLO (errors 4 %, p99 250 ms)
and tight around prod (2 %, 100 ms), with failureLimit 1, minRequests 20 and a 30 s
window.

The sequential figures are the test's own (a fail rolls back, nothing gates on
volume); the thresholds' go through minRequests, so at 5 requests/s they pause.

Value: the worst false-rollback rate of any one sequential check over the healthy
scenarios (target: at most alpha). Baseline: the SLO thresholds' false-rollback
rate on the same canaries with a noisy prod at 50 requests/s. Power and time to
detect (canary requests, all requests, seconds) per regression are in the details.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import report
from controlplane.rollout.sequential import SequentialTest
from tests.simulation.canaries import MethodSummary, Scenario, ScenarioResult, Thresholds, run_scenario

ALPHA = 0.01
THRESHOLDS = (
    Thresholds("slo", max_error_rate=0.04, max_p99_ms=250.0),
    Thresholds("tight", max_error_rate=0.02, max_p99_ms=100.0),
)
NOISY = 0.02  # probability per tick that a shared incident starts
HEALTHY = tuple(
    Scenario(f"healthy, {rate} rq/s{', noisy prod' if noisy else ''}", requests_per_second=rate,
             incident_probability=noisy)
    for rate in (5, 50, 500)
    for noisy in (0.0, NOISY)
)
REGRESSIONS = (
    Scenario("2x errors, 50 rq/s", requests_per_second=50, error_ratio=2.0),
    Scenario("2x errors, 500 rq/s", requests_per_second=500, error_ratio=2.0),
    Scenario("2x errors, 500 rq/s, noisy prod", requests_per_second=500, error_ratio=2.0,
             incident_probability=NOISY),
    Scenario("+50% latency, 5 rq/s", requests_per_second=5, latency_factor=1.5),
    Scenario("+50% latency, 50 rq/s", requests_per_second=50, latency_factor=1.5),
    Scenario("+50% latency, 500 rq/s", requests_per_second=500, latency_factor=1.5),
)


def method_figures(summary: MethodSummary) -> dict[str, Any]:
    figures: dict[str, Any] = {
        "rolled_back": round(summary.rollback_rate, 4),
        "paused": round(summary.paused / summary.canaries, 4),
    }
    if summary.rolled_back:
        requests = sorted(summary.requests_to_rollback)
        figures |= {
            "median_canary_requests": summary.median_canary_requests(),
            "median_requests": requests[len(requests) // 2],
            "median_seconds": summary.median_seconds(),
        }
    return figures


def scenario_figures(result: ScenarioResult) -> dict[str, Any]:
    sequential = result.sequential
    figures: dict[str, Any] = {"canaries": sequential.canaries, "sequential": method_figures(sequential)}
    if result.scenario.healthy:
        for check in ("errors", "latency"):
            failures = sequential.check_failures.get(check, 0)
            figures["sequential"][f"{check}_check_rolled_back"] = round(failures / sequential.canaries, 4)
        figures["sequential"]["passed_within_tolerance"] = round(sequential.passed / sequential.canaries, 4)
        if sequential.seconds_to_pass:
            passes = sorted(sequential.seconds_to_pass)
            figures["sequential"]["median_seconds_to_pass"] = passes[len(passes) // 2]
    for name, summary in result.thresholds.items():
        figures[f"thresholds_{name}"] = method_figures(summary)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--canaries", type=int, default=2000, help="healthy canaries per scenario")
    parser.add_argument("--regression-canaries", type=int, default=500, help="bad canaries per scenario")
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()
    test = SequentialTest(alpha=ALPHA)
    started = time.perf_counter()
    healthy = [
        run_scenario(s, canaries=args.canaries, seed=args.seed + i, test=test, thresholds=THRESHOLDS)
        for i, s in enumerate(HEALTHY)
    ]
    regressions = [
        run_scenario(s, canaries=args.regression_canaries, seed=args.seed + 100 + i, test=test,
                     thresholds=THRESHOLDS)
        for i, s in enumerate(REGRESSIONS)
    ]
    check_rates = [
        count / r.sequential.canaries for r in healthy for count in r.sequential.check_failures.values()
    ]
    worst_check = max(check_rates, default=0.0)
    noisy_slo = next(r for r in healthy if r.scenario.name == "healthy, 50 rq/s, noisy prod")
    report(
        "decision_quality",
        value=worst_check,
        unit="share",
        baseline="SLO thresholds (4 %, 250 ms), same healthy canaries, noisy prod at 50 rq/s",
        baseline_value=noisy_slo.thresholds["slo"].rollback_rate,
        target=ALPHA,
        higher_is_better=False,
        details={
            "alpha_per_check": ALPHA,
            "tolerance": test.tolerance,
            "healthy_canaries_per_scenario": args.canaries,
            "bad_canaries_per_scenario": args.regression_canaries,
            "seed": args.seed,
            "steps": list(HEALTHY[0].weights),
            "tick_seconds": HEALTHY[0].tick_seconds,
            "ticks_per_step": HEALTHY[0].ticks_per_step,
            "healthy": {r.scenario.name: scenario_figures(r) for r in healthy},
            "regressions": {r.scenario.name: scenario_figures(r) for r in regressions},
            "simulation_seconds": round(time.perf_counter() - started, 1),
        },
    )


if __name__ == "__main__":
    main()
