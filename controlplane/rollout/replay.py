"""`aegis policy replay`: the decisions a policy would have taken over Prometheus history, tick by tick.

The replay drives the same state machine (`machine.decide`) with the same analysis
(`evaluation.evaluate`) as the live runner, only its clock is the history's: at each
tick from `start` to `end` the counters are read at that instant (`at=`), Envoy is
taken to acknowledge a weight by the next tick, and nothing is written anywhere. The
weights the replayed machine sets are its own; the traffic split in the counters is
whatever it was then, and each tick is judged at its own request share, as live.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from controlplane.rollout.evaluation import CounterSource, Evaluation, evaluate, reading_instant
from controlplane.rollout.explained import check_lines
from controlplane.rollout.machine import Decision, Inputs, RolloutState, analysis_due, decide
from controlplane.rollout.policy import Policy


@dataclass(frozen=True)
class ReplayTick:
    """One tick that analysed or decided something."""

    at: float
    decision: Decision
    evaluation: Evaluation | None

    def as_document(self) -> dict[str, object]:
        state = self.decision.state
        evaluation = self.evaluation
        return {
            "at": _iso(self.at),
            "phase": state.phase.value,
            "step": state.step_index + 1,
            "canary_weight": state.canary_weight,
            "reason": self.decision.reason,
            "verdicts": [v.as_document() for v in evaluation.verdicts] if evaluation else [],
            "checks": evaluation.documents() if evaluation else [],
        }


def tick_times(start: float, end: float, step: float) -> Iterator[float]:
    """start, start + step, … up to end (inclusive), without float drift."""
    count = int((end - start) // step)
    return (start + k * step for k in range(count + 1))


async def replay(
    policy: Policy, *, model: str, stable_version: str, canary_version: str, source: CounterSource,
    times: Iterable[float],
) -> list[ReplayTick]:
    """The ticks at `times` (ascending) that analysed or decided, until the rollout would have ended.

    The first time starts the rollout; `tick_times` makes an even grid, and the times a live
    rollout analysed at (its decisions' `analysed_at` plus SCRAPE_SETTLE_SECONDS) reproduce its
    readings.
    """
    state: RolloutState | None = None
    ticks = []
    for at in times:
        if state is None:
            state = RolloutState(model, policy.name, stable_version, canary_version, step_started_at=at,
                                 message=f"replay of policy {policy.name!r}")
        evaluation = None
        if analysis_due(policy, state, at):
            # As the live runner: a tick at `at` reads the counters a little earlier.
            evaluation = await evaluate(policy, state, source, now=at, at=reading_instant(at))
            state = replace(state, comparisons=evaluation.comparisons)
        verdicts = evaluation.verdicts if evaluation is not None else None
        # Envoy is taken to run a weight by the tick after the one that set it.
        decision = decide(policy, state, Inputs(at, acked=True, verdicts=verdicts))
        if evaluation is not None or decision.reason:
            ticks.append(ReplayTick(at, decision, evaluation))
        state = decision.state
        if not state.active:
            break
    return ticks


def render_text(ticks: list[ReplayTick], *, policy: Policy, model: str) -> str:
    """Tick by tick: time, step, weight, each check's verdict (compared ones with evidence), the decision."""
    lines = [f"replay of policy {policy.name!r} ({policy.source}) for {model}: {len(ticks)} ticks"]
    for tick in ticks:
        state = tick.decision.state
        verdicts = ""
        if tick.evaluation is not None:
            verdicts = "  " + ", ".join(f"{v.metric} {v.kind.value}" for v in tick.evaluation.verdicts)
        lines.append(f"{_iso(tick.at)}  {state.phase.value:<11} step {state.step_index + 1}  "
                     f"weight {state.canary_weight:>3}%{verdicts}")
        if tick.evaluation is not None:
            lines.extend(check_lines(tick.evaluation.documents(), indent="    "))
        if tick.decision.reason:
            lines.append(f"    -> {tick.decision.reason}")
    final = ticks[-1].decision.state if ticks else None
    lines.append(f"outcome: {final.phase.value if final else 'nothing analysed'}"
                 + (f": {final.message}" if final and final.message else ""))
    return "\n".join(lines)


def render_json(ticks: list[ReplayTick]) -> str:
    return json.dumps([tick.as_document() for tick in ticks], indent=2)


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
