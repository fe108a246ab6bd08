"""Alertmanager's webhook (version 4) as typed values, the key that makes intake idempotent,
and what the intake answers (pure).

The whole webhook is checked (by the HTTP kit, through `AlertmanagerWebhook`) before anything is
recorded or done: a malformed alert anywhere in a batch is a 422 naming its index and
field, so a retry of the corrected batch is acted on instead of being taken for a
duplicate. Unknown fields are ignored: Alertmanager adds fields between releases.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import Field

from registry.boundary import ForeignRequest, ResponseModel

MAX_ALERTS = 10_000


class Alert(ForeignRequest):
    """One alert of a webhook; the fields Aegis reads, others are ignored."""

    model_config = ForeignRequest.model_config | {"frozen": True}

    status: Literal["firing", "resolved"]
    labels: dict[str, str] = Field(description="`model` or `model_name` (and `version`): the canary")
    annotations: dict[str, str] = Field(default_factory=dict)
    starts_at: str = Field(default="", max_length=64, alias="startsAt")
    fingerprint: str = Field(default="", max_length=64)

    @property
    def alertname(self) -> str:
        return self.labels.get("alertname", "unnamed alert")

    @property
    def model_name(self) -> str | None:
        return self.labels.get("model") or self.labels.get("model_name") or None

    @property
    def version(self) -> str | None:
        return self.labels.get("version") or None

    def dedupe_key(self) -> str:
        """What identifies one delivery of this alert: model, fingerprint, start and status.

        Alertmanager's fingerprint is a hash of the labels; an alert sent without one
        (another sender, a hand-written curl) gets the same kind of key from its labels,
        so two such alerts about different models never collide.
        """
        fingerprint = self.fingerprint or "labels:" + _digest(sorted(self.labels.items()))
        return _digest([self.model_name or "", fingerprint, self.starts_at, self.status])


class AlertmanagerWebhook(ForeignRequest):
    model_config = ForeignRequest.model_config | {"frozen": True}

    version: Literal["4", 4] = "4"
    alerts: list[Alert] = Field(max_length=MAX_ALERTS)


class AlertOutcome(ResponseModel):
    alertname: str
    model: str | None
    status: str
    action: str = Field(
        description="rollback, duplicate, recorded_resolved, recorded_no_model_label, "
        "recorded_no_active_rollout, recorded_other_version or recorded_rollback_disabled"
    )


class AlertsReceived(ResponseModel):
    received: int = Field(ge=0)
    outcomes: list[AlertOutcome]


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, separators=(",", ":")).encode()).hexdigest()
