"""Simulated canaries: seeded traffic, errors and latency per arm, judged sequentially and by thresholds.

No Prometheus and no clock: each canary draws its counts tick by tick from its own
`random.Random(seed)`, and the same counts go to both methods:

- the sequential test of `controlplane.rollout.sequential` (errors, and requests
  slower than a fixed latency bucket), rolling back at its first "fail";
- today's canary-alone thresholds: `controlplane.rollout.analysis.judge` on the
  canary's error rate and p99 over a window of ticks, counted as the state machine
  counts them (failures above failureLimit roll back, inconclusiveLimit "no data"
  in a row pause).

Errors and slow requests are exact binomial draws per arm. Request counts are
Poisson (a normal draw above a mean of 1,000): they only set each tick's shares,
on which the sequential test conditions. Latency is log-normal; each tick records
how many requests were slower than each of Envoy's bucket boundaries from 50 ms up,
which is what `histogram_quantile` needs for a p99 above 50 ms.
"""

from __future__ import annotations

import functools
import math
import random
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from controlplane.rollout.analysis import Observation, VerdictKind, judge
from controlplane.rollout.policy import MetricCheck, ThresholdRange
from controlplane.rollout.sequential import ArmCounts, Outcome, SequentialTest, TickCounts

# Envoy's default histogram buckets (ms) from 50 up to the largest this model reaches.
BOUNDARIES_MS: tuple[float, ...] = (50.0, 100.0, 250.0, 500.0, 1000.0)


# --- Exact samplers (Python 3.11 has no binomial draw) ---------------------------------------------------


def binomial(rng: random.Random, n: int, p: float) -> int:
    """An exact Binomial(n, p) draw: inversion searching outwards from the mode, O(standard deviation)."""
    if n <= 0 or p <= 0.0:
        return 0
    if p >= 1.0:
        return n
    if p > 0.5:
        return n - binomial(rng, n, 1.0 - p)
    mode = min(n, int((n + 1) * p))
    if mode == 0:  # most draws here (errors, the slowest buckets): P(0) without lgamma
        zero = math.exp(n * math.log1p(-p))
        u = rng.random() - zero
        if u < 0.0:
            return 0
        odds, k, pmf = p / (1.0 - p), 0, zero
        while k < n:
            pmf *= (n - k) / (k + 1) * odds
            k += 1
            u -= pmf
            if u < 0.0 or pmf < 1e-18:
                return k
        return n
    log_pmf = (
        math.lgamma(n + 1) - math.lgamma(mode + 1) - math.lgamma(n - mode + 1)
        + mode * math.log(p) + (n - mode) * math.log1p(-p)
    )
    odds = p / (1.0 - p)
    return _search_from_mode(
        rng, mode, math.exp(log_pmf),
        up=lambda k: (n - k) / (k + 1) * odds, down=lambda k: k / ((n - k + 1) * odds), upper=n,
    )


def poisson(rng: random.Random, mean: float) -> int:
    """A Poisson(mean) draw: exact below a mean of 1,000, a rounded normal draw above."""
    if mean <= 0.0:
        return 0
    if mean > 1000.0:
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    mode = int(mean)
    log_pmf = mode * math.log(mean) - mean - math.lgamma(mode + 1)
    return _search_from_mode(
        rng, mode, math.exp(log_pmf), up=lambda k: mean / (k + 1), down=lambda k: k / mean, upper=None
    )


def _search_from_mode(
    rng: random.Random, mode: int, pmf: float, *,
    up: Callable[[int], float], down: Callable[[int], float], upper: int | None,
) -> int:
    """Inversion over the support ordered mode, mode+1, mode-1, mode+2, …: exact, and short near the mode."""
    u = rng.random() - pmf
    if u < 0.0:
        return mode
    high = low = mode
    p_high = p_low = pmf
    while p_high > 1e-18 or p_low > 1e-18:
        if upper is None or high < upper:
            p_high *= up(high)
            high += 1
            u -= p_high
            if u < 0.0:
                return high
        else:
            p_high = 0.0
        if low > 0:
            p_low *= down(low)
            low -= 1
            u -= p_low
            if u < 0.0:
                return low
        else:
            p_low = 0.0
    return mode  # the 1e-13 left over by rounding


