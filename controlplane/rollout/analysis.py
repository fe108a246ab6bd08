"""Canary analysis verdicts: a purely computational module.

Four verdicts of a threshold, kept apart: pass, fail (outside the threshold range),
no data (never a failure, never a pass) and error (the metric source could not be
asked); a check against the baseline (`rollout.comparison`) adds hold (evidence still
coming in) and baseline unhealthy. Counting them against the policy's limits is the
state machine's job.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from controlplane.rollout.policy import MetricCheck


class VerdictKind(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    NO_DATA = "no_data"
    ERROR = "error"
    # A check against the baseline with no regression shown so far, and none ruled out
    # yet: the step may end when its time is up, not before (its duration is the test's
    # horizon at that weight). Normal while a sequential test runs, so it is not "no data".
    HOLD = "hold"
    # The baseline broke the check's SLO (a shared incident): nobody is blamed, nothing advances.
    BASELINE_UNHEALTHY = "baseline_unhealthy"


class ObservationKind(StrEnum):
    VALUE = "value"
    NO_DATA = "no_data"
    ERROR = "error"


@dataclass(frozen=True)
class Observation:
    """What a metric source answered: a value, no data (and why), or why it could not answer.

    Providers return these instead of raising, so the analysis sees plain values.
    """

    kind: ObservationKind
    value: float | None = None
    message: str = ""

    @classmethod
    def of(cls, value: float) -> Observation:
        return cls(ObservationKind.VALUE, value, "")

    @classmethod
    def no_data(cls, message: str) -> Observation:
        return cls(ObservationKind.NO_DATA, None, message)

    @classmethod
    def error(cls, message: str) -> Observation:
        return cls(ObservationKind.ERROR, None, message)


@dataclass(frozen=True)
class Verdict:
    metric: str
    kind: VerdictKind
    value: float | None
    message: str
    # A sequential test's fail or pass: it already controls its error rate over the whole
    # rollout, so a fail rolls back at once (no failureLimit) and a pass may end a step early.
    decisive: bool = False

    def as_document(self) -> dict[str, object]:
        return {
            "metric": self.metric,
            "verdict": self.kind.value,
            "value": self.value,
            "message": self.message,
        }


def judge(
    check: MetricCheck, measurement: Observation, *, canary_requests: Observation | None, min_requests: int
) -> Verdict:
    """One metric's verdict for one analysis window (pure)."""
    if check.compare is not None:
        # A threshold cannot judge a comparison (its range is only the baseline's SLO): an
        # error holds the rollout instead of passing every canary.
        return Verdict(check.name, VerdictKind.ERROR, None,
                       f"{check.name}: `compare: baseline` is judged per arm by the sequential test, "
                       "not by a threshold on the canary alone")
    if measurement.kind is ObservationKind.ERROR:
        return Verdict(check.name, VerdictKind.ERROR, None, f"{check.name}: {measurement.message}")
    volume = _too_little_traffic(canary_requests, min_requests)
    if volume:
        return Verdict(check.name, VerdictKind.NO_DATA, measurement.value, f"{check.name}: {volume}")
    if (
        measurement.kind is ObservationKind.NO_DATA
        or measurement.value is None
        or not math.isfinite(measurement.value)
    ):
        reason = measurement.message or "no value in the window"
        return Verdict(check.name, VerdictKind.NO_DATA, None, f"{check.name}: {reason}")
    value = measurement.value
    threshold = check.threshold
    if threshold.contains(value):
        return Verdict(
            check.name, VerdictKind.PASS, value, f"{check.name} {value:.4g} within {threshold.describe()}"
        )
    if threshold.max is not None and value > threshold.max:
        return Verdict(
            check.name, VerdictKind.FAIL, value, f"{check.name} {value:.4g} > max {threshold.max:g}"
        )
    return Verdict(check.name, VerdictKind.FAIL, value, f"{check.name} {value:.4g} < min {threshold.min:g}")


def _too_little_traffic(canary_requests: Observation | None, min_requests: int) -> str:
    """Why the window holds too few canary requests to judge, or "" when it holds enough."""
    if canary_requests is None or min_requests <= 0:
        return ""
    if canary_requests.kind is ObservationKind.ERROR:
        return ""  # the metric's own query decides; volume unknown is not "low volume"
    count = canary_requests.value if canary_requests.kind is ObservationKind.VALUE else 0.0
    if count is None or not math.isfinite(count) or count < min_requests:
        shown = 0 if count is None or not math.isfinite(count) else round(count)
        return f"{shown} canary requests in the window < minRequests {min_requests}"
    return ""
