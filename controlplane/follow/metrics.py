"""How this replica follows the database: whether its listener is connected, and what it read."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from controlplane.follow.follower import Follower
from controlplane.follow.listener import ChangeListener


class FollowerCollector(Collector):
    def __init__(self, follower: Follower, listener: ChangeListener) -> None:
        self.follower = follower
        self.listener = listener

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "aegis_follower_listener_connected",
            "1 while the LISTEN connection that brings other replicas' changes is up.",
            value=1 if self.listener.connected else 0,
        )
        yield CounterMetricFamily(
            "aegis_follower_listener_connections",
            "Connects of the LISTEN connection (each one is followed by a full reconcile).",
            value=self.listener.connections,
        )
        yield CounterMetricFamily(
            "aegis_follower_reconciles", "Full reconciles that read everything again.",
            value=self.follower.reconciles,
        )
        yield CounterMetricFamily(
            "aegis_follower_changes_applied", "Other replicas' changes read again and applied, one by one.",
            value=self.follower.applied,
        )
        yield GaugeMetricFamily(
            "aegis_follower_reconcile_pending",
            "1 while a full reconcile is due or running: after a (re)connect, or for a second after a "
            "read failed.",
            value=1 if self.follower.reconcile_pending else 0,
        )
