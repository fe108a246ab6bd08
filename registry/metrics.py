"""The registry's Prometheus series, registered on the registry the app passes in."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter


class RegistryMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registrations = Counter(
            "aegis_registry_registrations",
            "Model version registrations, by outcome (created or already_registered).",
            ["outcome"],
            registry=registry,
        )
        self.promotions = Counter(
            "aegis_registry_promotions",
            "Stage changes into a stage, by target stage and action (promote, rollback, archive).",
            ["stage", "action"],
            registry=registry,
        )
