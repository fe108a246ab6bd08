"""Checks against the baseline, tick by tick: counter readings per arm in, explained verdicts out."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable

import pytest

from controlplane.rollout.analysis import VerdictKind
from controlplane.rollout.comparison import ArmReading, CheckRecord, ComparisonState, compare_tick
from controlplane.rollout.policy import (
    BaselineComparison,
    MetricCheck,
    ThresholdRange,
    Tolerance,
    ToleranceKind,
)
from controlplane.rollout.sequential import ArmCounts

INF = math.inf
ERRORS = MetricCheck(
    "error-rate", ThresholdRange(max=0.04), template="request-error-rate", compare=BaselineComparison()
)
LATENCY = MetricCheck(
    "latency", ThresholdRange(max=250.0), template="request-duration-p99",
    compare=BaselineComparison(slower_than_ms=50.0),
)


def counters(requests: float, events: float) -> ArmReading:
    return ArmReading.of(requests=requests, events=events)


def run(
    check: MetricCheck, readings: Iterable[tuple[ArmReading, ArmReading]],
    state: ComparisonState | None = None,
) -> tuple[ComparisonState | None, list[CheckRecord]]:
    records = []
    for canary, baseline in readings:
        state, record = compare_tick(
            check, state, canary=canary, baseline=baseline, canary_version="2", stable_version="1"
        )
        records.append(record)
    return state, records


def cumulative(per_tick: list[tuple[int, int, int, int]], start: tuple[int, int, int, int] = (0, 0, 0, 0)
               ) -> list[tuple[ArmReading, ArmReading]]:
    """Readings of counters that grow by (canary requests, events, baseline requests, events) per tick."""
    cr, ce, br, be = start
    readings = [(counters(cr, ce), counters(br, be))]
    for r, e, s, f in per_tick:
        cr, ce, br, be = cr + r, ce + e, br + s, be + f
        readings.append((counters(cr, ce), counters(br, be)))
    return readings


def test_the_first_reading_calibrates_and_the_next_ones_count() -> None:
    state, records = run(ERRORS, cumulative([(100, 1, 900, 9)] * 3, start=(5000, 50, 40000, 400)))

    assert records[0].kind is VerdictKind.HOLD
    assert records[0].message == (
        "error-rate: started against the baseline (tolerance 1.5x = 1.5x the baseline's rate)"
    )
    assert [r.kind for r in records[1:]] == [VerdictKind.HOLD] * 3
    assert state is not None
    assert (state.evidence.canary, state.evidence.baseline) == (ArmCounts(300, 3), ArmCounts(2700, 27))
    canary, baseline = records[-1].arms
    assert (canary.arm, canary.version, canary.tick, canary.total) == ("canary", "2", ArmCounts(100, 1),
                                                                      ArmCounts(300, 3))
    assert (baseline.arm, baseline.version, baseline.tick) == ("baseline", "1", ArmCounts(900, 9))
    assert "inconclusive, 30 events so far" in records[-1].message


def test_percentage_points_become_a_ratio_at_the_baseline_rate_before_the_test() -> None:
    check = MetricCheck("error-rate", ThresholdRange(), template="request-error-rate",
                        compare=BaselineComparison(tolerance=Tolerance(ToleranceKind.POINTS, 0.5)))

    state, records = run(check, cumulative([], start=(0, 0, 100_000, 1_000)))  # the baseline at 1 % so far

    assert state is not None and state.tolerance_ratio == pytest.approx(1.5)
    assert "tolerance +0.5pp = 1.5x the baseline's rate" in records[0].message


def test_a_canary_three_times_worse_fails_decisively_with_every_number_behind_it() -> None:
    _, records = run(ERRORS, cumulative([(500, 15, 4500, 45)] * 6))

    failed = next(r for r in records if r.kind is VerdictKind.FAIL)
    verdict = failed.verdict()
    assert verdict.decisive and verdict.kind is VerdictKind.FAIL
    assert failed.result is not None and failed.result.e_value >= 100
    assert verdict.value == failed.result.e_value
    document = json.loads(json.dumps(failed.as_document(), allow_nan=False))
    assert document["verdict"] == "fail" and document["counted"] == "5xx responses"
    assert document["threshold"] == 100 and document["alpha"] == 0.01
    assert document["arms"][0]["total"]["rate"] == pytest.approx(0.03)
    assert document["arms"][1]["total"]["rate"] == pytest.approx(0.01)
    assert document["observed_ratio"] == pytest.approx(3.0)
    assert "worse than the baseline (e-value" in document["message"]


def test_a_tick_with_too_few_canary_requests_counts_but_is_no_data() -> None:
    state, records = run(ERRORS, cumulative([(500, 5, 4500, 45), (8, 0, 4500, 45)]))
    _, more = run(ERRORS, cumulative([(500, 50, 4500, 45)] * 2, start=(508, 5, 9000, 90)), state)

    assert [r.kind for r in records[1:]] == [VerdictKind.HOLD, VerdictKind.HOLD]
    quiet = compare_tick(ERRORS, state, canary=counters(516, 5), baseline=counters(13500, 135),
                         canary_version="2", stable_version="1", min_requests=20)[1]
    assert quiet.kind is VerdictKind.NO_DATA
    assert quiet.message.startswith("error-rate: 8 canary requests in the tick < minRequests 20; canary")
    assert more[-1].kind is VerdictKind.FAIL  # a fail is a fail, whatever the tick's volume


def test_a_shared_incident_holds_as_baseline_unhealthy_and_blames_no_one() -> None:
    _, records = run(ERRORS, cumulative([(500, 5, 4500, 45)] + [(500, 40, 4500, 360)] * 10))

    incident = records[2:]
    assert {r.kind for r in incident} == {VerdictKind.BASELINE_UNHEALTHY}
    assert all(not r.verdict().decisive for r in incident)
    assert "baseline unhealthy (baseline rate 8.000% outside max 0.04)" in incident[-1].message
    assert incident[-1].result is not None and incident[-1].result.e_value <= 1.0


def test_the_baseline_is_unhealthy_until_it_kept_its_slo_for_three_ticks_in_a_row() -> None:
    healthy, incident = (500, 5, 4500, 45), (500, 40, 4500, 360)
    lucky = (500, 10, 4500, 90)  # 2 % in one tick in the middle of the incident
    ticks = [healthy, incident, lucky, incident, healthy, healthy, healthy, healthy]
    _, records = run(ERRORS, cumulative(ticks))

    kinds = [r.kind for r in records[1:]]
    unhealthy = VerdictKind.BASELINE_UNHEALTHY
    assert kinds[:6] == [VerdictKind.HOLD] + [unhealthy] * 5
    assert set(kinds[6:]) <= {VerdictKind.HOLD, VerdictKind.PASS}  # three healthy ticks: over
    assert "recovering: kept for 1 of 3 ticks in a row" in records[5].message
    assert [r.baseline_healthy for r in records[1:]] == [True] + [False] * 5 + [True, True]


def test_a_canary_worse_than_an_unhealthy_baseline_still_fails() -> None:
    _, records = run(ERRORS, cumulative([(500, 120, 4500, 360)] * 3))  # 24 % against 8 %

    assert records[-1].kind is VerdictKind.FAIL
    assert records[-1].baseline_healthy is False


def test_a_counter_reset_counts_from_zero() -> None:
    readings = cumulative([(100, 1, 900, 9)], start=(10_000, 100, 90_000, 900))
    readings.append((counters(40, 2), counters(300, 3)))  # Envoy restarted: both arms counted afresh

    state, records = run(ERRORS, readings)

    assert records[-1].arms[0].tick == ArmCounts(40, 2)
    assert records[-1].arms[1].tick == ArmCounts(300, 3)
    assert state is not None and state.evidence.canary == ArmCounts(140, 3)


def test_one_envoy_restarting_resets_only_its_own_counts() -> None:
    def two_envoys(a: tuple[int, int], b: tuple[int, int]) -> ArmReading:
        return ArmReading(requests={"envoy-a": a[0], "envoy-b": b[0]},
                          events={"envoy-a": a[1], "envoy-b": b[1]})

    readings = [
        (two_envoys((5000, 50), (5000, 50)), two_envoys((45000, 450), (45000, 450))),
        (two_envoys((5050, 51), (5050, 51)), two_envoys((45450, 454), (45450, 455))),
        (two_envoys((30, 1), (5100, 51)), two_envoys((400, 4), (45900, 459))),  # envoy-a restarted
    ]

    _, records = run(ERRORS, readings)

    assert records[1].arms[0].tick == ArmCounts(100, 2)
    assert records[2].arms[0].tick == ArmCounts(80, 1)  # 30 + 50 new requests, not 5,000 again
    assert records[2].arms[1].tick == ArmCounts(850, 8)


def test_a_5xx_series_created_after_the_start_counts_from_zero() -> None:
    readings = [(ArmReading.of(requests=100), counters(900, 9)), (counters(200, 4), counters(1800, 18))]

    _, records = run(ERRORS, readings)

    assert records[-1].arms[0].tick == ArmCounts(100, 4)


def test_an_impossible_reading_is_an_error_and_the_next_tick_counts_from_the_last_good_one() -> None:
    state, _ = run(ERRORS, cumulative([(100, 1, 900, 9)]))
    assert state is not None

    broken, record = compare_tick(ERRORS, state, canary=counters(210, 150), baseline=counters(1800, 18),
                                  canary_version="2", stable_version="1")
    _, after = run(ERRORS, [(counters(300, 4), counters(2700, 27))], broken)

    assert record.kind is VerdictKind.ERROR
    assert "more events (149) than requests (110)" in record.message
    assert broken == state
    assert after[0].arms[0].tick == ArmCounts(200, 3)  # from the reading before the broken one


def latency_reading(total: int, slower_than_50: int, slower_than_250: int = 0) -> ArmReading:
    return ArmReading.of(buckets={
        10.0: total * 0.4, 50.0: total - slower_than_50, 100.0: total - slower_than_250,
        250.0: total - slower_than_250, 500.0: float(total), INF: float(total),
    })


def test_a_slower_canary_fails_on_requests_slower_than_the_boundary() -> None:
    readings = [(latency_reading(200 * i, 30 * i), latency_reading(1800 * i, 54 * i)) for i in range(6)]

    _, records = run(LATENCY, readings)

    failed = next(r for r in records if r.kind is VerdictKind.FAIL)
    assert failed.counted == "requests slower than 50 ms"
    assert failed.arms[0].tick == ArmCounts(200, 30)  # 15 % against 3 %
    assert failed.baseline_healthy


def test_without_a_boundary_the_baseline_p95_bucket_is_fixed_at_the_start() -> None:
    check = MetricCheck("latency", ThresholdRange(), template="request-duration-p99",
                        compare=BaselineComparison())

    waiting, first = run(check, [(ArmReading(), ArmReading())])
    state, records = run(check, [(latency_reading(0, 0), latency_reading(10_000, 300, 20))])

    assert waiting is None and first[0].kind is VerdictKind.NO_DATA
    assert "waiting for baseline latency to fix the boundary (the baseline's p95 bucket)" in first[0].message
    assert state is not None and state.slower_than_ms == 50.0  # 3 % slower than 50 ms, 50 % than 10 ms
    assert "counting requests slower than 50 ms" in records[0].message


def test_a_slow_baseline_is_unhealthy_by_its_p99() -> None:
    readings = [(latency_reading(200 * i, 10 * i, 5 * i), latency_reading(1800 * i, 90 * i, 45 * i))
                for i in range(3)]

    _, records = run(LATENCY, readings)

    assert records[-1].kind is VerdictKind.BASELINE_UNHEALTHY
    assert "baseline p99" in records[-1].message and "outside max 250" in records[-1].message


def test_state_survives_a_round_trip_through_json() -> None:
    readings = [(latency_reading(200 * i, 30 * i), latency_reading(1800 * i, 54 * i)) for i in range(3)]
    state, _ = run(LATENCY, readings)
    assert state is not None

    restored = ComparisonState.from_document(json.loads(json.dumps(state.as_document(), allow_nan=False)))

    assert restored == state
    following = (latency_reading(800, 120), latency_reading(7200, 216))
    assert run(LATENCY, [following], restored)[1] == run(LATENCY, [following], state)[1]


@pytest.mark.parametrize(
    ("document", "error"),
    [
        ({}, "'evidence' missing"),
        ({"evidence": [], "canary": {}, "baseline": {}, "tolerance_ratio": 1.5, "slower_than_ms": None},
         "must be objects"),
        ({"evidence": {}, "canary": {}, "baseline": {}, "tolerance_ratio": None, "slower_than_ms": None},
         "no tolerance_ratio"),

    ],
)
def test_a_damaged_state_is_refused_with_the_reason(document: dict[str, object], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        ComparisonState.from_document(document)


@pytest.mark.parametrize(
    ("document", "error"),
    [
        ({"buckets": {"": {"50": [1]}}}, "buckets must map a series to counts per `le`"),
        ({"buckets": [1, 2]}, "buckets must map a series to counts per `le`"),
        ({"buckets": {"": 5}}, "buckets must map a series to counts per `le`"),
        ({"requests": {"": "many"}}, "expected a number, got 'many'"),
        ({"requests": 5}, "expected a number per series, got 5"),
        ({"events": {"": True}}, "expected a number, got True"),
    ],
)
def test_a_damaged_reading_is_refused_with_the_reason(document: dict[str, object], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        ArmReading.from_document(document)


def test_a_check_without_a_comparison_is_not_compared() -> None:
    plain = MetricCheck("error-rate", ThresholdRange(max=0.01), template="request-error-rate")

    with pytest.raises(ValueError, match="does not compare with the baseline"):
        run(plain, [(ArmReading(), ArmReading())])
