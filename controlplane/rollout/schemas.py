"""Request and response models of the rollout API (`/v1/rollouts…`)."""

from __future__ import annotations

from collections import Counter
from typing import Annotated, Any

from pydantic import Field

from controlplane.rollout.analysis import VerdictKind
from controlplane.rollout.machine import Phase, RolloutState
from controlplane.rollout.runner import RolloutRunner
from controlplane.rollout.store import DecisionRow, RolloutRow, state_from_json
from registry.boundary import QueryModel, RequestModel, ResponseModel
from registry.fields import ModelName, Timestamp
from registry.schemas import Reason

MAX_POLICY_NAME_CHARS = 128
# A page holds at most MAX_PAGE rollouts or decisions.
MAX_PAGE = 500
MAX_ID = 2**31 - 1  # ids are 32-bit integers in both databases

PageSize = Annotated[
    int, Field(ge=1, le=MAX_PAGE, description="how many rollouts or decisions (newest first)")
]
RowId = Annotated[int, Field(ge=1, le=MAX_ID)]


class LatestQuery(QueryModel):
    limit: PageSize | None = None


class PageQuery(QueryModel):
    limit: PageSize | None = None
    before: RowId | None = Field(
        default=None, description="the next page: the `next_before` of the previous one"
    )


class RolloutStartRequest(RequestModel):
    model_name: ModelName
    policy: str = Field(max_length=MAX_POLICY_NAME_CHARS, description="a loaded policy's name")


class RolloutCommandRequest(RequestModel):
    full: bool = Field(default=False, description="promote: straight to prod")
    reason: Reason = ""


class VerdictDocument(ResponseModel):
    metric: str
    verdict: VerdictKind
    value: float | None
    message: str


class CountsDocument(ResponseModel):
    requests: int = Field(ge=0)
    events: int = Field(ge=0, description="errors, or requests slower than the boundary")
    rate: float | None = Field(description="events / requests; null without requests")


class ArmDocument(ResponseModel):
    arm: str = Field(description="canary or baseline")
    version: str
    tick: CountsDocument = Field(description="this tick's increase of the arm's counters")
    total: CountsDocument = Field(description="every tick the test counted so far")


class CheckDocument(ResponseModel):
    """A `compare: baseline` check's verdict, explained: what each arm did and what the test concluded."""

    check: str
    method: str = Field(description="sequential: the anytime-valid test against the baseline")
    verdict: VerdictKind
    counted: str = Field(description="what an event is: 5xx responses, requests slower than X ms, …")
    arms: list[ArmDocument]
    e_value: float | None = Field(description="evidence that the canary is worse than the baseline")
    pass_e_value: float | None = Field(description="evidence that it is within the tolerance")
    threshold: float | None = Field(description="1/alpha: either e-value passing it decides")
    alpha: float | None = Field(description="the false-rollback probability bound")
    observed_ratio: float | None = Field(description="canary rate / baseline rate over the counted ticks")
    tolerance: str = Field(description="as the policy wrote it: 1.5x or +0.5pp")
    tolerance_ratio: float | None = Field(description="the tolerance as a rate ratio")
    baseline_slo: str = Field(description="the check's thresholdRange, judged on the baseline")
    baseline_healthy: bool
    message: str


class DecisionDocument(ResponseModel):
    id: int | None = Field(default=None, description="for paging with `before`")
    at: Timestamp
    phase: Phase
    step: int = Field(ge=1)
    canary_weight: int = Field(ge=0, le=100)
    reason: str = Field(description="why, with the values behind it")
    verdicts: list[VerdictDocument] = Field(default_factory=list)
    checks: list[CheckDocument] = Field(
        default_factory=list, description="the checks against the baseline, per arm, with their evidence"
    )
    analysed_at: Timestamp | None = Field(
        default=None, description="when the checks read their counters (a replay at it reads the same)"
    )
    decided_at: Timestamp | None = Field(
        default=None, description="the rollout clock's instant the decision was taken at; `at` is when it "
        "was stored, after its actions (a promotion, a weight change) were carried out",
    )
    command: str | None = None
    actor: str | None = Field(default=None, description="who gave the command")
    acked_at: Timestamp | None = Field(default=None, description="when Envoy ran the weight")
    replica: str | None = Field(default=None, description="the leader replica that decided it")
    epoch: int | None = Field(default=None, description="the lease epoch it was decided under")

    @classmethod
    def of(cls, row: DecisionRow) -> DecisionDocument:
        # `inputs` is what the runner stored beside the decision: verdicts, command, ack time.
        return cls.model_validate(
            {
                "id": row.id, "at": row.at, "phase": row.phase, "step": row.step_index + 1,
                "canary_weight": row.canary_weight, "reason": row.reason, **row.inputs,
            }
        )


