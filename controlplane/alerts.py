"""Alertmanager's webhook (version 4): a firing alert about a model's canary rolls it back at once.

Intake is idempotent: Alertmanager retries on 5xx and re-sends on every group
interval, so each delivery (model, fingerprint, startsAt, status) is acted on once.
The order makes a failure harmless: the whole webhook is checked first (a bad alert is
a 4xx and nothing is recorded), an alert is recorded only after its action completed,
and an action that did not complete is a 503 with no record, so Alertmanager's retry
acts. One lock covers check, action and record, so a concurrent re-send waits and then
finds the record.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from aiohttp import web

from controlplane.alert_store import AlertRow, AlertStore
from controlplane.alert_webhook import Alert, AlertmanagerWebhook, AlertOutcome, AlertsReceived
from controlplane.cluster.commands import CommandKind
from controlplane.rollout.api import RUNNER
from controlplane.rollout.machine import Command
from controlplane.rollout.runner import RolloutRunner
from registry.auth import Role
from registry.errors import NotFound, RegistryError
from registry.routes import Call, Operation, Reply
from registry.schemas import CANARY, MODEL

log = logging.getLogger(__name__)

# Alertmanager posts every alert of a group at once (`max_alerts: 0`, its default, is no
# limit): a storm of thousands of alerts at ~1-2 KB each must still arrive whole.
MAX_WEBHOOK_BYTES = 16 << 20


class RollbackIncomplete(RegistryError):
    """The rollback an alert asked for did not complete; Alertmanager retries a 5xx."""

    status = 503
    code = "rollback_incomplete"


class AlertIntake:
    """Turns received alerts into rollbacks and records, in the order that makes retries safe."""

    def __init__(self, store: AlertStore) -> None:
        self.store = store
        self._lock = asyncio.Lock()

    async def receive(self, runner: RolloutRunner, alert: Alert) -> str:
        """What was done about one alert; raises (recording nothing) when the action failed.

        A follower stores the alert for the leader and answers with what the leader did.
        """
        if not runner.leading:
            payload = alert.model_dump(mode="json", by_alias=True)
            outcome = await runner.forward(CommandKind.ALERT, payload, alert.model_name)
            return str(outcome.result["action"])
        with runner.acting():
            return await self.receive_here(runner, alert)

    async def receive_here(self, runner: RolloutRunner, alert: Alert) -> str:
        """The leader's intake: check, act, record, under one lock."""
        key = alert.dedupe_key()
        async with self._lock:
            if await self.store.seen(key):
                return "duplicate"
            action = _action_for(runner, alert)
            if action == "rollback":
                action = await _roll_back(runner, alert)
            row = AlertRow(
                dedupe_key=key,
                fingerprint=alert.fingerprint,
                starts_at=alert.starts_at,
                status=alert.status,
                alertname=alert.alertname,
                model_name=alert.model_name,
                received_at=datetime.now(UTC),
                action=action,
            )
            recorded = await self.store.record(row)
        return action if recorded else "duplicate"


INTAKE = web.AppKey("alert_intake", AlertIntake)


async def receive(call: Call[AlertmanagerWebhook, None]) -> AlertsReceived:
    # The kit validated the whole webhook before this runs: a bad alert anywhere is a 4xx
    # and nothing is recorded.
    runner, intake = call.app[RUNNER], call.app[INTAKE]
    outcomes: list[AlertOutcome] = []
    for alert in call.body.alerts:
        action = await intake.receive(runner, alert)
        runner.metrics.alerts.labels(alert.status, action).inc()
        outcomes.append(AlertOutcome(
            alertname=alert.alertname, model=alert.model_name, status=alert.status, action=action
        ))
    return AlertsReceived(received=len(call.body.alerts), outcomes=outcomes)


async def _roll_back(runner: RolloutRunner, alert: Alert) -> str:
    model_name = alert.model_name
    assert model_name is not None
    summary = alert.annotations.get("summary", "")
    reason = f"alert {alert.alertname} firing" + (f": {summary}" if summary else "")
    try:
        state = await runner.command(model_name, Command.ALERT, reason=reason)
    except NotFound:
        return "recorded_no_active_rollout"  # it ended between the check and the command
    if state.active:
        # The runner holds a rollout whose rollback failed (paused, with the reason).
        raise RollbackIncomplete(
            f"alert {alert.alertname} asked to roll back {model_name}, which did not complete: "
            f"{state.message}"
        )
    log.warning("rolled back %s: %s", model_name, reason)
    return "rollback"


def _action_for(runner: RolloutRunner, alert: Alert) -> str:
    """What a received alert means: only a firing alert about an active canary rolls back."""
    if alert.status != "firing":
        return "recorded_resolved"
    if alert.model_name is None:
        return "recorded_no_model_label"
    active = runner.active.get(alert.model_name)
    if active is None:
        return "recorded_no_active_rollout"
    if alert.version is not None and alert.version != active.state.canary_version:
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
        "alerts", Role.OPERATOR, receive, body=AlertmanagerWebhook, max_body_bytes=MAX_WEBHOOK_BYTES,
        description=(
            "A firing alert whose labels name a model (`model` or `model_name`, and `version` if "
            "present) with an active rollout rolls its canary back at once; the rest are recorded. "
            "Idempotent on (model, fingerprint or labels, startsAt, status): Alertmanager retries. "
            "The whole webhook is checked before anything is recorded; an alert is recorded once "
            "its rollback completed, so a retry after a 5xx acts."
        ),
        examples={"canary-errors": ("a canary alert fires", _WEBHOOK)},
        responses={200: Reply("what was done with each alert", AlertsReceived)},
        errors={
            400: "not JSON",
            422: "not Alertmanager's webhook version 4, or an alert whose fields are malformed "
            "(the message names it, e.g. `alerts[1].annotations`); nothing is recorded",
            503: "a rollback an alert asked for did not complete; nothing is recorded, retry",
        },
    ),
)
