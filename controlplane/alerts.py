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
from typing import Any

from aiohttp import web

from controlplane.alert_store import AlertRow, AlertStore
from controlplane.alert_webhook import Alert, parse_webhook
from controlplane.rollout.api import RUNNER
from controlplane.rollout.machine import Command
from controlplane.rollout.runner import RolloutRunner
from registry.auth import Role
from registry.errors import NotFound, RegistryError
from registry.http import authorize, read_json

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
        """What was done about one alert; raises (recording nothing) when the action failed."""
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


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/alerts/alertmanager", receive)


async def receive(request: web.Request) -> web.Response:
    authorize(request, Role.OPERATOR)
    webhook = parse_webhook(await read_json(request, limit=MAX_WEBHOOK_BYTES))
    runner, intake = request.app[RUNNER], request.app[INTAKE]
    outcomes: list[dict[str, Any]] = []
    for alert in webhook.alerts:
        action = await intake.receive(runner, alert)
        runner.metrics.alerts.labels(alert.status, action).inc()
        outcomes.append({"alertname": alert.alertname, "model": alert.model_name,
                         "status": alert.status, "action": action})
    return web.json_response({"received": len(webhook.alerts), "outcomes": outcomes})


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