# --- Scenarios ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Service:
    """How the baseline behaves: error rate per request, log-normal latency."""

    error_rate: float = 0.01
    latency_median_ms: float = 20.0
    latency_sigma: float = 0.5

    @functools.cache  # noqa: B019 (a handful of frozen services per run)
    def slower_shares(self, latency_factor: float) -> tuple[float, ...]:
        """P(latency > boundary) for each of BOUNDARIES_MS, latency scaled by `latency_factor`."""
        median = self.latency_median_ms * latency_factor
        scale = self.latency_sigma * math.sqrt(2.0)
        return tuple(0.5 * math.erfc(math.log(b / median) / scale) for b in BOUNDARIES_MS)


@dataclass(frozen=True)
class Scenario:
    """One kind of rollout: traffic, the canary's behaviour against the baseline's, and prod's own noise."""

    name: str
    requests_per_second: float
    weights: tuple[int, ...] = (5, 10, 25, 50)  # canary % per step
    ticks_per_step: int = 10
    tick_seconds: float = 10.0
    error_ratio: float = 1.0  # canary error rate / baseline's
    latency_factor: float = 1.0  # canary latency / baseline's
    # Noisy prod: in any tick a shared incident may start; it hits both arms alike.
    incident_probability: float = 0.0
    incident_ticks: int = 3
    incident_error_factor: float = 8.0
    incident_latency_factor: float = 2.0
    baseline: Service = field(default_factory=Service)

    @property
    def healthy(self) -> bool:
        return self.error_ratio == 1.0 and self.latency_factor == 1.0

    @property
    def ticks(self) -> int:
        return len(self.weights) * self.ticks_per_step


@dataclass(frozen=True)
class ArmTick:
    requests: int
    errors: int
    slower: tuple[int, ...]  # requests slower than each of BOUNDARIES_MS


@dataclass(frozen=True)
class Tick:
    step: int
    canary: ArmTick
    baseline: ArmTick


def _arm(rng: random.Random, requests: int, error_rate: float, slower_shares: tuple[float, ...]) -> ArmTick:
    errors = binomial(rng, requests, min(1.0, error_rate))
    # Nested draws from the slowest boundary down: each count includes the ones above it.
    slower: list[int] = []
    above, share_above = 0, 0.0
    for share in reversed(slower_shares):
        between = (share - share_above) / (1.0 - share_above) if share_above < 1.0 else 0.0
        above += binomial(rng, requests - above, between)
        share_above = share
        slower.append(above)
    return ArmTick(requests, errors, tuple(reversed(slower)))


class Traffic:
    """A scenario's traffic tick by tick, at whatever weight the caller sets (the state machine's, say)."""

    def __init__(self, scenario: Scenario, rng: random.Random) -> None:
        self.scenario = scenario
        self.rng = rng
        self.incident_left = 0  # ticks of the current shared incident still to come

    def tick(self, weight: int, *, step: int = 0) -> Tick:
        scenario, rng, service = self.scenario, self.rng, self.scenario.baseline
        if self.incident_left == 0 and rng.random() < scenario.incident_probability:
            self.incident_left = scenario.incident_ticks
        error_factor = scenario.incident_error_factor if self.incident_left else 1.0
        latency_factor = scenario.incident_latency_factor if self.incident_left else 1.0
        self.incident_left = max(0, self.incident_left - 1)
        mean_requests = scenario.requests_per_second * scenario.tick_seconds
        canary = _arm(
            rng, poisson(rng, mean_requests * weight / 100),
            service.error_rate * error_factor * scenario.error_ratio,
            service.slower_shares(latency_factor * scenario.latency_factor),
        )
        baseline = _arm(
            rng, poisson(rng, mean_requests * (100 - weight) / 100),
            service.error_rate * error_factor,
            service.slower_shares(latency_factor),
        )
        return Tick(step, canary, baseline)


def simulate_ticks(scenario: Scenario, rng: random.Random) -> list[Tick]:
    """One rollout's ticks: every step of `scenario.weights`, `ticks_per_step` ticks each."""
    traffic = Traffic(scenario, rng)
    return [
        traffic.tick(weight, step=step)
        for step, weight in enumerate(scenario.weights)
        for _ in range(scenario.ticks_per_step)
    ]


