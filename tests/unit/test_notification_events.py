"""Which rollout transitions make an event, and what the webhook receives (pure)."""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from dataclasses import replace

import pytest

from controlplane.notifications.events import (
    EventKind,
    PayloadFormat,
    payload,
    signature,
    slack_text,
    transition_event,
)
from controlplane.rollout.machine import Phase, RolloutState
from controlplane.settings import SettingsError, load_settings

START = RolloutState("fraud", "default", "1", "2", message="started by ci with policy 'default'")
AT_20 = replace(START, canary_weight=20)
VERDICTS = (
    {"metric": "error-rate", "verdict": "fail", "value": 0.21, "message": "error-rate 0.21 > max 0.05"},
)


@pytest.mark.parametrize(
    ("previous", "state", "kind"),
    [
        (None, START, EventKind.STARTED),
        (START, AT_20, EventKind.STEP),
        (AT_20, replace(AT_20, phase=Phase.PAUSED), EventKind.PAUSED),
        (replace(AT_20, phase=Phase.PAUSED), AT_20, EventKind.RESUMED),
        (AT_20, replace(AT_20, phase=Phase.SUCCEEDED, canary_weight=100), EventKind.PROMOTED),
        (AT_20, replace(AT_20, phase=Phase.ROLLED_BACK, canary_weight=0), EventKind.ROLLED_BACK),
        (AT_20, replace(AT_20, failures=1, last_analysis_at=5.0), None),  # counted, not moved: no event
        (AT_20, replace(AT_20, weight_acked_at=3.0), None),
    ],
)
def test_a_transition_makes_the_event_its_phase_or_weight_change_calls_for(
    previous: RolloutState | None, state: RolloutState, kind: EventKind | None
) -> None:
    event = transition_event(previous, state, reason="why", at=1.0)
    assert (event.kind if event else None) == kind


def test_a_rollback_carries_its_reason_and_the_numbers_behind_it() -> None:
    state = replace(AT_20, phase=Phase.ROLLED_BACK, canary_weight=0, failures=2)
    reason = "error-rate 0.21 > max 0.05: failures 2 > failureLimit 1"
    event = transition_event(AT_20, state, reason=reason, at=1796000000.5, verdicts=VERDICTS, actor=None)
    assert event is not None
    body = json.loads(payload(event, PayloadFormat.JSON, delivery_id="d1"))
    assert body == {
        "id": "d1", "event": "rolled_back", "model_name": "fraud", "policy": "default",
        "stable_version": "1", "canary_version": "2", "phase": "rolled_back", "step": 1, "canary_weight": 0,
        "reason": reason, "at": "2026-11-30T00:53:20.500000+00:00", "failures": 2,
        "verdicts": list(VERDICTS), "actor": None, "decision": {},
    }
    text = json.loads(payload(event, PayloadFormat.SLACK, delivery_id="d1"))["text"]
    assert text == slack_text(event)
    assert text.splitlines() == [
        "*fraud*: canary rolled back (2 over 1, step 1, policy default)",
        f"> {reason}",
        "• error-rate: fail (0.21)",
    ]


def test_whatever_the_decision_is_stored_with_reaches_the_webhook_as_json() -> None:
    # What a runner stores beside a decision, with fields this module does not know about:
    # the compared checks explained (an e-value can be infinite), the command, the deciding leader.
    checks = [{"metric": "error-rate", "arms": {"canary": {"requests": 812, "errors": 31}},
               "e_value": math.inf, "threshold": 20.0}]
    inputs = {"verdicts": list(VERDICTS), "checks": checks, "command": "abort", "actor": "ops",
              "acked_at": 1796000000.25, "replica": "aegis-a", "epoch": 3, "rate": math.nan}
    state = replace(AT_20, phase=Phase.ROLLED_BACK, canary_weight=0)
    event = transition_event(AT_20, state, reason="aborted", at=1.0, inputs=inputs)
    assert event is not None and (event.verdicts, event.actor) == (VERDICTS, "ops")
    raw = payload(event, PayloadFormat.JSON, delivery_id="d2")
    body = json.loads(raw, parse_constant=lambda token: pytest.fail(f"{token} is not JSON"))
    assert body["verdicts"] == list(VERDICTS)
    assert body["decision"] == {
        "checks": [{**checks[0], "e_value": None}], "command": "abort", "acked_at": 1796000000.25,
        "replica": "aegis-a", "epoch": 3, "rate": None,
    }
    assert inputs["verdicts"] == list(VERDICTS)  # the runner's stored inputs are left as they were


def test_a_start_takes_the_state_message_when_no_reason_is_given() -> None:
    event = transition_event(None, START, reason="", at=0.0, actor="ci")
    assert event is not None and (event.reason, event.actor) == (START.message, "ci")


def test_the_signature_is_hmac_sha256_of_the_exact_body() -> None:
    body = b'{"event":"promoted"}'
    expected = hmac.new(b"k", body, hashlib.sha256).hexdigest()
    assert signature(b"k", body) == f"sha256={expected}"
    assert signature(b"k", body + b" ") != signature(b"k", body)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("{url: http://a}",
         "AEGIS_NOTIFY_WEBHOOKS must be a list of {url, name?, format?: json|slack, events?"),
        ("[{url: 'ftp://hooks.example/T0/secret'}]",
         "AEGIS_NOTIFY_WEBHOOKS[0]: url: Value error, must be an http:// or https:// URL"),
        ("[{url: 'http://a', format: teams}]",
         "AEGIS_NOTIFY_WEBHOOKS[0]: format: Input should be 'json' or 'slack'"),
        ("[{url: 'http://a', events: [exploded]}]",
         "AEGIS_NOTIFY_WEBHOOKS[0]: events.0: Input should be 'started'"),
        ("[{url: 'http://a', name: x}, {url: 'http://b', name: x}]",
         "AEGIS_NOTIFY_WEBHOOKS: names must be unique; repeated: x"),
        ("[{url: 'http://a', secret: s}]",
         "AEGIS_NOTIFY_WEBHOOKS[0]: secret: Extra inputs are not permitted"),
    ],
)
def test_a_bad_webhook_is_refused_at_start_up_without_echoing_its_url(value: str, message: str) -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings({"AEGIS_NOTIFY_WEBHOOKS": value})
    assert str(raised.value).startswith(message), str(raised.value)
    assert "secret" not in str(raised.value).replace("secret: Extra", "")


def test_webhooks_default_to_json_every_event_and_a_numbered_name() -> None:
    settings = load_settings({
        "AEGIS_NOTIFY_WEBHOOKS": '[{"url": "https://hooks.slack.com/services/T/B/X", "format": "slack",'
                                 ' "events": ["rolled_back"]}, {"url": "http://127.0.0.1:9000/hook"}]',
        "AEGIS_NOTIFY_SIGNING_KEY": "k",
    }).integrations.notifications
    slack, plain = settings.webhooks
    assert (slack.name, slack.payload_format, slack.events) == (
        "webhook-1", PayloadFormat.SLACK, frozenset({EventKind.ROLLED_BACK})
    )
    assert (plain.name, plain.payload_format, plain.events) == (
        "webhook-2", PayloadFormat.JSON, frozenset(EventKind)
    )
    assert settings.signing_key == b"k" and "hooks.slack.com" not in repr(settings)
