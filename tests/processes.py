"""Real processes for tests: re-exported from the product module the demo uses too."""

from controlplane.demo.processes import (
    BOOTSTRAP,
    REST_BOOTSTRAP,
    ROOT,
    AegisServer,
    Envoy,
    XdsTransport,
    free_port,
    stop,
    wait_for_http,
)

__all__ = [
    "BOOTSTRAP", "REST_BOOTSTRAP", "ROOT", "AegisServer", "Envoy", "XdsTransport", "free_port", "stop",
    "wait_for_http",
]
