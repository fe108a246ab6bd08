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
        self.swept_files = Counter(
            "aegis_registry_swept_files",
            "Crash garbage removed from the blob store, by kind (upload: an interrupted "
            "temporary file; blob: stored bytes no version names).",
            ["kind"],
            registry=registry,
        )
        self.swept_bytes = Counter(
            "aegis_registry_swept_bytes",
            "Bytes of crash garbage removed from the blob store, by kind (upload, blob).",
            ["kind"],
            registry=registry,
        )
        self.promotions = Counter(
            "aegis_registry_promotions",
            "Stage changes into a stage, by target stage and action (promote, rollback, archive).",
            ["stage", "action"],
            registry=registry,
        )
