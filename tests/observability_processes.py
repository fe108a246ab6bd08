"""Real Prometheus and Alertmanager for tests: re-exported from the product module the demo uses too."""

from controlplane.demo.processes import (
    ALERTMANAGER_BINARIES,
    Alertmanager,
    Prometheus,
    find_binary,
    free_port,
    require_binary,
)

__all__ = [
    "ALERTMANAGER_BINARIES",
    "Alertmanager",
    "Prometheus",
    "find_binary",
    "free_port",
    "require_binary",
]
