"""Fault settings and the error-rate decision (pure; the random draw is an argument)."""

from __future__ import annotations

from typing import Any

import pytest

from modelserver.faults import Faults, FaultValueError, checked_faults, injects_error, updated_faults


@pytest.mark.parametrize(
    ("error_rate", "draw", "fails"),
    [
        (0.0, 0.0, False),
        (0.0, 0.999999, False),
        (1.0, 0.0, True),
        (1.0, 0.999999, True),
        (0.25, 0.2499, True),
        (0.25, 0.25, False),
        (0.25, 0.9, False),
    ],
)
def test_a_request_fails_when_the_draw_is_below_the_error_rate(
    error_rate: float, draw: float, fails: bool
) -> None:
    assert injects_error(Faults(error_rate=error_rate), draw) is fails


def test_the_error_rate_is_the_fraction_of_failures_over_uniform_draws() -> None:
    draws = [i / 1000 for i in range(1000)]
    assert sum(injects_error(Faults(error_rate=0.1), d) for d in draws) == 100


def test_an_update_changes_only_the_fields_given() -> None:
    current = Faults(error_rate=0.5, latency_ms=20, quality=0.9)
    changed = updated_faults(current, {"latency_ms": 100})
    assert changed == Faults(error_rate=0.5, latency_ms=100.0, quality=0.9)
    assert updated_faults(current, {}) == current


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"error_rate": 1.5}, "error_rate is 1.5; it must be from 0 to 1"),
        ({"error_rate": -0.1}, "error_rate is -0.1"),
        ({"quality": 2}, "quality is 2"),
        ({"latency_ms": -1}, "latency_ms is -1"),
        ({"latency_ms": 60_001}, "from 0 to 60000"),
        ({"latency_ms": "10"}, "latency_ms must be a number"),
        ({"error_rate": True}, "error_rate must be a number"),
        ({"quality": float("nan")}, "quality must be a number"),
        ({"error_rate": 0.1, "errors": 1}, r"unknown fault fields \['errors'\]"),
    ],
)
def test_bad_values_are_refused_naming_the_field_and_its_range(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(FaultValueError, match=message):
        updated_faults(Faults(), changes)


def test_flags_at_start_are_checked_like_run_time_changes() -> None:
    assert checked_faults(0.1, 5, 0.5) == Faults(error_rate=0.1, latency_ms=5.0, quality=0.5)
    with pytest.raises(FaultValueError, match="error_rate"):
        checked_faults(2.0, 0, 0.95)


def test_the_default_quality_passes_the_default_policy_threshold() -> None:
    assert Faults().quality == 0.95 and Faults().error_rate == 0.0 and Faults().latency_ms == 0.0