class RolloutSummary(ResponseModel):
    id: int | None = Field(description="the rollout's id in the history")
    model_name: str
    policy: str
    phase: Phase
    finished: bool = Field(description="succeeded or rolled back")
    stable_version: str
    canary_version: str
    step: int = Field(ge=1, description="1-based; the last when finished")
    steps: int | None = Field(description="null when the policy is gone")
    canary_weight: int = Field(ge=0, le=100)
    acknowledged: bool = Field(description="every live Envoy node runs the weight")
    acknowledged_at: Timestamp | None
    failures: int = Field(ge=0)
    inconclusive_streak: int = Field(ge=0)
    error_streak: int = Field(ge=0)
    message: str
    started_at: Timestamp
    started_by: str

    @classmethod
    def fields_of(cls, row: RolloutRow, runner: RolloutRunner) -> dict[str, Any]:
        state = state_from_json(row.state)
        policy = runner.policy(state.policy_name)
        steps = len(policy.steps) if policy else None
        return {
            "id": row.id, "model_name": state.model_name, "policy": state.policy_name,
            "phase": state.phase, "finished": not state.active,
            "stable_version": state.stable_version, "canary_version": state.canary_version,
            # A finished rollout went past its last step; it shows where it ended, not "7 of 6".
            "step": min(state.step_index + 1, steps) if steps else state.step_index + 1, "steps": steps,
            "canary_weight": state.canary_weight, "acknowledged": state.weight_acked_at is not None,
            "acknowledged_at": state.weight_acked_at, "failures": state.failures,
            "inconclusive_streak": state.inconclusive_streak, "error_streak": state.error_streak,
            "message": state.message, "started_at": row.started_at, "started_by": row.started_by,
        }

    @classmethod
    def of(cls, row: RolloutRow, runner: RolloutRunner) -> RolloutSummary:
        return cls.model_validate(cls.fields_of(row, runner))


class ServedWeight(ResponseModel):
    canary_weight: int | None = Field(ge=0, le=100)
    nodes: int = Field(ge=1)


class RolloutDocument(RolloutSummary):
    """A model's newest rollout, with what Envoy serves now beside what it set."""

    decisions: list[DecisionDocument] = Field(description="the last decisions")
    actual_canary_weight: int | None = Field(
        ge=0, le=100,
        description="the canary share every live Envoy node serves (from the route and runtime versions it "
        "acknowledged); null when no node polled or nodes differ",
    )
    served_canary_weights: list[ServedWeight] = Field(
        description="live nodes per served canary share; null: routes this process did not publish"
    )

    @classmethod
    def latest(cls, row: RolloutRow, decisions: list[DecisionRow], runner: RolloutRunner) -> RolloutDocument:
        state = state_from_json(row.state)
        return cls.model_validate(
            {
                **cls.fields_of(row, runner),
                "decisions": [DecisionDocument.of(d) for d in decisions],
                **served_weights(runner, state),
            }
        )


def served_weights(runner: RolloutRunner, state: RolloutState) -> dict[str, Any]:
    """The canary share live Envoy nodes serve, from the route and runtime versions each acknowledged.

    `actual_canary_weight` is the share when every live node serves the same one; null when
    no node polled, nodes differ, or a node runs routes this process did not publish.
    `served_canary_weights` counts the nodes per share (a fleet is summed, not listed).
    """
    splits = runner.traffic.served_splits(state.model_name)
    shares = Counter(None if split is None else split.get(state.canary_version, 0) for split in splits)
    return {
        "actual_canary_weight": next(iter(shares)) if len(shares) == 1 else None,
        "served_canary_weights": [
            {"canary_weight": share, "nodes": nodes}
            for share, nodes in sorted(shares.items(), key=lambda item: -1 if item[0] is None else item[0])
        ],
    }


class PastRollout(RolloutSummary):
    """One rollout of a model, current or past, with a page of its decisions."""

    decisions: list[DecisionDocument]
    next_before: int | None = Field(description="`before` for the next page of decisions")


class RolloutHistoryEntry(RolloutSummary):
    decision_count: int = Field(ge=0)
    last_decision_at: Timestamp | None


class RolloutHistory(ResponseModel):
    model_name: str
    rollouts: list[RolloutHistoryEntry]
    next_before: int | None = Field(description="`before` for the next page")


class RolloutList(ResponseModel):
    rollouts: list[RolloutSummary]