# --- The two methods -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Judgement:
    """When a method rolled the canary back, paused it or (sequential only) first passed it; tick indexes."""

    rolled_back_at: int | None = None
    paused_at: int | None = None
    passed_at: int | None = None
    failed_check: str = ""
    # Sequential only: each check's first "fail", judged on its own to the end of the rollout.
    check_failed_at: dict[str, int] = field(default_factory=dict)


def judge_sequentially(ticks: Sequence[Tick], test: SequentialTest, *, slow_boundary_ms: float) -> Judgement:
    """Both checks on every tick; the first "fail" of either rolls back. Passing is noted, not acted on."""
    slow = BOUNDARIES_MS.index(slow_boundary_ms)
    errors, latency = test.start(), test.start()
    failed_at: dict[str, int] = {}
    passed_at: int | None = None
    for index, tick in enumerate(ticks):
        c, b = tick.canary, tick.baseline
        errors = errors.add(TickCounts(ArmCounts(c.requests, c.errors), ArmCounts(b.requests, b.errors)))
        latency = latency.add(
            TickCounts(ArmCounts(c.requests, c.slower[slow]), ArmCounts(b.requests, b.slower[slow]))
        )
        outcomes = {"errors": test.judge(errors).outcome, "latency": test.judge(latency).outcome}
        for name, outcome in outcomes.items():
            if outcome is Outcome.FAIL:
                failed_at.setdefault(name, index)
        if len(failed_at) == len(outcomes):
            break
        if not failed_at and passed_at is None and all(o is Outcome.PASS for o in outcomes.values()):
            passed_at = index
    if not failed_at:
        return Judgement(passed_at=passed_at)
    first = min(failed_at, key=lambda name: failed_at[name])
    return Judgement(
        rolled_back_at=failed_at[first], passed_at=passed_at, failed_check=first, check_failed_at=failed_at
    )


@dataclass(frozen=True)
class Thresholds:
    """Today's analysis: canary-alone limits over a window, with the policy's counting limits."""

    name: str
    max_error_rate: float
    max_p99_ms: float
    window_ticks: int = 3
    min_requests: int = 20
    failure_limit: int = 1
    inconclusive_limit: int = 3

    @property
    def checks(self) -> tuple[MetricCheck, MetricCheck]:
        return (
            MetricCheck("error-rate", ThresholdRange(max=self.max_error_rate),
                        template="request-error-rate"),
            MetricCheck("p99-latency-ms", ThresholdRange(max=self.max_p99_ms),
                        template="request-duration-p99"),
        )


def judge_by_thresholds(ticks: Sequence[Tick], thresholds: Thresholds) -> Judgement:
    """Every tick whose window lies in the current step, as `machine._judge` counts verdicts."""
    error_check, latency_check = thresholds.checks
    failures = streak = 0
    for index in range(thresholds.window_ticks - 1, len(ticks)):
        window = ticks[index - thresholds.window_ticks + 1 : index + 1]
        if window[0].step != window[-1].step:
            continue  # the first window at a weight starts after Envoy acknowledged it
        requests = sum(t.canary.requests for t in window)
        errors = sum(t.canary.errors for t in window)
        slower = tuple(sum(t.canary.slower[i] for t in window) for i in range(len(BOUNDARIES_MS)))
        volume = Observation.of(requests)
        verdicts = [
            judge(error_check, _ratio(errors, requests), canary_requests=volume,
                  min_requests=thresholds.min_requests),
            judge(latency_check, _p99(requests, slower), canary_requests=volume,
                  min_requests=thresholds.min_requests),
        ]
        failed = [v for v in verdicts if v.kind is VerdictKind.FAIL]
        if failed:
            failures += len(failed)
            streak = 0
            if failures > thresholds.failure_limit:
                return Judgement(rolled_back_at=index, failed_check=failed[0].metric)
        elif any(v.kind is VerdictKind.NO_DATA for v in verdicts):
            streak += 1
            if streak >= thresholds.inconclusive_limit:
                return Judgement(paused_at=index)
        else:
            streak = 0
    return Judgement()


def _ratio(errors: int, requests: int) -> Observation:
    return Observation.of(errors / requests) if requests else Observation.no_data("NaN: no requests")


