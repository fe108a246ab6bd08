"""Models of Alertmanager's webhook (version 4) and of what the intake did with each alert.

Alertmanager adds fields between releases, so unknown fields are ignored
(`ForeignRequest`); the fields Aegis reads are typed, so an alert whose
`annotations` is not an object is refused before anything is recorded.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from registry.boundary import ForeignRequest, ResponseModel

MAX_ALERTS = 10_000
MAX_LABEL_CHARS = 1024
Labels = dict[str, str]


class Alert(ForeignRequest):
    status: Literal["firing", "resolved"]
    labels: Labels = Field(
        default_factory=dict, description="`model` or `model_name` (and `version`): the canary"
    )
    annotations: Labels = Field(default_factory=dict)
    startsAt: str = Field(default="", max_length=64, json_schema_extra={"format": "date-time"})
    endsAt: str = Field(default="", max_length=64)
    generatorURL: str = Field(default="", max_length=4096)
    fingerprint: str = Field(default="", max_length=64)


class AlertmanagerWebhook(ForeignRequest):
    version: Literal["4"] = "4"
    groupKey: str = ""
    truncatedAlerts: int = 0
    status: Literal["firing", "resolved"] | None = None
    receiver: str = ""
    groupLabels: Labels = Field(default_factory=dict)
    commonLabels: Labels = Field(default_factory=dict)
    commonAnnotations: Labels = Field(default_factory=dict)
    externalURL: str = ""
    alerts: list[Alert] = Field(max_length=MAX_ALERTS)


class AlertOutcome(ResponseModel):
    alertname: str
    model: str | None
    status: str
    action: str = Field(
        description="rollback, duplicate, recorded_resolved, recorded_no_model_label, "
        "recorded_no_active_rollout, recorded_other_version or recorded_rollback_disabled"
    )


class AlertIntake(ResponseModel):
    received: int = Field(ge=0)
    outcomes: list[AlertOutcome]
