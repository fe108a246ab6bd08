"""Where rollout events go (AEGIS_NOTIFY_WEBHOOKS), checked once at start-up.

A webhook is `{url, name?, format?: json|slack, events?: [started, step, paused, resumed,
promoted, rolled_back]}`. Its URL is treated as a secret (a Slack webhook's path is its
credential): logs and metrics use the name, never the URL.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from controlplane.notifications.events import EventKind, PayloadFormat

SETTING = "AEGIS_NOTIFY_WEBHOOKS"
SHAPE = "a list of {url, name?, format?: json|slack, events?: [...]}"


class NotifySettingError(ValueError):
    """A notification setting cannot be used; the message names the entry and the field."""


@dataclass(frozen=True)
class WebhookTarget:
    name: str
    url: str = field(repr=False)
    payload_format: PayloadFormat = PayloadFormat.JSON
    events: frozenset[EventKind] = frozenset(EventKind)


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=2048)
    name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    format: PayloadFormat = PayloadFormat.JSON
    events: list[EventKind] | None = Field(default=None, min_length=1)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urllib.parse.urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            # The value itself is not echoed: it may carry a credential.
            raise ValueError("must be an http:// or https:// URL")
        return value


def parse_webhooks(text: str) -> tuple[WebhookTarget, ...]:
    """The targets of the setting's value: YAML or JSON (a config file's list arrives as JSON)."""
    if not text.strip():
        return ()
    try:
        document: Any = yaml.safe_load(text)
    except yaml.YAMLError:
        raise NotifySettingError(f"{SETTING} is not YAML or JSON; it is {SHAPE}") from None
    if not isinstance(document, list):
        raise NotifySettingError(f"{SETTING} must be {SHAPE}, not {type(document).__name__}")
    targets = tuple(_target(index, entry) for index, entry in enumerate(document))
    names = [target.name for target in targets]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise NotifySettingError(f"{SETTING}: names must be unique; repeated: {', '.join(repeated)}")
    return targets


def _target(index: int, entry: Any) -> WebhookTarget:
    if not isinstance(entry, dict):
        raise NotifySettingError(f"{SETTING}[{index}] must be a mapping {{url, name?, format?, events?}}")
    try:
        parsed = _Entry.model_validate(entry)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}" for error in exc.errors()
        )
        raise NotifySettingError(f"{SETTING}[{index}]: {problems}") from None
    return WebhookTarget(
        name=parsed.name or f"webhook-{index + 1}",
        url=parsed.url,
        payload_format=parsed.format,
        events=frozenset(parsed.events) if parsed.events else frozenset(EventKind),
    )


@dataclass(frozen=True)
class NotificationSettings:
    """Webhooks for rollout events, and how hard to try each delivery."""

    webhooks: tuple[WebhookTarget, ...] = ()
    # HMAC-SHA256 key of the X-Aegis-Signature header (AEGIS_NOTIFY_SIGNING_KEY or _FILE);
    # None: deliveries are not signed.
    signing_key: bytes | None = field(default=None, repr=False)
    # Attempts per delivery before it is given up (counted as dropped): 6 with the default
    # backoff (1, 2, 4, 8, 16 s) ride out a receiver's half-minute restart.
    max_attempts: int = 6
    # Seconds before the first retry; each next one waits twice as long (at most MAX_BACKOFF).
    retry_seconds: float = 1.0
    # Deliveries waiting per webhook; past it the oldest is dropped (and counted), so a dead
    # receiver costs bounded memory and never slows a rollout.
    queue_size: int = 1000
