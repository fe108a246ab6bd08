"""Request and response models of the rollout API (`/v1/rollouts…`)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from controlplane.rollout.analysis import VerdictKind
from controlplane.rollout.machine import Phase
from controlplane.rollout.runner import RolloutRunner
from controlplane.rollout.store import DecisionRow, RolloutRow, state_from_json
from registry.boundary import RequestModel, ResponseModel
from registry.fields import ModelName, Timestamp
from registry.schemas import Reason

MAX_POLICY_NAME_CHARS = 128


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


class DecisionDocument(ResponseModel):
    at: Timestamp
    phase: Phase
    step: int = Field(ge=1)
    canary_weight: int = Field(ge=0, le=100)
    reason: str = Field(description="why, with the values behind it")
    verdicts: list[VerdictDocument] = Field(default_factory=list)
    command: str | None = None
    acked_at: Timestamp | None = Field(default=None, description="when Envoy ran the weight")

    @classmethod
    def of(cls, row: DecisionRow) -> DecisionDocument:
        # `inputs` is what the runner stored beside the decision: verdicts, command, ack time.
        return cls.model_validate(
            {
                "at": row.at, "phase": row.phase, "step": row.step_index + 1,
                "canary_weight": row.canary_weight, "reason": row.reason, **row.inputs,
            }
        )


class RolloutSummary(ResponseModel):
    model_name: str
    policy: str
    phase: Phase
    stable_version: str
    canary_version: str
    step: int = Field(ge=1, description="1-based")
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
        return {
            "model_name": state.model_name, "policy": state.policy_name, "phase": state.phase,
            "stable_version": state.stable_version, "canary_version": state.canary_version,
            "step": state.step_index + 1, "steps": len(policy.steps) if policy else None,
            "canary_weight": state.canary_weight, "acknowledged": state.weight_acked_at is not None,
            "acknowledged_at": state.weight_acked_at, "failures": state.failures,
            "inconclusive_streak": state.inconclusive_streak, "error_streak": state.error_streak,
            "message": state.message, "started_at": row.started_at, "started_by": row.started_by,
        }

    @classmethod
    def of(cls, row: RolloutRow, runner: RolloutRunner) -> RolloutSummary:
        return cls.model_validate(cls.fields_of(row, runner))


class RolloutDocument(RolloutSummary):
    decisions: list[DecisionDocument] = Field(description="the last decisions")

    @classmethod
    def with_decisions(
        cls, row: RolloutRow, decisions: list[DecisionRow], runner: RolloutRunner
    ) -> RolloutDocument:
        return cls.model_validate(
            {**cls.fields_of(row, runner), "decisions": [DecisionDocument.of(d) for d in decisions]}
        )


class RolloutList(ResponseModel):
    rollouts: list[RolloutSummary]
