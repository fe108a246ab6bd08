"""One analysis of a rollout's checks at one instant: what the live runner and `aegis policy replay` share.

Threshold checks run their PromQL and are judged as before (`analysis.judge`).
Checks with `compare: baseline` read each arm's cumulative counters per Envoy
instance (`metrics.templates.arm_queries`) and advance their sequential test by one
tick (`comparison.compare_tick`); the tests' states travel in `RolloutState.comparisons`.

Ticks never span two weights. The readings carry the acknowledgement they were taken
under; on the first analysis after the weight changed, the counters are first read at
`weight_acked_at + window / 2` and the test counts from there (`comparison.rebase`),
leaving the switch itself uncounted. Half a window: a window holds at least two
scrapes wherever `rate()` over it works, so a scrape taken after every Envoy ran the new
weight lies before that instant. The same instant starts (calibrates) a test.

A reading that fails (Prometheus down, a bad answer) is an error verdict that counts
nothing and keeps the last good reading, as a threshold check's error does: the
consecutive-error limit pauses, it never rolls back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from controlplane.metrics.templates import (
    CANARY_REQUESTS_QUERY,
    TemplateContext,
    TemplateError,
    arm_queries,
    query_for,
    render,
)
from controlplane.rollout.analysis import Observation, SeriesObservation, Verdict, judge
from controlplane.rollout.comparison import (
    ArmReading,
    CheckRecord,
    Comparisons,
    ComparisonState,
    arm_reading,
    compare_tick,
    rebase,
    unavailable,
)
from controlplane.rollout.machine import RolloutState
from controlplane.rollout.policy import MetricCheck, Policy
from controlplane.xds.resources import cluster_name

# How far behind the rollout's clock an analysis reads Prometheus. A sample is stamped with
# its scrape's start but can be queried only once that scrape is stored: reading at "now"
# could miss one that a replay at the same instant later finds. Local scrapes are stored
# within milliseconds; a second leaves room for a slow one.
SCRAPE_SETTLE_SECONDS = 1.0


def reading_instant(now: float) -> float:
    """The instant an analysis at `now` reads the counters at (live and in a replay alike)."""
    return now - SCRAPE_SETTLE_SECONDS


class CounterSource(Protocol):
    """Instant queries at a given time (None: now), as `metrics.prometheus.PrometheusSource` answers them."""

    async def query(self, promql: str, *, at: float | None = None) -> Observation: ...

    async def series(self, promql: str, *, at: float | None = None) -> SeriesObservation: ...


@dataclass(frozen=True)
class Evaluation:
    """An analysis' verdicts (one per check, in the policy's order), the compared checks explained,
    and the comparisons' next state."""

    verdicts: tuple[Verdict, ...]
    checks: tuple[CheckRecord, ...]
    comparisons: Comparisons | None
    at: float | None  # the instant the counters were read (None: Prometheus's now)

    def documents(self) -> list[dict[str, object]]:
        return [record.as_document() for record in self.checks]


def context_of(policy: Policy, state: RolloutState) -> TemplateContext:
    spec = policy.analysis
    return TemplateContext(
        model=state.model_name,
        stable_version=state.stable_version,
        canary_version=state.canary_version,
        stable_cluster=cluster_name(state.model_name, state.stable_version),
        canary_cluster=cluster_name(state.model_name, state.canary_version),
        window_seconds=spec.window_seconds,
        interval_seconds=spec.interval_seconds,
    )


async def evaluate(
    policy: Policy, state: RolloutState, source: CounterSource, *, now: float, at: float | None = None
) -> Evaluation:
    """Every check of the policy at `at` (None: Prometheus's now; a replay passes each tick's time).

    `now` is the rollout's clock, for the rebase instant; `at` defaults to it in a replay.
    """
    spec = policy.analysis
    context = context_of(policy, state)
    values = context.values()
    thresholds = [check for check in spec.metrics if check.compare is None]
    judged: dict[str, Verdict] = {}
    if thresholds:
        measured = await asyncio.gather(
            source.query(render(CANARY_REQUESTS_QUERY, values), at=at),
            *(source.query(render(query_for(check), values), at=at) for check in thresholds),
        )
        volume = measured[0]
        for check, result in zip(thresholds, measured[1:], strict=True):
            judged[check.name] = judge(check, result, canary_requests=volume, min_requests=spec.min_requests)
    compared = [check for check in spec.metrics if check.compare is not None]
    comparisons = state.comparisons
    records: tuple[CheckRecord, ...] = ()
    if compared:
        comparisons, records = await _compare(policy, state, source, context, compared, now=now, at=at)
        judged.update((record.check, record.verdict()) for record in records)
    verdicts = tuple(judged[check.name] for check in spec.metrics)
    return Evaluation(verdicts, records, comparisons, at)


