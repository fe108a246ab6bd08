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


@dataclass(frozen=True)
class MetricCheck:
    """One metric judged every interval: a built-in template or any PromQL."""

    name: str
    threshold: ThresholdRange
    template: str | None = None
    query: str | None = None


@dataclass(frozen=True)
class AnalysisSpec:
    interval_seconds: float = 10.0
    window_seconds: float = 30.0
    failure_limit: int = 1
    inconclusive_limit: int = 3
    consecutive_error_limit: int = 4
    min_requests: int = 20
    metrics: tuple[MetricCheck, ...] = ()


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
