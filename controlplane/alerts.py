"""Alertmanager's webhook (version 4): a firing alert about a model's canary rolls it back at once.

Intake is idempotent: Alertmanager retries on 5xx and re-sends on every group
interval, so each (fingerprint, startsAt, status) is acted on once and recorded.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from aiohttp import web

from controlplane.alert_schemas import Alert, AlertIntake, AlertmanagerWebhook, AlertOutcome
from controlplane.rollout.api import RUNNER
from controlplane.rollout.machine import Command
from controlplane.rollout.runner import RolloutRunner
from controlplane.rollout.store import AlertRow
from registry.auth import Role
from registry.errors import NotFound
from registry.routes import Call, Operation, Reply
from registry.schemas import CANARY, MODEL

log = logging.getLogger(__name__)


async def receive(call: Call[AlertmanagerWebhook, None]) -> AlertIntake:
    alerts = call.body.alerts
    outcomes = [await _handle(call.app, alert) for alert in alerts]
    return AlertIntake(received=len(alerts), outcomes=outcomes)


async def _handle(app: web.Application, alert: Alert) -> AlertOutcome:
    runner = app[RUNNER]
    labels = alert.labels
    status = alert.status
    alertname = labels.get("alertname", "unnamed alert")
    model_name = labels.get("model") or labels.get("model_name")
    action = _action_for(runner, status, model_name, labels.get("version"))
    row = AlertRow(
        fingerprint=alert.fingerprint,
        starts_at=alert.startsAt,
        status=status,
        alertname=alertname,
        model_name=model_name or None,
        received_at=datetime.now(UTC),
        action=action,
    )
    if not await runner.store.record_alert(row):
        action = "duplicate"
    elif action == "rollback":
        summary = alert.annotations.get("summary", "")
        reason = f"alert {alertname} firing" + (f": {summary}" if summary else "")
        try:
            await runner.command(str(model_name), Command.ALERT, reason=reason)
            log.warning("rolled back %s: %s", model_name, reason)
        except NotFound:
            action = "recorded_no_active_rollout"  # it ended between the check and the command
    runner.metrics.alerts.labels(status, action).inc()
    return AlertOutcome(alertname=alertname, model=model_name or None, status=status, action=action)


def _action_for(runner: RolloutRunner, status: str, model_name: str | None, version: str | None) -> str:
    """What a received alert means: only a firing alert about an active canary rolls back."""
    if status != "firing":
        return "recorded_resolved"
    if not model_name:
        return "recorded_no_model_label"
    active = runner.active.get(model_name)
    if active is None:
        return "recorded_no_active_rollout"
    if version and version != active.state.canary_version:
        return "recorded_other_version"
    policy = runner.policy(active.state.policy_name)
    if policy is not None and not policy.rollback_on_alert:
        return "recorded_rollback_disabled"
    return "rollback"


_WEBHOOK = {
    "version": "4",
    "groupKey": '{}:{alertname="AegisCanaryHighErrorRate"}',
    "truncatedAlerts": 0,
    "status": "firing",
    "receiver": "aegis",
    "groupLabels": {"alertname": "AegisCanaryHighErrorRate"},
    "commonLabels": {"alertname": "AegisCanaryHighErrorRate", "model": MODEL, "version": CANARY},
    "commonAnnotations": {"summary": "20% of requests fail"},
    "externalURL": "http://127.0.0.1:9093",
    "alerts": [
        {
            "status": "firing",
            "labels": {"alertname": "AegisCanaryHighErrorRate", "model": MODEL, "version": CANARY},
            "annotations": {"summary": "20% of requests fail"},
            "startsAt": "2024-05-01T12:00:00Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://127.0.0.1:9090/graph",
            "fingerprint": "c6e2f0d7a1b34e59",
        }
    ],
}

OPERATIONS = (
    Operation(
        "post", "/v1/alerts/alertmanager", "receiveAlerts", "Alertmanager's webhook (version 4)",
        "alerts", Role.OPERATOR, receive, body=AlertmanagerWebhook,
        description=(
            "A firing alert whose labels name a model (`model` or `model_name`, and `version` if "
            "present) with an active rollout rolls its canary back at once; the rest are recorded. "
            "Idempotent on (fingerprint, startsAt, status): Alertmanager retries. The whole batch is "
            "validated before any alert is recorded."
        ),
        examples={"canary-errors": ("a canary alert fires", _WEBHOOK)},
        responses={200: Reply("what was done with each alert", AlertIntake)},
        errors={
            400: "not JSON",
            422: "not Alertmanager's webhook version 4 (the message names the field)",
        },
    ),
)
