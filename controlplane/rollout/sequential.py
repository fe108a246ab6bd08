"""Canary against baseline, tick by tick: an anytime-valid sequential test on per-arm counts (pure).

The test of Lindon, Sanden and Shirikian (KDD 2022, Netflix's canary analysis): in
each tick the canary serves R_c requests and has x events (errors, or requests
slower than a latency boundary), the baseline R_b requests and y events. Whatever
the shared, time-varying event intensity, given the tick's n = x + y events the
canary's share x is Binomial(n, theta(r)) with

    theta(r) = r·R_c / (r·R_c + R_b),   r = canary event rate / baseline event rate.

"The canary is no worse" is r <= 1. For an alternative r > 1 the likelihood ratio
of the counts so far, LR(r) = prod over ticks of
theta(r)^x (1 - theta(r))^(n - x) / (theta(1)^x (1 - theta(1))^(n - x)), and the
mixture E = sum_j w_j LR(r_j) over a grid of regressions fixed in advance (weights
summing to at most 1) is the e-process. The check fails as soon as E >= 1/alpha.

Why the false-rollback probability stays below alpha over the whole rollout:

- Per tick, conditionally. Each tick's factor is a likelihood ratio of the canary's
  share *given the past, the tick's request counts and the tick's total events*, so
  its conditional expectation under r = 1 is exactly 1 (and at most 1 for any r < 1:
  the factor grows with x while x is stochastically smaller). The product is a
  nonnegative (super)martingale whatever happened before, so the mixture is one too.
- Weights may change between ticks. theta(1) is the tick's own request share, so a
  tick at 5 % and a tick at 50 % are each judged against their own share; the
  conditioning makes no assumption about how the weight was chosen, only that it
  was chosen before the tick's outcomes (a tick must not span a weight change).
- Shared incidents cancel. A downstream outage that multiplies both arms' rates
  by k leaves theta unchanged: no evidence against the canary.
- Repeated looks. Ville's inequality: for a nonnegative supermartingale starting at
  1, P(there is a t with E_t >= 1/alpha) <= alpha. Looking after every tick, stopping
  or continuing for any reason, costs nothing.
- Bernoulli, not Poisson, errors. Per-request events make x given n Fisher's
  (noncentral) hypergeometric rather than binomial; each factor is convex in x and
  the hypergeometric is smaller in convex order than the binomial (Hoeffding 1963,
  Theorem 4), so the expectation under the null is still at most 1.

Passing early uses the same construction the other way round: against the
composite null "r >= tolerance" a mixture over alternatives r_j < tolerance is a
supermartingale for every r in that null (each factor falls as x grows), and when it
reaches 1/alpha the data rule out a regression larger than the tolerance, at level
alpha. That is the statement "the upper end of the confidence sequence for r lies
below the tolerance", tested at the one point where it matters.

The state (`Evidence`) keeps, per tracked rate ratio, the log-likelihood of every
count so far; it survives restarts as JSON and grows by one tick at a time. Sums of
exponentials are taken in log space, so an overwhelming e-value does not overflow.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property

__all__ = [
    "ArmCounts",
    "Evidence",
    "Outcome",
    "SequentialResult",
    "SequentialTest",
    "TickCounts",
    "boundary_for_share",
    "counter_increase",
    "histogram_increase",
    "histograms_increase",
    "series_increase",
    "slower_than",
]


@dataclass(frozen=True)
class ArmCounts:
    """One arm's requests and events (errors, or requests slower than a boundary)."""

    requests: int = 0
    events: int = 0

    def __post_init__(self) -> None:
        if self.requests < 0 or self.events < 0:
            raise ValueError(f"counts cannot be negative: {self.events} events in {self.requests} requests")
        if self.events > self.requests:
            raise ValueError(f"more events ({self.events}) than requests ({self.requests})")

    def __add__(self, other: ArmCounts) -> ArmCounts:
        return ArmCounts(self.requests + other.requests, self.events + other.events)

    @property
    def rate(self) -> float | None:
        return self.events / self.requests if self.requests else None

    def describe(self) -> str:
        rate = self.rate
        shown = "no requests" if rate is None else f"{rate:.3%}"
        return f"{shown} ({self.events}/{self.requests})"

    def as_document(self) -> dict[str, object]:
        return {"requests": self.requests, "events": self.events, "rate": self.rate}


@dataclass(frozen=True)
class TickCounts:
    """What both arms did in one tick: the increments of their counters."""

    canary: ArmCounts
    baseline: ArmCounts


