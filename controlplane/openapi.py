"""The OpenAPI 3.1 document of every Aegis operation, generated from the operation tables.

Each area's `OPERATIONS` (its handlers, roles and pydantic models) is the single
source; `registry.openapi` turns them into the document. `GET /v1/openapi.json`
serves it without a token: it describes the API and reveals no state.
"""

from __future__ import annotations

import functools
import json
from importlib import metadata
from typing import Any, Literal

from aiohttp import web

from controlplane import alerts
from controlplane.cluster import api as cluster_api
from controlplane.observability import metrics_endpoint
from controlplane.rollout import api as rollout_api
from controlplane.rollout import policy_api
from controlplane.traffic import api as traffic_api
from controlplane.xds import server as xds_server
from registry import api as registry_api
from registry import openapi
from registry.boundary import ResponseModel
from registry.openapi import ROLES
from registry.routes import Call, Operation, Reply
from registry.schemas import CANARY, MODEL, STABLE

__all__ = ["CANARY", "MODEL", "ROLES", "STABLE", "all_operations", "openapi_document"]

INFO = {
    "title": "Aegis",
    "summary": "Model registry, Envoy xDS control plane and canary rollout engine.",
    "description": (
        "All bodies are JSON unless stated. Errors are `{\"error\": {\"code\", \"message\"}}` "
        "with a message that says what to fix: a field that is not valid is a 422 naming the field, "
        "a body that is not JSON a 400. Any operation may also answer 405 (wrong method, with "
        "`Allow`), 503 (`storage_unavailable`: the database did not take the change; retry) or 500 "
        "(`internal_error`, details only in the server log). Send "
        "`Authorization: Bearer <token>`; `x-aegis-role` names the least role an operation "
        "needs (admin ⊃ operator ⊃ viewer; `none`: no token). No token or a wrong one is "
        "401, too small a role 403, and nothing changes. Every timestamp is RFC 3339 with an offset."
    ),
}
TAGS = (
    {"name": "registry", "description": "Signed, immutable model versions and their stages."},
    {"name": "traffic", "description": "Weights between prod and canary, and model endpoints."},
    {"name": "rollouts", "description": "Canary rollouts driven by policies, and the policies."},
    {"name": "alerts", "description": "Alertmanager's webhook: a firing alert rolls back."},
    {"name": "xds", "description": "What Envoy polls (REST-JSON v3), and the node view."},
    {"name": "process", "description": "Health, metrics and this document."},
)


class Health(ResponseModel):
    status: Literal["ok"]


async def healthz(_call: Call[None, None]) -> Health:
    return Health(status="ok")


async def metrics(call: Call[None, None]) -> web.StreamResponse:
    return await metrics_endpoint(call.request)


async def openapi_json(_call: Call[None, None]) -> web.Response:
    return web.Response(body=_document_bytes(), content_type="application/json")


PROCESS_OPERATIONS = (
    Operation(
        "get", "/healthz", "health", "The process is up", "process", None, healthz,
        responses={200: Reply("up", Health)},
    ),
    Operation(
        "get", "/metrics", "metrics", "Prometheus metrics (registry, rollouts, analysis, xDS, process)",
        "process", None, metrics,
        responses={
            200: Reply(
                "the Prometheus text exposition format", media_type="text/plain", schema={"type": "string"}
            )
        },
    ),
    Operation(
        "get", "/v1/openapi.json", "openapi", "This document", "process", None, openapi_json,
        responses={200: Reply("the OpenAPI 3.1 document", schema={"type": "object"})},
    ),
)


def all_operations() -> tuple[Operation, ...]:
    """Every operation the app serves, in the document's order."""
    return (
        *registry_api.OPERATIONS,
        *traffic_api.OPERATIONS,
        *rollout_api.OPERATIONS,
        *policy_api.OPERATIONS,
        *alerts.OPERATIONS,
        *xds_server.OPERATIONS,
        *cluster_api.OPERATIONS,
        *PROCESS_OPERATIONS,
    )


def openapi_document() -> dict[str, Any]:
    """The whole document, built anew on each call; it reads nothing but the package's version."""
    return openapi.openapi_document(
        all_operations(), info={**INFO, "version": _package_version()}, tags=TAGS
    )


@functools.cache
def _document_bytes() -> bytes:
    return json.dumps(openapi_document()).encode()


def _package_version() -> str:
    try:
        return metadata.version("aegis")
    except metadata.PackageNotFoundError:
        return "0+unknown"
