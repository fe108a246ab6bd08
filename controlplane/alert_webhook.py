"""Alertmanager's webhook (version 4) as typed values, and the key that makes intake idempotent (pure).

The whole webhook is checked before anything is recorded or done: a malformed alert
anywhere in a batch is a 4xx naming its index and field, so a retry of the corrected
batch is acted on instead of being taken for a duplicate.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from registry.errors import InvalidInput, MalformedRequest

_EXPECTED = 'expected Alertmanager\'s webhook: {"version": "4", "alerts": [...]}'


class Alert(BaseModel):
    """One alert of a webhook; the fields Aegis reads, others are ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    status: Literal["firing", "resolved"]
    labels: dict[str, str]
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


class Webhook(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    version: str | int = "4"
    alerts: list[Alert]


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, separators=(",", ":")).encode()).hexdigest()


def parse_webhook(document: dict[str, Any]) -> Webhook:
    """The webhook, or a 400/422 that names the alert index and field at fault (pure)."""
    if not isinstance(document.get("alerts"), list):
        raise MalformedRequest(_EXPECTED)
    if str(document.get("version", "4")) != "4":
        raise InvalidInput(
            f"webhook version {document.get('version')!r} is not supported; Aegis reads version 4"
        )
    try:
        return Webhook.model_validate(document)
    except ValidationError as exc:
        problems = [f"{_field_path(error['loc'])}: {error['msg']}" for error in exc.errors()[:5]]
        more = f" (and {exc.error_count() - 5} more)" if exc.error_count() > 5 else ""
        raise InvalidInput(
            "the webhook was not accepted and nothing was recorded: " + "; ".join(problems) + more
        ) from None


def _field_path(location: tuple[int | str, ...]) -> str:
    """("alerts", 0, "annotations") -> "alerts[0].annotations"."""
    path = ""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path
