"""Rollout policies as typed, validated values (the vocabulary of Argo Rollouts and Flagger).

Purely data: parsing YAML into these objects (with file, line and field in every
error) lives in `controlplane.rollout.policy_loader`.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from enum import StrEnum


@dataclass(frozen=True)
class SetWeight:
    """Send this percentage of the model's traffic to the canary."""

    weight: int


@dataclass(frozen=True)
class Pause:
    """Wait `duration_seconds`, or for an operator's promote when it is None (`pause: {}`)."""

    duration_seconds: float | None = None


Step = SetWeight | Pause


@dataclass(frozen=True)
class ThresholdRange:
    """A value passes when min <= value <= max (either bound may be absent)."""

    min: float | None = None
    max: float | None = None

    def contains(self, value: float) -> bool:
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)

    def describe(self) -> str:
        parts = [
            f"min {self.min:g}" if self.min is not None else "",
            f"max {self.max:g}" if self.max is not None else "",
        ]
        return ", ".join(p for p in parts if p)


class ComparisonMethod(StrEnum):
    SEQUENTIAL = "sequential"  # anytime-valid mixture e-process on per-tick counts (rollout.sequential)


class ToleranceKind(StrEnum):
    RATIO = "ratio"  # "1.5x": the canary's rate up to 1.5 times the baseline's
    POINTS = "points"  # "+0.5pp": the canary's rate up to the baseline's plus 0.5 percentage points


# Above this the test's grid of regressions ends: a looser tolerance would never be shown.
MAX_TOLERANCE_RATIO = 20.0


@dataclass(frozen=True)
class Tolerance:
    """How much worse than the baseline the canary may be and still pass early."""

    kind: ToleranceKind
    value: float  # the ratio (1.5) or the percentage points (0.5)

    def ratio_at(self, baseline_rate: float) -> float:
        """The rate ratio allowed at `baseline_rate` (a share 0..1), capped at MAX_TOLERANCE_RATIO.

        The sequential test tests a ratio; percentage points become one when the
        test starts, from the baseline's rate before its first counted tick.
        """
        if self.kind is ToleranceKind.RATIO:
            return min(self.value, MAX_TOLERANCE_RATIO)
        if baseline_rate <= 0:
            return MAX_TOLERANCE_RATIO
        return min(1.0 + self.value / 100.0 / baseline_rate, MAX_TOLERANCE_RATIO)

    def describe(self) -> str:
        return f"{self.value:g}x" if self.kind is ToleranceKind.RATIO else f"+{self.value:g}pp"


@dataclass(frozen=True)
class BaselineComparison:
    """`compare: baseline`: the canary judged against the stable version, same Envoy, same ticks."""

    method: ComparisonMethod = ComparisonMethod.SEQUENTIAL
    alpha: float = 0.01
    tolerance: Tolerance = field(default_factory=lambda: Tolerance(ToleranceKind.RATIO, 1.5))
    # Latency checks count requests slower than this Envoy bucket boundary; None: the
    # baseline's p95 bucket, fixed when the test starts.
    slower_than_ms: float | None = None
    # Custom checks: PromQL for cumulative event and request counters, `{{ cluster }}` and
    # `{{ version }}` filled in per arm.
    events_query: str | None = None
    requests_query: str | None = None


@dataclass(frozen=True)
class MetricCheck:
    """One metric judged every interval: a built-in template or any PromQL.

    With `compare` the canary is judged against the baseline; `threshold` is then the
    SLO (unbounded when not given): the baseline breaking it is a shared incident, not
    the canary's fault.
    """

    name: str
    threshold: ThresholdRange
    template: str | None = None
    query: str | None = None
    compare: BaselineComparison | None = None


class BaselineUnhealthy(StrEnum):
    """What a rollout does while the baseline itself breaks a check's SLO (a shared incident)."""

    HOLD = "hold"  # keep the weight, judge nothing, carry on when the baseline recovers
    PAUSE = "pause"  # pause for an operator


@dataclass(frozen=True)
class AnalysisSpec:
    interval_seconds: float = 10.0
    window_seconds: float = 30.0
    failure_limit: int = 1
    inconclusive_limit: int = 3
    consecutive_error_limit: int = 4
    min_requests: int = 20
    metrics: tuple[MetricCheck, ...] = ()
    baseline_unhealthy: BaselineUnhealthy = BaselineUnhealthy.HOLD


@dataclass(frozen=True)
class HeaderMatchSpec:
    headers: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Policy:
    name: str
    models: tuple[str, ...]
    steps: tuple[Step, ...]
    analysis: AnalysisSpec = field(default_factory=AnalysisSpec)
    match: tuple[HeaderMatchSpec, ...] = ()
    mirror_percent: int = 0
    rollback_on_alert: bool = True
    source: str = ""  # "file:line" where the policy was defined, for messages

    def applies_to(self, model_name: str) -> bool:
        return any(fnmatch.fnmatchcase(model_name, pattern) for pattern in self.models)


class PolicyErrorKind(StrEnum):
    SYNTAX = "syntax"
    SCHEMA = "schema"


@dataclass(frozen=True)
class PolicyError:
    """One problem in a policy file: where it is and what to change."""

    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


def first_matching(policies: tuple[Policy, ...], model_name: str) -> Policy | None:
    """The first policy whose model patterns match (pure)."""
    return next((policy for policy in policies if policy.applies_to(model_name)), None)
