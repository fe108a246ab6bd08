"""Alertmanager's webhook (version 4): a firing alert about a model's canary rolls it back at once.

Intake is idempotent: Alertmanager retries on 5xx and re-sends on every group
interval, so each (fingerprint, startsAt, status) is acted on once and recorded.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from controlplane.rollout.api import RUNNER
from controlplane.rollout.machine import Command
from controlplane.rollout.runner import RolloutRunner
from controlplane.rollout.store import AlertRow
from registry.auth import Role
from registry.errors import InvalidInput, MalformedRequest, NotFound
from registry.http import authorize, read_json

log = logging.getLogger(__name__)

# Alertmanager posts every alert of a group at once (`max_alerts: 0`, its default, is no
# limit): a storm of thousands of alerts at ~1-2 KB each must still arrive whole.
MAX_WEBHOOK_BYTES = 16 << 20


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/alerts/alertmanager", receive)


async def receive(request: web.Request) -> web.Response:
    authorize(request, Role.OPERATOR)
    payload = await read_json(request, limit=MAX_WEBHOOK_BYTES)
    alerts = payload.get("alerts")
    if not isinstance(alerts, list) or not all(isinstance(a, dict) for a in alerts):
        raise MalformedRequest('expected Alertmanager\'s webhook: {"version": "4", "alerts": [...]}')
    if str(payload.get("version", "4")) != "4":
        raise InvalidInput(
            f"webhook version {payload.get('version')!r} is not supported; Aegis reads version 4"
        )
    outcomes = [await _handle(request.app, alert) for alert in alerts]
    return web.json_response({"received": len(alerts), "outcomes": outcomes})


async def _handle(app: web.Application, alert: dict[str, Any]) -> dict[str, Any]:
    runner = app[RUNNER]
    labels = alert.get("labels") if isinstance(alert.get("labels"), dict) else {}
    assert isinstance(labels, dict)
    status = str(alert.get("status", ""))
    alertname = str(labels.get("alertname", "unnamed alert"))
    model_name = labels.get("model") or labels.get("model_name")
    action = _action_for(runner, status, model_name, labels.get("version"))
    row = AlertRow(
        fingerprint=str(alert.get("fingerprint", ""))[:64],
        starts_at=str(alert.get("startsAt", ""))[:64],
        status=status[:16],
        alertname=alertname,
        model_name=str(model_name) if model_name else None,
        received_at=datetime.now(UTC),
        action=action,
    )
    if not await runner.store.record_alert(row):
        action = "duplicate"
    elif action == "rollback":
        summary = (alert.get("annotations") or {}).get("summary", "")
        reason = f"alert {alertname} firing" + (f": {summary}" if summary else "")
        try:
            await runner.command(str(model_name), Command.ALERT, reason=reason)
            log.warning("rolled back %s: %s", model_name, reason)
        except NotFound:
            action = "recorded_no_active_rollout"  # it ended between the check and the command
    runner.metrics.alerts.labels(status or "unknown", action).inc()
    return {"alertname": alertname, "model": model_name, "status": status, "action": action}


def _action_for(runner: RolloutRunner, status: str, model_name: object, version: object) -> str:
    """What a received alert means: only a firing alert about an active canary rolls back."""
    if status != "firing":
        return "recorded_resolved"
    if not isinstance(model_name, str) or not model_name:
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
