"""Rollout events and their webhook payloads: which transition is worth telling, and how (pure).

No I/O here: the runner hands a transition to `transition_event`, the notifier sends what
`payload` and `signature` return.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from controlplane.rollout.machine import Phase, RolloutState


class EventKind(StrEnum):
    STARTED = "started"
    STEP = "step"  # the canary weight changed
    PAUSED = "paused"
    RESUMED = "resumed"
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"


class PayloadFormat(StrEnum):
    JSON = "json"  # the event document below
    SLACK = "slack"  # {"text": ...}: Slack incoming webhooks, Mattermost, Teams workflows, Discord's /slack


SIGNATURE_HEADER = "X-Aegis-Signature"


@dataclass(frozen=True)
class RolloutEvent:
    kind: EventKind
    model_name: str
    policy: str
    stable_version: str
    canary_version: str
    phase: str
    step: int  # 1-based, as the API shows it
    canary_weight: int
    reason: str
    at: float  # wall-clock seconds
    failures: int = 0
    # The analysis behind the decision, each {metric, verdict, value, message}.
    verdicts: tuple[Mapping[str, Any], ...] = field(default=())
    actor: str | None = None
    # Everything else the runner stored beside the decision (e.g. the compared checks explained,
    # the command, when Envoy ran the weight, the deciding replica and epoch), passed on as it is.
    decision: Mapping[str, Any] = field(default_factory=dict)


def transition_event(
    previous: RolloutState | None,
    state: RolloutState,
    *,
    reason: str,
    at: float,
    verdicts: Sequence[Mapping[str, Any]] = (),
    actor: str | None = None,
    inputs: Mapping[str, Any] | None = None,
) -> RolloutEvent | None:
    """The event a rollout's move from `previous` (None: it is new) to `state` makes, if any (pure).

    `inputs`: what the runner stores beside the decision (the decision document's fields but
    its state); its verdicts and actor become the event's, the rest its `decision`, so that
    whatever a decision is explained with reaches the webhook without a change here.
    """
    kind = _kind(previous, state)
    if kind is None:
        return None
    rest = dict(inputs or {})
    verdicts = rest.pop("verdicts", None) or verdicts
    actor = rest.pop("actor", None) or actor
    return RolloutEvent(
        kind, state.model_name, state.policy_name, state.stable_version, state.canary_version,
        state.phase.value, state.step_index + 1, state.canary_weight, reason or state.message, at,
        failures=state.failures, verdicts=tuple(verdicts), actor=actor, decision=rest,
    )


def _kind(previous: RolloutState | None, state: RolloutState) -> EventKind | None:
    if previous is None:
        return EventKind.STARTED
    if state.phase is not previous.phase:
        return {
            Phase.SUCCEEDED: EventKind.PROMOTED,
            Phase.ROLLED_BACK: EventKind.ROLLED_BACK,
            Phase.PAUSED: EventKind.PAUSED,
            Phase.PROGRESSING: EventKind.RESUMED,
        }[state.phase]
    if state.canary_weight != previous.canary_weight:
        return EventKind.STEP
    return None


def document(event: RolloutEvent, *, delivery_id: str) -> dict[str, Any]:
    """The JSON payload: every field of the event, times as RFC 3339."""
    fields = asdict(event)
    fields["event"] = fields.pop("kind").value
    fields["at"] = datetime.fromtimestamp(event.at, UTC).isoformat()
    fields["verdicts"] = [dict(v) for v in event.verdicts]
    fields["decision"] = dict(event.decision)
    return {"id": delivery_id, **fields}


def slack_text(event: RolloutEvent) -> str:
    """One Slack message (mrkdwn): what happened, to which versions, and why with its numbers."""
    head = {
        EventKind.STARTED: "rollout started",
        EventKind.STEP: f"canary weight {event.canary_weight}%",
        EventKind.PAUSED: "rollout paused",
        EventKind.RESUMED: "rollout resumed",
        EventKind.PROMOTED: "canary promoted",
        EventKind.ROLLED_BACK: "canary rolled back",
    }[event.kind]
    lines = [
        f"*{event.model_name}*: {head} ({event.canary_version} over {event.stable_version}, "
        f"step {event.step}, policy {event.policy})",
    ]
    if event.reason:
        lines.append(f"> {event.reason}")
    lines += [
        f"• {v['metric']}: {v['verdict']}" + (f" ({v['value']})" if v.get("value") is not None else "")
        for v in event.verdicts
    ]
    return "\n".join(lines)


def payload(event: RolloutEvent, payload_format: PayloadFormat, *, delivery_id: str) -> bytes:
    """The body sent for `event`, byte for byte what the signature covers."""
    if payload_format is PayloadFormat.SLACK:
        body: dict[str, Any] = {"text": slack_text(event)}
    else:
        body = document(event, delivery_id=delivery_id)
    # Built in the rollout loop's call: nothing in a decision's numbers may make it raise, and
    # the body must stay JSON (no NaN or Infinity tokens, which strict parsers refuse).
    return json.dumps(_finite(body), separators=(",", ":"), sort_keys=True, default=str).encode()


def _finite(value: Any) -> Any:
    """`value` with every non-finite float as null (what JSON.stringify does with them)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(key): _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def signature(key: bytes, body: bytes) -> str:
    """`sha256=<hex HMAC-SHA256 of the body>` (GitHub's webhook convention)."""
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()
