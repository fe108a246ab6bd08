"""The model server's settings: one dataclass, every field with its unit and why its default is what it is."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from modelserver.faults import Faults

DEFAULT_REGISTRY_URL = "http://127.0.0.1:8080"
# The token that lets /admin/faults change faults at run time (none: they cannot be changed).
ADMIN_TOKEN_ENV = "AEGIS_MODEL_SERVER_ADMIN_TOKEN"


@dataclass(frozen=True)
class ModelServerSettings:
    model_name: str
    version: str
    # TCP port to serve on; 0 picks a free one (tests), and the chosen one is what gets announced.
    port: int
    # Address to listen on.
    host: str = "127.0.0.1"
    # Address announced to the control plane for Envoy to reach; None: `host`. Needed when
    # `host` is a wildcard (0.0.0.0, ::), which Envoy cannot connect to.
    advertise_address: str | None = None
    # Base URL of Aegis: the registry (artifact) and the control plane (endpoints) are one process.
    registry_url: str = DEFAULT_REGISTRY_URL
    # Operator token (AEGIS_TOKEN): reads the version and registers the endpoint.
    token: str = field(default="", repr=False)
    # Seconds the control plane keeps the endpoint without a renewal: short, so a dead server
    # stops getting traffic within seconds; renewals go every ttl/3.
    ttl_seconds: int = 10
    # Faults at start; /admin/faults changes them at run time.
    faults: Faults = field(default_factory=Faults)
    # Where the artifact is kept; None: a temporary folder removed on shutdown.
    data_dir: Path | None = None
    # Bearer token for /admin/faults (AEGIS_MODEL_SERVER_ADMIN_TOKEN); None: faults are fixed.
    admin_token: str | None = field(default=None, repr=False)


WILDCARD_ADDRESSES = frozenset({"0.0.0.0", "::", ""})


def announced_address(settings: ModelServerSettings) -> str:
    """The address Envoy should connect to; a wildcard listen address cannot be announced."""
    address = settings.advertise_address or settings.host
    if address in WILDCARD_ADDRESSES:
        raise ValueError(
            f"--host {settings.host!r} listens on every interface, which Envoy cannot connect to: "
            "give --advertise-address with the IP Envoy should use"
        )
    return address
