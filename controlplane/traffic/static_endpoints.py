"""Static endpoints from the configuration (AEGIS_STATIC_ENDPOINTS), checked once at start-up.

For model servers that cannot announce themselves and have no sidecar: each entry is
`{model_name, version, address, port}`, the fields of `POST /v1/endpoints` without a TTL.
They never expire, are never stored, and cannot be withdrawn through the API: the
configuration is their only source, so a restart with it edited is how they change.
"""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import ValidationError

from controlplane.traffic.schemas import EndpointWithdrawal

SETTING = "AEGIS_STATIC_ENDPOINTS"
SHAPE = "a list of {model_name, version, address, port}"

StaticEndpoints = dict[tuple[str, str], frozenset[tuple[str, int]]]


class StaticEndpointError(ValueError):
    """The setting cannot be used; the message names the entry and the field."""


class StaticEndpoint(EndpointWithdrawal):
    """One entry: which version, at which IP address and port (unknown keys are refused)."""


def parse_static_endpoints(text: str) -> StaticEndpoints:
    """The endpoints of the setting's value: YAML or JSON (a config file's list arrives as JSON)."""
    if not text.strip():
        return {}
    try:
        document: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise StaticEndpointError(f"{SETTING} is not YAML or JSON ({exc}); it is {SHAPE}") from None
    if not isinstance(document, list):
        raise StaticEndpointError(f"{SETTING} must be {SHAPE}, not {type(document).__name__}")
    found: StaticEndpoints = {}
    first_seen: dict[tuple[str, str, str, int], int] = {}
    for index, entry in enumerate(document):
        endpoint = _entry(index, entry)
        identity = (endpoint.model_name, endpoint.version, endpoint.address, endpoint.port)
        if identity in first_seen:
            raise StaticEndpointError(
                f"{SETTING}[{index}] repeats entry [{first_seen[identity]}] "
                f"({endpoint.model_name} {endpoint.version} at {endpoint.address}:{endpoint.port}); "
                "list each endpoint once"
            )
        first_seen[identity] = index
        key = (endpoint.model_name, endpoint.version)
        found[key] = found.get(key, frozenset()) | {(endpoint.address, endpoint.port)}
    return found


def _entry(index: int, entry: Any) -> StaticEndpoint:
    if not isinstance(entry, dict):
        raise StaticEndpointError(
            f"{SETTING}[{index}] must be a mapping {{model_name, version, address, port}}"
        )
    try:
        return StaticEndpoint.model_validate(entry)
    except ValidationError as exc:
        problems = "; ".join(_problem(error) for error in exc.errors())
        raise StaticEndpointError(f"{SETTING}[{index}]: {problems}") from None


def _problem(error: Any) -> str:
    field = ".".join(str(part) for part in error["loc"]) or "entry"
    # YAML reads `version: 1` as a number and `version: 1.10` as 1.1: versions are strings.
    hint = ' (quote it: version: "1")' if field == "version" and error["type"] == "string_type" else ""
    return f"{field}: {error['msg']}{hint}"
