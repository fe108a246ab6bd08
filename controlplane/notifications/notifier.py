"""Delivers rollout events to webhooks in the background: `notify(event)` never waits.

One bounded queue and one worker per webhook, so a slow or dead receiver delays only its
own deliveries, in order, and never the rollout loop, which only appends to a deque.
A full queue drops its oldest delivery. A delivery is retried with doubling backoff on a
connection error, a timeout, a 5xx, 408 or 429, and given up after `max_attempts` or at
once on any other 4xx (the receiver refuses it; sending it again changes nothing). Every
failed attempt is logged and counted; the webhook's URL never is (it may hold a credential).
Receivers deduplicate by the `X-Aegis-Delivery` id, which a retry keeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import deque
from dataclasses import dataclass

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Gauge

from controlplane.notifications.events import SIGNATURE_HEADER, RolloutEvent, payload, signature
from controlplane.notifications.targets import NotificationSettings, WebhookTarget

log = logging.getLogger(__name__)

# Seconds one attempt may take: a receiver that answers slower is treated as down.
ATTEMPT_TIMEOUT_SECONDS = 5.0
# The longest wait between two attempts, however many came before.
MAX_BACKOFF_SECONDS = 60.0
RETRYABLE_STATUSES = frozenset({408, 429})


@dataclass(frozen=True)
class Delivery:
    event: RolloutEvent
    delivery_id: str
    body: bytes


class NotificationMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.delivered = Counter(
            "aegis_notifications_delivered", "Rollout events a webhook accepted (2xx).", ["webhook"],
            registry=registry,
        )
        self.failures = Counter(
            "aegis_notification_failures",
            "Failed delivery attempts, by webhook and reason (connection, timeout, or the HTTP status).",
            ["webhook", "reason"], registry=registry,
        )
        self.dropped = Counter(
            "aegis_notifications_dropped",
            "Rollout events never delivered, by webhook and reason (queue_full: the oldest waiting "
            "was dropped; gave_up: out of attempts; refused: the receiver answered a 4xx).",
            ["webhook", "reason"], registry=registry,
        )
        self.queued = Gauge(
            "aegis_notifications_queued", "Deliveries waiting per webhook.", ["webhook"], registry=registry
        )


class _Outbox:
    """One webhook's queue and its worker."""

    def __init__(
        self, target: WebhookTarget, settings: NotificationSettings, metrics: NotificationMetrics
    ) -> None:
        self.target = target
        self.settings = settings
        self.metrics = metrics
        self.waiting: deque[Delivery] = deque()
        self.wake = asyncio.Event()
        metrics.queued.labels(target.name).set_function(lambda: len(self.waiting))

    def put(self, delivery: Delivery) -> None:
        if len(self.waiting) >= self.settings.queue_size:
            dropped = self.waiting.popleft()
            self.metrics.dropped.labels(self.target.name, "queue_full").inc()
            log.warning(
                "notification queue of webhook %s is full (%d): dropped the oldest event (%s %s)",
                self.target.name, self.settings.queue_size,
                dropped.event.model_name, dropped.event.kind.value,
            )
        self.waiting.append(delivery)
        self.wake.set()

    async def run(self, session: aiohttp.ClientSession) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.waiting:
                await self._deliver(session, self.waiting.popleft())

    async def _deliver(self, session: aiohttp.ClientSession, delivery: Delivery) -> None:
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "aegis-notifier",
            "X-Aegis-Event": delivery.event.kind.value,
            "X-Aegis-Delivery": delivery.delivery_id,
        }
        if self.settings.signing_key is not None:
            headers[SIGNATURE_HEADER] = signature(self.settings.signing_key, delivery.body)
        name = self.target.name
        for attempt in range(1, self.settings.max_attempts + 1):
            reason, retry = await self._attempt(session, delivery.body, headers)
            if reason is None:
                self.metrics.delivered.labels(name).inc()
                return
            self.metrics.failures.labels(name, reason).inc()
            what = f"{delivery.event.model_name} {delivery.event.kind.value}"
            if not retry or attempt == self.settings.max_attempts:
                self.metrics.dropped.labels(name, "gave_up" if retry else "refused").inc()
                log.error("notification %s to webhook %s failed (%s) after %d attempt(s); given up",
                          what, name, reason, attempt)
                return
            delay = min(self.settings.retry_seconds * 2 ** (attempt - 1), MAX_BACKOFF_SECONDS)
            log.warning("notification %s to webhook %s failed (%s), attempt %d of %d; retrying in %.1f s",
                        what, name, reason, attempt, self.settings.max_attempts, delay)
            await asyncio.sleep(delay)

    async def _attempt(
        self, session: aiohttp.ClientSession, body: bytes, headers: dict[str, str]
    ) -> tuple[str | None, bool]:
        """(None, _) when accepted; else (why, whether another attempt may succeed)."""
        try:
            async with session.post(
                self.target.url, data=body, headers=headers, allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=ATTEMPT_TIMEOUT_SECONDS),
            ) as response:
                await response.read()
                if 200 <= response.status < 300:
                    return None, False
                status = response.status
                return str(status), status >= 500 or status in RETRYABLE_STATUSES
        except TimeoutError:
            return "timeout", True
        except aiohttp.ClientError:
            return "connection", True


class Notifier:
    """`notify(event)` from the rollout runner; `run()` delivers (started by the app)."""

    def __init__(self, settings: NotificationSettings, metrics: NotificationMetrics) -> None:
        self.outboxes = [_Outbox(target, settings, metrics) for target in settings.webhooks]

    def notify(self, event: RolloutEvent | None) -> None:
        """Queue `event` for every webhook that wants its kind; returns at once."""
        if event is None:
            return
        delivery_id = uuid.uuid4().hex
        for outbox in self.outboxes:
            if event.kind in outbox.target.events:
                body = payload(event, outbox.target.payload_format, delivery_id=delivery_id)
                outbox.put(Delivery(event, delivery_id, body))

    async def run(self) -> None:
        if not self.outboxes:
            return
        async with aiohttp.ClientSession() as session:
            workers = [asyncio.create_task(outbox.run(session)) for outbox in self.outboxes]
            try:
                await asyncio.gather(*workers)
            finally:
                for worker in workers:
                    worker.cancel()
                for worker in workers:
                    with contextlib.suppress(asyncio.CancelledError):
                        await worker
