"""A check against the baseline, tick by tick: counters per arm in, an explained verdict out (pure).

The runner reads, for each arm (canary and baseline, the same Envoys, the same
instant), the cumulative counters a `compare: baseline` check counts, per Envoy
instance (`metrics.templates.arm_queries`): requests and events (5xx, or the
policy's `events`/`requests` PromQL), or the latency histogram's cumulative
buckets. `compare_tick` turns two consecutive readings into the tick's counts, adds
them to the sequential test's evidence and says what it means, with every number
behind it (`CheckRecord`), ready to be stored with the decision.

The first reading of a rollout only calibrates: it is the starting point of the
counters, and the baseline's counts since Envoy started (data from before the test)
fix what the test needs fixed in advance: a "+0.5pp" tolerance as a rate ratio, and
the latency boundary (the baseline's p95 bucket) when the policy names none.

A baseline that breaks the check's SLO (`thresholdRange`) in a tick is a shared
incident: the tick still counts (the test conditions on it, so it is no evidence
against the canary), the check neither passes nor blames, and the verdict says
"baseline unhealthy". Only a canary shown worse than that unhealthy baseline fails.
The baseline stays unhealthy until it has kept its SLO for BASELINE_RECOVERY_TICKS
ticks in a row: a small tick of a prod at 8 % errors shows 5 % or less now and then by
chance, and one such tick must not let a step pass in the middle of an incident.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from controlplane.rollout.analysis import Verdict, VerdictKind
from controlplane.rollout.policy import BaselineComparison, MetricCheck
from controlplane.rollout.sequential import (
    ArmCounts,
    Evidence,
    Outcome,
    SequentialResult,
    SequentialTest,
    TickCounts,
    boundary_for_share,
    histograms_increase,
    series_increase,
    slower_than,
)

LATENCY_TEMPLATE = "request-duration-p99"
# Without `slowerThan`, a latency check counts requests slower than the baseline's p95 bucket.
DEFAULT_SLOW_SHARE = 0.05


Series = Mapping[str, float]  # a counter's value per series: one per Envoy instance ("instance" label)


@dataclass(frozen=True)
class ArmReading:
    """One arm's cumulative counters at a tick, as Prometheus holds them, per series.

    Each counter is read per Envoy instance (a series missing: none yet, or gone), so
    that one Envoy's restart resets only its own counts.
    """

    requests: Series = field(default_factory=dict)
    events: Series = field(default_factory=dict)
    buckets: Mapping[str, Mapping[float, float]] = field(default_factory=dict)  # per series, per `le`

    @classmethod
    def of(cls, *, requests: float | None = None, events: float | None = None,
           buckets: Mapping[float, float] | None = None) -> ArmReading:
        """A reading of a single series (one Envoy)."""
        return cls(
            {} if requests is None else {"": requests},
            {} if events is None else {"": events},
            {} if buckets is None else {"": buckets},
        )

    def total_buckets(self) -> dict[float, float]:
        total: dict[float, float] = {}
        for buckets in self.buckets.values():
            for le, count in buckets.items():
                total[le] = total.get(le, 0.0) + count
        return total

    def as_document(self) -> dict[str, object]:
        return {
            "requests": dict(self.requests),
            "events": dict(self.events),
            "buckets": {series: {_le(le): count for le, count in buckets.items()}
                        for series, buckets in self.buckets.items()},
        }

    @classmethod
    def from_document(cls, document: Mapping[str, object]) -> ArmReading:
        buckets = document.get("buckets", {})
        if not isinstance(buckets, Mapping) or not all(isinstance(b, Mapping) for b in buckets.values()):
            raise ValueError(f"buckets must map a series to counts per `le`, got {buckets!r}")
        try:
            per_series = {str(series): {float(le): float(count) for le, count in counts.items()}
                          for series, counts in buckets.items()}
        except (TypeError, ValueError):
            raise ValueError(f"buckets must map a series to counts per `le`, got {buckets!r}") from None
        return cls(_series(document.get("requests", {})), _series(document.get("events", {})), per_series)


Labels = Mapping[str, str]


def arm_reading(answers: Mapping[str, Sequence[tuple[Labels, float]]]) -> ArmReading:
    """One arm's reading from the answers to its counter queries (`metrics.templates.arm_queries`) (pure).

    Keys "requests" and "events" hold a series per Envoy instance, "buckets" a series per
    instance and `le`. A series is named by its `instance` label, or by all its labels
    when it has none (a policy's own `events` query may sum over every Envoy).
    """
    def named(labels: Labels) -> str:
        if "instance" in labels:
            return labels["instance"]
        return ",".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "le")

    buckets: dict[str, dict[float, float]] = {}
    for labels, value in answers.get("buckets", ()):
        try:
            le = float(labels["le"])
        except (KeyError, ValueError):
            raise ValueError(f"a histogram bucket without a numeric `le` label: {dict(labels)}") from None
        buckets.setdefault(named(labels), {})[le] = value
    return ArmReading(
        {named(labels): value for labels, value in answers.get("requests", ())},
        {named(labels): value for labels, value in answers.get("events", ())},
        buckets,
    )


def _le(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else f"{bound:g}"


def _series(value: object) -> dict[str, float]:
    if not isinstance(value, Mapping):
        raise ValueError(f"expected a number per series, got {value!r}")
    numbers = {str(series): _optional_number(number) for series, number in value.items()}
    return {series: number for series, number in numbers.items() if number is not None}


def _optional_number(value: object) -> float | None:
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ValueError(f"expected a number, got {value!r}")
    return float(value)


# Ticks in a row the baseline must keep its SLO before an incident counts as over.
BASELINE_RECOVERY_TICKS = 3


@dataclass(frozen=True)
class ComparisonState:
    """What a compared check carries between ticks; stored as JSON with the rollout."""

    evidence: Evidence
    tolerance_ratio: float
    slower_than_ms: float | None  # latency checks: the boundary fixed at calibration
    canary: ArmReading  # the last readings: the next tick is the increase over them
    baseline: ArmReading
    recovering: int = 0  # healthy baseline ticks still needed after an unhealthy one

    def as_document(self) -> dict[str, object]:
        return {
            "evidence": self.evidence.as_document(),
            "tolerance_ratio": self.tolerance_ratio,
            "slower_than_ms": self.slower_than_ms,
            "canary": self.canary.as_document(),
            "baseline": self.baseline.as_document(),
            "recovering": self.recovering,
        }

    @classmethod
    def from_document(cls, document: Mapping[str, object]) -> ComparisonState:
        """The state `as_document` wrote; ValueError says what is wrong with anything else."""
        try:
            evidence, canary, baseline = document["evidence"], document["canary"], document["baseline"]
            ratio, slower = document["tolerance_ratio"], document["slower_than_ms"]
        except KeyError as missing:
            raise ValueError(f"not a comparison's state: {missing} missing") from None
        if not (isinstance(evidence, Mapping) and isinstance(canary, Mapping)
                and isinstance(baseline, Mapping)):
            raise ValueError("not a comparison's state: evidence and readings must be objects")
        tolerance = _optional_number(ratio)
        if tolerance is None:
            raise ValueError("not a comparison's state: no tolerance_ratio")
        recovering = document.get("recovering", 0)  # absent in states stored before it existed
        if not isinstance(recovering, int) or isinstance(recovering, bool) or recovering < 0:
            raise ValueError("not a comparison's state: recovering must be a count")
        return cls(
            Evidence.from_document(evidence), tolerance, _optional_number(slower),
            ArmReading.from_document(canary), ArmReading.from_document(baseline), recovering,
        )


@dataclass(frozen=True)
class Comparisons:
    """A rollout's compared checks between ticks: each check's state, and the weight its readings belong to.

    `weight_acked_at` is when Envoy acknowledged the weight under which the readings were
    taken: once the rollout's acknowledgement differs, the weight changed, and the next
    tick must count from a reading taken under the new weight (`rebase`).
    """

    weight_acked_at: float | None
    checks: Mapping[str, ComparisonState] = field(default_factory=dict)

    def as_document(self) -> dict[str, object]:
        return {
            "weight_acked_at": self.weight_acked_at,
            "checks": {name: state.as_document() for name, state in self.checks.items()},
        }

    @classmethod
    def from_document(cls, document: Mapping[str, object]) -> Comparisons:
        """The comparisons `as_document` wrote; ValueError says what is wrong with anything else."""
        checks = document.get("checks", {})
        if not isinstance(checks, Mapping) or not all(isinstance(c, Mapping) for c in checks.values()):
            raise ValueError("not a rollout's comparisons: checks must map a check's name to its state")
        return cls(
            _optional_number(document.get("weight_acked_at")),
            {str(name): ComparisonState.from_document(state) for name, state in checks.items()},
        )


@dataclass(frozen=True)
class ArmRecord:
    """One arm in a decision: what it did this tick and over the whole test."""

    arm: str  # "canary" or "baseline"
    version: str
    tick: ArmCounts
    total: ArmCounts

    def as_document(self) -> dict[str, object]:
        return {"arm": self.arm, "version": self.version, "tick": self.tick.as_document(),
                "total": self.total.as_document()}


@dataclass(frozen=True)
class CheckRecord:
    """One compared check's decision, explained: per arm the counts and rates, the e-values and thresholds."""

    check: str
    kind: VerdictKind
    counted: str  # what an event is: "5xx responses", "requests slower than 100 ms", "events query"
    arms: tuple[ArmRecord, ...]
    result: SequentialResult | None  # None while calibrating or when the tick could not be counted
    tolerance: str  # as the policy wrote it: "1.5x" or "+0.5pp"
    tolerance_ratio: float | None
    baseline_slo: str  # the check's thresholdRange, judged on the baseline; "" when none
    baseline_healthy: bool
    message: str

    def verdict(self) -> Verdict:
        """The state machine's view: a sequential fail or pass is decisive (failureLimit does not apply)."""
        value = self.result.e_value if self.result is not None else None
        decisive = self.kind in (VerdictKind.FAIL, VerdictKind.PASS) and self.result is not None
        return Verdict(self.check, self.kind, value, self.message, decisive=decisive)

    def as_document(self) -> dict[str, object]:
        result = self.result
        return {
            "check": self.check,
            "method": "sequential",
            "verdict": self.kind.value,
            "counted": self.counted,
            "arms": [arm.as_document() for arm in self.arms],
            "e_value": None if result is None else result.e_value,
            "pass_e_value": None if result is None else result.pass_e_value,
            "threshold": None if result is None else result.threshold,
            "alpha": None if result is None else result.alpha,
            "observed_ratio": None if result is None else result.observed_ratio,
            "tolerance": self.tolerance,
            "tolerance_ratio": self.tolerance_ratio,
            "baseline_slo": self.baseline_slo,
            "baseline_healthy": self.baseline_healthy,
            "message": self.message,
        }


def compare_tick(
    check: MetricCheck, state: ComparisonState | None, *, canary: ArmReading, baseline: ArmReading,
    canary_version: str, stable_version: str, min_requests: int = 0,
) -> tuple[ComparisonState | None, CheckRecord]:
    """The check's next state and its explained verdict after one tick (pure).

    `state` None: this reading calibrates and starts the test (or says why it cannot
    yet). A reading whose counts are impossible (more events than requests) is an
    error verdict and leaves the state as it was, so the next tick is counted from
    the last good reading. A tick with fewer than `min_requests` canary requests
    still counts, but unless the test fails or passes it is "no data", as a window
    is for a threshold: a canary that gets no traffic is never promoted by waiting.
    """
    comparison = check.compare
    if comparison is None:
        raise ValueError(f"check {check.name!r} does not compare with the baseline")
    versions = {"canary": canary_version, "baseline": stable_version}
    if state is None:
        return _calibrate(check, comparison, canary, baseline, versions)
    try:
        test = SequentialTest(alpha=comparison.alpha, tolerance=state.tolerance_ratio)
        tick = TickCounts(
            _arm_counts(state.canary, canary, state.slower_than_ms),
            _arm_counts(state.baseline, baseline, state.slower_than_ms),
        )
        evidence = state.evidence.add(tick)
        result = test.judge(evidence)
    except ValueError as error:
        record = _record(check, comparison, state, VerdictKind.ERROR, None, None, versions, True,
                         f"{check.name}: {error}")
        return state, record
    healthy_now, slo = _baseline_health(check, state.slower_than_ms, baseline, state.baseline, tick.baseline)
    recovering = BASELINE_RECOVERY_TICKS if not healthy_now else max(0, state.recovering - 1)
    healthy = healthy_now and recovering == 0
    if healthy_now and not healthy:
        kept = BASELINE_RECOVERY_TICKS - recovering
        slo = f"{slo}; recovering: kept for {kept} of {BASELINE_RECOVERY_TICKS} ticks in a row"
    kind = _KINDS[result.outcome]
    message = f"{check.name}: {result.message}"
    if not healthy and kind is not VerdictKind.FAIL:
        kind = VerdictKind.BASELINE_UNHEALTHY
        message = f"{check.name}: baseline unhealthy ({slo}); {result.message}"
    elif kind is VerdictKind.HOLD and tick.canary.requests < min_requests:
        kind = VerdictKind.NO_DATA
        message = (f"{check.name}: {tick.canary.requests} canary requests in the tick < minRequests "
                   f"{min_requests}; {result.message}")
    advanced = ComparisonState(
        evidence, state.tolerance_ratio, state.slower_than_ms, canary, baseline, recovering
    )
    return advanced, _record(check, comparison, advanced, kind, tick, result, versions, healthy, message)


def unavailable(
    check: MetricCheck, state: ComparisonState | None, *, canary_version: str, stable_version: str,
    reason: str,
) -> CheckRecord:
    """The error verdict of a tick whose counters could not be read (pure): nothing is counted."""
    comparison = check.compare
    if comparison is None:
        raise ValueError(f"check {check.name!r} does not compare with the baseline")
    versions = {"canary": canary_version, "baseline": stable_version}
    return _record(check, comparison, state, VerdictKind.ERROR, None, None, versions, True,
                   f"{check.name}: {reason}")


def rebase(state: ComparisonState, *, canary: ArmReading, baseline: ArmReading) -> ComparisonState:
    """The state counting from these readings on, without counting what came since the last ones (pure).

    Called when the weight changes: a tick must not span two weights, since each tick
    is judged at its own request share. Leaving counts out is valid; mixing shares is not.
    """
    return ComparisonState(
        state.evidence, state.tolerance_ratio, state.slower_than_ms, canary, baseline, state.recovering
    )


_KINDS = {Outcome.FAIL: VerdictKind.FAIL, Outcome.PASS: VerdictKind.PASS, Outcome.CONTINUE: VerdictKind.HOLD}


def _calibrate(
    check: MetricCheck, comparison: BaselineComparison, canary: ArmReading, baseline: ArmReading,
    versions: dict[str, str],
) -> tuple[ComparisonState | None, CheckRecord]:
    slower = comparison.slower_than_ms
    if check.template == LATENCY_TEMPLATE and slower is None:
        counts = {le: round(count) for le, count in baseline.total_buckets().items()}
        slower = boundary_for_share(counts, DEFAULT_SLOW_SHARE)
        if slower is None:
            record = _record(check, comparison, None, VerdictKind.NO_DATA, None, None, versions, True,
                             f"{check.name}: waiting for baseline latency to fix the boundary "
                             f"(the baseline's p{100 * (1 - DEFAULT_SLOW_SHARE):g} bucket)")
            return None, record
    rate = _long_run_rate(baseline, slower)
    ratio = comparison.tolerance.ratio_at(rate if rate is not None else 0.0)
    if ratio <= 1.0:  # cannot happen for a parsed policy; a test needs room above 1
        ratio = comparison.tolerance.ratio_at(0.0)
    state = ComparisonState(SequentialTest(comparison.alpha, ratio).start(), ratio, slower, canary, baseline)
    record = _record(check, comparison, state, VerdictKind.HOLD, None, None, versions, True,
                     f"{check.name}: started against the baseline (tolerance "
                     f"{comparison.tolerance.describe()} = {ratio:.3g}x the baseline's rate"
                     + (f", counting requests slower than {slower:g} ms" if slower is not None else "") + ")")
    return state, record


def _long_run_rate(baseline: ArmReading, slower: float | None) -> float | None:
    """The baseline's event rate since its counters started: data from before the test."""
    if slower is not None:
        buckets = baseline.total_buckets()
        if math.inf not in buckets or slower not in buckets or buckets[math.inf] <= 0:
            return None
        return (buckets[math.inf] - buckets[slower]) / buckets[math.inf]
    requests = sum(baseline.requests.values())
    return sum(baseline.events.values()) / requests if requests > 0 else None


def _arm_counts(previous: ArmReading, current: ArmReading, slower: float | None) -> ArmCounts:
    if slower is not None:
        if not current.buckets:
            return ArmCounts()  # no histogram yet: no requests answered
        return slower_than(histograms_increase(previous.buckets, current.buckets), slower)
    return ArmCounts(
        series_increase(previous.requests, current.requests),
        series_increase(previous.events, current.events),
    )


def _baseline_health(
    check: MetricCheck, slower: float | None, baseline: ArmReading, previous: ArmReading, tick: ArmCounts
) -> tuple[bool, str]:
    """Whether the baseline kept the check's SLO this tick, and the SLO with the baseline's value."""
    threshold = check.threshold
    if (threshold.min is None and threshold.max is None) or tick.requests == 0:
        return True, ""
    if slower is not None and baseline.buckets:
        value = _p99(histograms_increase(previous.buckets, baseline.buckets))
        shown = f"p99 {value:.4g} ms" if value is not None else "p99 unknown"
    else:
        value = tick.rate
        shown = f"rate {value:.3%}" if value is not None else "rate unknown"
    if value is None or threshold.contains(value):
        return True, f"baseline {shown} within {threshold.describe()}"
    return False, f"baseline {shown} outside {threshold.describe()}"


def _p99(increase: Mapping[float, int]) -> float | None:
    """`histogram_quantile(0.99, …)` over one tick's bucket increases, in the buckets' unit."""
    total = increase.get(math.inf, 0)
    if total <= 0:
        return None
    rank = 0.99 * total
    lower, below = 0.0, 0
    finite = sorted(le for le in increase if math.isfinite(le))
    for le in finite:
        count = increase[le]
        if count >= rank:
            return lower + (le - lower) * (rank - below) / (count - below) if count > below else le
        lower, below = le, count
    return finite[-1] if finite else None  # in the +Inf bucket: the highest finite boundary


def _record(
    check: MetricCheck, comparison: BaselineComparison, state: ComparisonState | None, kind: VerdictKind,
    tick: TickCounts | None, result: SequentialResult | None, versions: dict[str, str], healthy: bool,
    message: str,
) -> CheckRecord:
    slower = state.slower_than_ms if state is not None else comparison.slower_than_ms
    if slower is not None:
        counted = f"requests slower than {slower:g} ms"
    elif comparison.events_query is not None:
        counted = "events of the events query"
    else:
        counted = "5xx responses"
    none = (ArmCounts(), ArmCounts())
    totals = (state.evidence.canary, state.evidence.baseline) if state is not None else none
    ticks = (tick.canary, tick.baseline) if tick is not None else none
    arms = tuple(
        ArmRecord(arm, versions[arm], counts, total)
        for arm, counts, total in zip(("canary", "baseline"), ticks, totals, strict=True)
    )
    threshold = check.threshold.describe()
    return CheckRecord(
        check=check.name, kind=kind, counted=counted, arms=arms, result=result,
        tolerance=comparison.tolerance.describe(),
        tolerance_ratio=state.tolerance_ratio if state is not None else None,
        baseline_slo=threshold, baseline_healthy=healthy, message=message,
    )
