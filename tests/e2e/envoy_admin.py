"""What a running Envoy says about its xDS config, read from its admin listener.

Counters (`/stats`) tell how often Envoy applied or rejected an update; `/config_dump`
tells which version of each resource it runs. Both come from Envoy itself, not from
Aegis: a test that compares them before and after an event sees what Envoy did.
"""

from __future__ import annotations

import json
import time
from typing import Any

from tests.processes import Envoy

# One counter family per xDS type; RDS's is named after the HTTP connection manager's
# stat prefix and the route configuration (Aegis builds `ingress_http` / `aegis_routes`).
UPDATE_PREFIXES = (
    "listener_manager.lds.",
    "cluster_manager.cds.",
    "http.ingress_http.rds.aegis_routes.",
)


def stats(envoy: Envoy, prefixes: tuple[str, ...]) -> dict[str, int]:
    """Counters and gauges whose names start with one of `prefixes` (text readouts left out)."""
    found: dict[str, int] = {}
    for line in envoy.admin("/stats").splitlines():
        name, _, value = line.partition(": ")
        if name.startswith(prefixes) and value.strip().lstrip("-").isdigit():
            found[name] = int(value)
    return found


def update_counters(envoy: Envoy) -> dict[str, int]:
    """How many xDS updates Envoy applied and rejected, per type."""
    prefixes = tuple(p + kind for p in UPDATE_PREFIXES for kind in ("update_success", "update_rejected"))
    return stats(envoy, prefixes)


def config_versions(envoy: Envoy) -> dict[str, str]:
    """The version of every dynamic resource Envoy runs, by `listener/`, `cluster/` or `route/` + name."""
    dump: dict[str, Any] = json.loads(envoy.admin("/config_dump"))
    versions: dict[str, str] = {}
    for section in dump["configs"]:
        for listener in section.get("dynamic_listeners", []):
            active = listener.get("active_state", {})
            versions[f"listener/{listener['name']}"] = active.get("version_info", "")
        for cluster in section.get("dynamic_active_clusters", []):
            versions[f"cluster/{cluster['cluster']['name']}"] = cluster.get("version_info", "")
        for route in section.get("dynamic_route_configs", []):
            versions[f"route/{route['route_config']['name']}"] = route.get("version_info", "")
    return versions


def connected_to_control_plane(envoy: Envoy) -> bool:
    """Whether Envoy's gRPC xDS stream is up (`control_plane.connected_state`; ADS only)."""
    return stats(envoy, ("control_plane.connected_state",)).get("control_plane.connected_state") == 1


def wait_until_connected(envoy: Envoy, *, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not connected_to_control_plane(envoy):
        if time.monotonic() > deadline:
            raise TimeoutError(f"Envoy's ADS stream not up within {timeout} s; see {envoy.workdir}")
        time.sleep(0.05)
