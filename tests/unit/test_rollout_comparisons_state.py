"""What the runner reads into a comparison and keeps with the rollout: readings from series, stored state."""

from __future__ import annotations

import json
import math

import pytest

from controlplane.rollout.comparison import ArmReading, Comparisons, arm_reading, compare_tick
from controlplane.rollout.machine import RolloutState
from controlplane.rollout.policy import BaselineComparison, MetricCheck, ThresholdRange
from controlplane.rollout.store import state_from_json, state_to_json

ERRORS = MetricCheck(
    "error-rate", ThresholdRange(max=0.04), template="request-error-rate", compare=BaselineComparison()
)


def test_counters_are_read_per_envoy_instance_and_buckets_per_instance_and_le() -> None:
    reading = arm_reading({
        "requests": [({"instance": "envoy-a:9901"}, 120.0), ({"instance": "envoy-b:9901"}, 80.0)],
        "events": [({"instance": "envoy-b:9901"}, 3.0)],
        "buckets": [
            ({"instance": "envoy-a:9901", "le": "25"}, 100.0),
            ({"instance": "envoy-a:9901", "le": "+Inf"}, 120.0),
        ],
    })

    assert reading == ArmReading(
        {"envoy-a:9901": 120.0, "envoy-b:9901": 80.0}, {"envoy-b:9901": 3.0},
        {"envoy-a:9901": {25.0: 100.0, math.inf: 120.0}},
    )


def test_a_query_summed_over_every_envoy_is_one_series_named_by_its_labels() -> None:
    reading = arm_reading({"requests": [({}, 50.0)], "events": [({"model": "m"}, 2.0)]})

    assert reading == ArmReading({"": 50.0}, {"model=m": 2.0}, {})


def test_a_bucket_without_a_numeric_le_is_refused_with_the_labels() -> None:
    with pytest.raises(ValueError, match="without a numeric `le`"):
        arm_reading({"buckets": [({"instance": "a", "le": "x"}, 1.0)]})


def test_the_evidence_survives_the_rollout_state_json_round_trip_exactly() -> None:
    state, _ = compare_tick(ERRORS, None, canary=ArmReading.of(requests=100, events=1),
                            baseline=ArmReading.of(requests=900, events=9), canary_version="2",
                            stable_version="1")
    assert state is not None
    state, _ = compare_tick(ERRORS, state, canary=ArmReading.of(requests=400, events=20),
                            baseline=ArmReading.of(requests=3600, events=20), canary_version="2",
                            stable_version="1")
    assert state is not None
    rollout = RolloutState("m", "p", "1", "2", weight_acked_at=12.5,
                           comparisons=Comparisons(12.5, {"error-rate": state}))

    stored = json.loads(json.dumps(state_to_json(rollout)))  # what the database column holds

    assert state_from_json(stored) == rollout
    assert state_from_json({**stored, "comparisons": None}).comparisons is None


def test_damaged_comparisons_are_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="checks must map"):
        Comparisons.from_document({"weight_acked_at": 1.0, "checks": [1, 2]})