def _p99(requests: int, slower: tuple[int, ...]) -> Observation:
    """`histogram_quantile(0.99, …)` as Prometheus computes it, on buckets from 50 ms up."""
    if not requests:
        return Observation.no_data("NaN: no requests")
    rank = 0.99 * requests
    lower_bound, lower_count = 0.0, 0
    for bound, above in zip(BOUNDARIES_MS, slower, strict=True):
        count = requests - above
        if count >= rank:
            share = (rank - lower_count) / (count - lower_count)
            return Observation.of(lower_bound + (bound - lower_bound) * share)
        lower_bound, lower_count = bound, count
    return Observation.of(BOUNDARIES_MS[-1])  # in the +Inf bucket: the highest finite boundary


# --- Many canaries -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MethodSummary:
    """What one method did to every canary of a scenario."""

    canaries: int
    rolled_back: int
    paused: int
    # For each canary rolled back: its canary requests, all requests and seconds until then.
    canary_requests_to_rollback: tuple[int, ...]
    requests_to_rollback: tuple[int, ...]
    seconds_to_rollback: tuple[float, ...]
    passed: int = 0  # sequential: every check passed (a step could have ended early)
    seconds_to_pass: tuple[float, ...] = ()
    check_failures: dict[str, int] = field(default_factory=dict)  # sequential: canaries each check failed

    @property
    def rollback_rate(self) -> float:
        return self.rolled_back / self.canaries

    def median_canary_requests(self) -> float | None:
        return statistics.median(self.canary_requests_to_rollback) if self.rolled_back else None

    def median_seconds(self) -> float | None:
        return statistics.median(self.seconds_to_rollback) if self.rolled_back else None


@dataclass(frozen=True)
class ScenarioResult:
    scenario: Scenario
    sequential: MethodSummary
    thresholds: dict[str, MethodSummary]


def run_scenario(
    scenario: Scenario, *, canaries: int, seed: int, test: SequentialTest,
    thresholds: Sequence[Thresholds], slow_boundary_ms: float = 50.0,
) -> ScenarioResult:
    """`canaries` rollouts of `scenario`, canary i drawn from Random(f"{seed}:{i}"), judged both ways."""
    sequential: list[tuple[Judgement, list[Tick]]] = []
    by_threshold: dict[str, list[tuple[Judgement, list[Tick]]]] = {t.name: [] for t in thresholds}
    for i in range(canaries):
        ticks = simulate_ticks(scenario, random.Random(f"{seed}:{i}"))
        sequential.append((judge_sequentially(ticks, test, slow_boundary_ms=slow_boundary_ms), ticks))
        for setting in thresholds:
            by_threshold[setting.name].append((judge_by_thresholds(ticks, setting), ticks))
    return ScenarioResult(
        scenario,
        _summary(sequential, scenario.tick_seconds),
        {name: _summary(judged, scenario.tick_seconds) for name, judged in by_threshold.items()},
    )


def _summary(judged: list[tuple[Judgement, list[Tick]]], tick_seconds: float) -> MethodSummary:
    canary_requests: list[int] = []
    requests: list[int] = []
    seconds: list[float] = []
    for judgement, ticks in judged:
        at = judgement.rolled_back_at
        if at is not None:
            canary_requests.append(sum(t.canary.requests for t in ticks[: at + 1]))
            requests.append(sum(t.canary.requests + t.baseline.requests for t in ticks[: at + 1]))
            seconds.append((at + 1) * tick_seconds)
    passed = [j.passed_at for j, _ in judged if j.passed_at is not None and j.rolled_back_at is None]
    check_failures: dict[str, int] = {}
    for judgement, _ in judged:
        for name in judgement.check_failed_at:
            check_failures[name] = check_failures.get(name, 0) + 1
    return MethodSummary(
        canaries=len(judged),
        rolled_back=len(seconds),
        paused=sum(1 for j, _ in judged if j.paused_at is not None),
        canary_requests_to_rollback=tuple(canary_requests),
        requests_to_rollback=tuple(requests),
        seconds_to_rollback=tuple(seconds),
        passed=len(passed),
        seconds_to_pass=tuple((p + 1) * tick_seconds for p in passed),
        check_failures=check_failures,
    )


def binomial_upper(n: int, p: float, *, tail: float) -> int:
    """The smallest k with P(Binomial(n, p) > k) <= tail: how many of n a rate of p may show by chance."""
    cumulative = 0.0
    for k in range(n + 1):
        cumulative += math.exp(
            math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
            + k * math.log(p) + (n - k) * math.log1p(-p)
        )
        if 1.0 - cumulative <= tail:
            return k
    return n
