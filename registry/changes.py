"""Change notification: a committed write that changes what replicas serve tells every replica.

Rows of tables whose content replicas serve carry a `__change_kind__`; when a
session flushes such a row (added, changed or deleted), `pg_notify('aegis_changes',
payload)` is sent in the same transaction, so PostgreSQL delivers it only if, and
when, the transaction commits, in commit order. Bulk statements that bypass the
unit of work call `note_change` themselves. The payload is small (kind, model,
origin, a counter): listeners reload what it names from the database, the payload
carries no state. SQLite sessions carry no notifier: one replica, nobody to tell.
"""

from __future__ import annotations

import itertools
import json
import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

CHANNEL = "aegis_changes"
# PostgreSQL refuses payloads of 8,000 bytes or more; ours stay far below (a model
# name is at most 128 characters), and a longer one would be a bug, refused here.
MAX_PAYLOAD_BYTES = 7999
_NOTIFIER_KEY = "aegis_change_notifier"
_SENT_KEY = "aegis_changes_sent"


class ChangeKind(StrEnum):
    """What changed; a listener reloads that part of one model (or all of it)."""

    REGISTRY = "registry"    # a model's versions or stages
    TRAFFIC = "traffic"      # a model's weights, header matches, mirroring
    ENDPOINTS = "endpoints"  # a model's announced endpoints (added, renewed, withdrawn, expired)
    ROLLOUT = "rollout"      # a model's rollout state or decisions
    NODES = "nodes"          # another replica's Envoy nodes acknowledged or changed


@dataclass(frozen=True)
class Change:
    kind: ChangeKind
    model_name: str  # "" when not about one model
    origin: str      # the notifier (one per process) whose transaction made the change
    sequence: int    # that notifier's counter: tells two notifications apart in logs

    def payload(self) -> str:
        document = {"k": self.kind.value, "m": self.model_name, "o": self.origin, "s": self.sequence}
        return json.dumps(document, separators=(",", ":"))


def parse_change(payload: str) -> Change | None:
    """The change a payload names, or None for one that is not ours (pure)."""
    try:
        document = json.loads(payload)
        return Change(
            ChangeKind(document["k"]), str(document["m"]), str(document["o"]), int(document["s"])
        )
    except (ValueError, KeyError, TypeError):
        return None


class ChangeNotifier:
    """Sends the notifications of one process's transactions; `origin` names the process."""

    def __init__(self, origin: str | None = None) -> None:
        self.origin = origin or uuid.uuid4().hex[:16]
        self._sequence = itertools.count(1)

    def session_info(self) -> dict[str, Any]:
        """The `info` a session needs for its writes to be announced."""
        return {_NOTIFIER_KEY: self}

    def change(self, kind: ChangeKind, model_name: str) -> Change:
        return Change(kind, model_name, self.origin, next(self._sequence))


def _payload_to_send(session: Session, kind: ChangeKind, model_name: str) -> str | None:
    """The payload announcing this change, or None when it needs none (SQLite, or sent already)."""
    notifier = session.info.get(_NOTIFIER_KEY)
    if not isinstance(notifier, ChangeNotifier):
        return None
    sent: set[tuple[ChangeKind, str]] = session.info.setdefault(_SENT_KEY, set())
    if (kind, model_name) in sent:
        return None
    sent.add((kind, model_name))
    payload = notifier.change(kind, model_name).payload()
    if len(payload.encode()) > MAX_PAYLOAD_BYTES:
        raise ValueError(f"change notification too long ({len(payload)} bytes)")
    return payload


_NOTIFY = text("SELECT pg_notify(:channel, :payload)")


async def note_change(session: AsyncSession, kind: ChangeKind, model_name: str = "") -> None:
    """Announce a change made in this session's transaction by a statement that bypasses the
    unit of work (a bulk insert, update or delete); once per kind and model."""
    payload = _payload_to_send(session.sync_session, kind, model_name)
    if payload is not None:
        connection = await session.connection()
        await connection.execute(_NOTIFY, {"channel": CHANNEL, "payload": payload})


@event.listens_for(Session, "after_flush")
def _announce_flushed_rows(session: Session, _flush_context: Any) -> None:
    if _NOTIFIER_KEY not in session.info:
        return
    for row in itertools.chain(session.new, session.dirty, session.deleted):
        kind = getattr(type(row), "__change_kind__", None)
        if kind is None:
            continue
        model_name = getattr(row, "model_name", None)
        if model_name is None:
            model_name = getattr(row, "name", "")
        payload = _payload_to_send(session, kind, str(model_name or ""))
        if payload is not None:
            # Inside the flush: the transaction's own connection, not a new statement via the session.
            session.connection().execute(_NOTIFY, {"channel": CHANNEL, "payload": payload})


@event.listens_for(Session, "after_begin")
def _forget_sent(session: Session, _transaction: Any, _connection: Any) -> None:
    # A new transaction on the same session announces its own changes again.
    session.info.pop(_SENT_KEY, None)