async def _compare(
    policy: Policy, state: RolloutState, source: CounterSource, context: TemplateContext,
    checks: list[MetricCheck], *, now: float, at: float | None,
) -> tuple[Comparisons, tuple[CheckRecord, ...]]:
    previous = state.comparisons
    states: dict[str, ComparisonState | None] = dict(previous.checks) if previous is not None else {}
    same_weight = previous is not None and previous.weight_acked_at == state.weight_acked_at
    failed: dict[str, str] = {}
    if not same_weight and state.weight_acked_at is not None:
        # A new weight: count from a reading taken under it (see the module's docstring).
        since = min(state.weight_acked_at + policy.analysis.window_seconds / 2, at if at is not None else now)
        readings = await asyncio.gather(*(_read(check, context, source, at=since) for check in checks))
        for check, reading in zip(checks, readings, strict=True):
            if isinstance(reading, str):
                failed[check.name] = reading
                continue
            old = states.get(check.name)
            if old is not None:
                states[check.name] = rebase(old, canary=reading[0], baseline=reading[1])
            else:
                states[check.name], _started = _tick(check, None, reading, state, policy)
    readings = await asyncio.gather(*(_read(check, context, source, at=at) for check in checks))
    records = []
    for check, reading in zip(checks, readings, strict=True):
        old = states.get(check.name)
        reason = failed.get(check.name) or (reading if isinstance(reading, str) else "")
        if reason or isinstance(reading, str):
            records.append(unavailable(check, old, canary_version=state.canary_version,
                                       stable_version=state.stable_version, reason=reason))
            continue
        states[check.name], record = _tick(check, old, reading, state, policy)
        records.append(record)
    kept = {name: check_state for name, check_state in states.items() if check_state is not None}
    # Rebased only when every check could be: else the next analysis tries again.
    acked = state.weight_acked_at if not failed else (previous.weight_acked_at if previous else None)
    return Comparisons(acked, kept), tuple(records)


def _tick(
    check: MetricCheck, old: ComparisonState | None, reading: tuple[ArmReading, ArmReading],
    state: RolloutState, policy: Policy,
) -> tuple[ComparisonState | None, CheckRecord]:
    return compare_tick(
        check, old, canary=reading[0], baseline=reading[1], canary_version=state.canary_version,
        stable_version=state.stable_version, min_requests=policy.analysis.min_requests,
    )


async def _read(
    check: MetricCheck, context: TemplateContext, source: CounterSource, *, at: float | None
) -> tuple[ArmReading, ArmReading] | str:
    """Both arms' counters at `at`, or why they could not be read."""
    try:
        arms = [arm_queries(check, context, canary=canary) for canary in (True, False)]
    except TemplateError as error:
        return str(error)
    names = [name for queries in arms for name in queries]
    answers = await asyncio.gather(*(source.series(q, at=at) for queries in arms for q in queries.values()))
    errors = [answer.error for answer in answers if answer.error]
    if errors:
        return errors[0]
    split = len(arms[0])
    try:
        return (
            arm_reading(_by_name(names[:split], answers[:split])),
            arm_reading(_by_name(names[split:], answers[split:])),
        )
    except ValueError as error:
        return str(error)


def _by_name(
    names: list[str], answers: tuple[SeriesObservation, ...] | list[SeriesObservation]
) -> Mapping[str, tuple[tuple[Mapping[str, str], float], ...]]:
    return {name: answer.series for name, answer in zip(names, answers, strict=True)}