@dataclass(frozen=True)
class Evidence:
    """A check's state after some ticks: the log-likelihood of all its counts at each tracked rate ratio.

    Only differences between entries are ever used (likelihood ratios), so the
    constant binomial coefficients are left out.
    """

    ratios: tuple[float, ...]
    log_likelihood: tuple[float, ...]
    canary: ArmCounts = field(default_factory=ArmCounts)
    baseline: ArmCounts = field(default_factory=ArmCounts)
    ticks: int = 0
    # log of each ratio, derived once and handed on from tick to tick (the tick update is the hot path)
    log_ratios: tuple[float, ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.log_ratios:
            object.__setattr__(self, "log_ratios", tuple(math.log(r) for r in self.ratios))

    @classmethod
    def start(cls, ratios: Sequence[float]) -> Evidence:
        if not ratios or any(not (math.isfinite(r) and r > 0) for r in ratios):
            raise ValueError("rate ratios must be positive finite numbers")
        return cls(tuple(ratios), (0.0,) * len(ratios))

    def add(self, tick: TickCounts) -> Evidence:
        """The evidence with one more tick (pure). A tick with no events or an idle arm says nothing."""
        x, y = tick.canary.events, tick.baseline.events
        n = x + y
        if n and tick.canary.requests and tick.baseline.requests:
            share = tick.canary.requests / tick.baseline.requests
            # log theta(r) = log(r·a) - log1p(r·a), log(1 - theta(r)) = -log1p(r·a), a = R_c / R_b
            log1p = math.log1p
            shift = x * math.log(share)  # the same for every ratio; kept so that these stay log-likelihoods
            likelihood = tuple([
                ll + shift + x * log_r - n * log1p(r * share)
                for r, log_r, ll in zip(self.ratios, self.log_ratios, self.log_likelihood, strict=True)
            ])
        else:
            likelihood = self.log_likelihood
        return Evidence(
            self.ratios,
            likelihood,
            self.canary + tick.canary,
            self.baseline + tick.baseline,
            self.ticks + 1,
            self.log_ratios,
        )

    def log_e_value(self, *, null: int, alternatives: Sequence[int], weights: Sequence[float]) -> float:
        """log of sum_j weights[j] · LR(ratios[alternatives[j]] against ratios[null]) (log-sum-exp).

        Positive weights summing to at most 1, fixed before the first tick, keep it an e-process.
        """
        terms = [self.log_likelihood[index] for index in alternatives]
        if not terms:
            return -math.inf
        top = max(terms)
        exp = math.exp
        total = sum([w * exp(term - top) for term, w in zip(terms, weights, strict=True)])
        return top - self.log_likelihood[null] + math.log(total)

    def as_document(self) -> dict[str, object]:
        """A JSON-ready form (floats round-trip exactly through `json`)."""
        return {
            "ratios": list(self.ratios),
            "log_likelihood": list(self.log_likelihood),
            "canary": {"requests": self.canary.requests, "events": self.canary.events},
            "baseline": {"requests": self.baseline.requests, "events": self.baseline.events},
            "ticks": self.ticks,
        }

    @classmethod
    def from_document(cls, document: Mapping[str, object]) -> Evidence:
        """The evidence `as_document` wrote; ValueError says what is wrong with anything else."""
        try:
            ratios = tuple(float(r) for r in _list(document["ratios"]))
            likelihood = tuple(float(v) for v in _list(document["log_likelihood"]))
            canary, baseline = _arm(document["canary"]), _arm(document["baseline"])
            ticks = document["ticks"]
        except (KeyError, TypeError) as error:
            raise ValueError(f"not a sequential test's evidence: {error}") from None
        if len(ratios) != len(likelihood):
            raise ValueError("not a sequential test's evidence: ratios and log_likelihood differ in length")
        if not all(math.isfinite(v) for v in likelihood):
            raise ValueError("not a sequential test's evidence: a log-likelihood is not a finite number")
        if not isinstance(ticks, int) or ticks < 0:
            raise ValueError(f"not a sequential test's evidence: ticks must be a count, got {ticks!r}")
        Evidence.start(ratios)  # the same checks on the ratios
        return cls(ratios, likelihood, canary, baseline, ticks)


def _list(value: object) -> list[float]:
    if not isinstance(value, list) or not all(isinstance(v, int | float) for v in value):
        raise TypeError("expected a list of numbers")
    return value


def _arm(value: object) -> ArmCounts:
    if not isinstance(value, Mapping):
        raise TypeError("expected {requests, events}")
    requests, events = value["requests"], value["events"]
    if not isinstance(requests, int) or not isinstance(events, int):
        raise TypeError("requests and events must be integers")
    return ArmCounts(requests, events)


class Outcome(StrEnum):
    FAIL = "fail"  # the canary is worse than the baseline (e-value >= 1/alpha)
    PASS = "pass"  # a regression larger than the tolerance is ruled out
    CONTINUE = "continue"  # neither yet: keep looking


@dataclass(frozen=True)
class SequentialResult:
    """A sequential check's answer after the latest tick, with the numbers behind it."""

    outcome: Outcome
    log_e_value: float  # against "the canary is no worse than the baseline"
    log_pass_e_value: float  # against "the canary is worse than the tolerance"
    alpha: float
    tolerance: float
    canary: ArmCounts
    baseline: ArmCounts
    ticks: int

    @property
    def e_value(self) -> float:
        return _exp(self.log_e_value)

    @property
    def pass_e_value(self) -> float:
        return _exp(self.log_pass_e_value)

    @property
    def threshold(self) -> float:
        return 1.0 / self.alpha

    @property
    def observed_ratio(self) -> float | None:
        """The canary's rate over the baseline's, pooled over all ticks (for reading, not deciding)."""
        canary, baseline = self.canary.rate, self.baseline.rate
        if canary is None or baseline is None or baseline == 0:
            return None
        return canary / baseline

    @property
    def message(self) -> str:
        counts = f"canary {self.canary.describe()} against baseline {self.baseline.describe()}"
        threshold = f"1/alpha = {self.threshold:g}"
        match self.outcome:
            case Outcome.FAIL:
                return f"{counts}: worse than the baseline (e-value {self.e_value:.3g} >= {threshold})"
            case Outcome.PASS:
                return (
                    f"{counts}: no more than {self.tolerance:g}x the baseline "
                    f"(e-value {self.pass_e_value:.3g} >= {threshold})"
                )
            case _:
                events = self.canary.events + self.baseline.events
                return (
                    f"{counts}: inconclusive, {events} events so far (e-value {self.e_value:.3g}, "
                    f"fails at {self.threshold:g}; within {self.tolerance:g}x: {self.pass_e_value:.3g})"
                )

    def as_document(self) -> dict[str, object]:
        return {
            "outcome": self.outcome.value,
            "e_value": self.e_value,
            "pass_e_value": self.pass_e_value,
            "threshold": self.threshold,
            "alpha": self.alpha,
            "tolerance": self.tolerance,
            "canary": self.canary.as_document(),
            "baseline": self.baseline.as_document(),
            "observed_ratio": self.observed_ratio,
            "ticks": self.ticks,
            "message": self.message,
        }


_LARGEST_SHOWN = 1e300  # an e-value beyond this is shown as this: JSON has no infinity


def _exp(log_value: float) -> float:
    return _LARGEST_SHOWN if log_value >= math.log(_LARGEST_SHOWN) else math.exp(log_value)


@dataclass(frozen=True)
class SequentialTest:
    """A check's test, fixed before its first tick.

    `tolerance` is the largest acceptable rate ratio (1.5: "no more than 1.5 times
    the baseline"). The mixture puts equal weight on `grid_points` regressions spaced
    evenly in log r over (1, max_ratio], and as many below the tolerance, down to
    tolerance / max_ratio: a prior fixed in advance, as validity requires.
    """

    alpha: float = 0.01
    tolerance: float = 1.5
    max_ratio: float = 20.0
    grid_points: int = 30

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be between 0 and 1, not {self.alpha}")
        if not (math.isfinite(self.tolerance) and self.tolerance > 1):
            raise ValueError(f"tolerance must be a rate ratio above 1, not {self.tolerance}")
        if not (math.isfinite(self.max_ratio) and self.max_ratio > 1):
            raise ValueError(f"max_ratio must be above 1, not {self.max_ratio}")
        if self.grid_points < 1:
            raise ValueError(f"grid_points must be at least 1, not {self.grid_points}")

    @cached_property
    def ratios(self) -> tuple[float, ...]:
        """[1, g, …, g^K, tolerance, tolerance/g, …, tolerance/g^K] with g^K = max_ratio, K = grid_points."""
        step = math.log(self.max_ratio) / self.grid_points
        above = tuple(math.exp(k * step) for k in range(self.grid_points + 1))
        below = tuple(self.tolerance * math.exp(-k * step) for k in range(self.grid_points + 1))
        return above + below

    def start(self) -> Evidence:
        return Evidence.start(self.ratios)

    def judge(self, evidence: Evidence) -> SequentialResult:
        """Fail, pass or continue after the evidence so far (pure)."""
        if evidence.ratios != self.ratios:
            raise ValueError("the evidence was gathered for another test (alpha, tolerance or grid changed)")
        k = self.grid_points
        weights = (1.0 / k,) * k
        log_e = evidence.log_e_value(null=0, alternatives=range(1, k + 1), weights=weights)
        log_pass = evidence.log_e_value(null=k + 1, alternatives=range(k + 2, 2 * k + 2), weights=weights)
        log_threshold = -math.log(self.alpha)
        if log_e >= log_threshold:
            outcome = Outcome.FAIL
        elif log_pass >= log_threshold:
            outcome = Outcome.PASS
        else:
            outcome = Outcome.CONTINUE
        return SequentialResult(
            outcome, log_e, log_pass, self.alpha, self.tolerance, evidence.canary, evidence.baseline,
            evidence.ticks,
        )


# --- From Prometheus counters to per-tick counts --------------------------------------------------------

Buckets = Mapping[float, float]  # cumulative count per upper bound `le` (math.inf for "+Inf")


def counter_increase(previous: float | None, current: float | None) -> int:
    """A counter's increase between two ticks, as a whole number of requests or events.

    `previous` None: the series did not exist at the previous tick (Envoy creates the
    5xx series at the first 5xx), so everything it counts is new. `current` None: the
    series is gone (Envoy restarted), nothing new. A counter lower than before was
    reset (a restart): it counted from zero, as Prometheus's `increase()` assumes.
    The first tick of an analysis has no previous snapshot at all: it only takes one.
    """
    if current is None:
        return 0
    if previous is None or current < previous:
        return round(current)
    return round(current - previous)


def histogram_increase(previous: Buckets | None, current: Buckets) -> dict[float, int]:
    """Per-tick increase of each cumulative bucket; any bucket lower than before means a reset."""
    if previous is None or any(count < previous.get(le, 0.0) for le, count in current.items()):
        return {le: round(count) for le, count in current.items()}
    return {le: round(count - previous.get(le, 0.0)) for le, count in current.items()}


def series_increase(previous: Mapping[str, float], current: Mapping[str, float]) -> int:
    """The increase of a counter read as several series (one per Envoy instance), each reset on its own.

    Summing first and taking the increase after would read one Envoy's restart as a
    reset of all, and count the others' whole history again.
    """
    return sum(counter_increase(previous.get(series), value) for series, value in current.items())


def histograms_increase(
    previous: Mapping[str, Buckets], current: Mapping[str, Buckets]
) -> dict[float, int]:
    """Per-tick bucket increases of a histogram read as several series, each reset on its own, summed."""
    total: dict[float, int] = {}
    for series, buckets in current.items():
        for le, count in histogram_increase(previous.get(series), buckets).items():
            total[le] = total.get(le, 0) + count
    return total


def slower_than(increase: Mapping[float, int], boundary: float) -> ArmCounts:
    """Requests and those slower than `boundary` (a bucket's `le`), from cumulative bucket counts."""
    if math.inf not in increase:
        raise ValueError("the histogram has no +Inf bucket: its total is unknown")
    if boundary not in increase:
        bounds = ", ".join(f"{le:g}" for le in sorted(increase) if math.isfinite(le))
        raise ValueError(f"{boundary:g} is not a bucket boundary of the histogram; boundaries: {bounds}")
    total = increase[math.inf]
    # Cumulative counts are scraped as one sample, but clamp so that a torn read cannot go negative.
    return ArmCounts(total, max(0, min(total, total - increase[boundary])))


def boundary_for_share(buckets: Mapping[float, int], share: float) -> float | None:
    """The smallest bucket boundary that at most `share` of these requests exceed; None if none does.

    Used once, on the baseline before a step, to fix the latency boundary a
    sequential latency check counts against: fixed in advance, so validity holds.
    """
    total = buckets.get(math.inf, 0)
    if total <= 0:
        return None
    for le in sorted(b for b in buckets if math.isfinite(b)):
        if total - buckets[le] <= share * total:
            return le
    return None
