"""Real processes for tests: re-exported from the product module the demo uses too."""

from controlplane.demo.processes import (
    BOOTSTRAP,
    ROOT,
    AegisServer,
    Envoy,
    free_port,
    stop,
    wait_for_http,
)

__all__ = ["BOOTSTRAP", "ROOT", "AegisServer", "Envoy", "free_port", "stop", "wait_for_http"]
