"""The OpenAPI 3.1 description of every Aegis HTTP endpoint, written by hand as data, and its endpoint.

The document is the contract a client reads: each operation names the role it needs
(`x-aegis-role`: viewer, operator, admin or none; roles nest admin ⊃ operator ⊃ viewer),
its body with examples that work against a fresh server, and every error it answers
(always `{"error": {"code", "message"}}`). Limits, patterns and enums come from the
modules that enforce them, so the document cannot drift from the checks.
`tests/integration/test_openapi.py` pins it to the routes the app registers and runs
its examples against a real app.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

from aiohttp import web

from controlplane.rollout.analysis import VerdictKind
from controlplane.rollout.api import COMMANDS
from controlplane.rollout.machine import Phase
from controlplane.traffic.service import DEFAULT_TTL_SECONDS, MAX_TTL_SECONDS, MAX_WEIGHT, ROLLOUT_OWNER
from controlplane.xds.server import TYPES_BY_PATH
from registry.api import MAX_URL_TTL_SECONDS
from registry.domain import (
    CHECKSUM_PATTERN,
    MODEL_NAME_PATTERN,
    RESERVED_MODEL_NAMES,
    VERSION_PATTERN,
    ChangeAction,
    Stage,
)
from registry.signing import Algorithm

Document = dict[str, Any]

ROLES = ("none", "viewer", "operator", "admin")
JSON = "application/json"

# What the alert intake did with each alert (controlplane.alerts).
ALERT_ACTIONS = (
    "rollback",
    "duplicate",
    "recorded_resolved",
    "recorded_no_model_label",
    "recorded_no_active_rollout",
    "recorded_other_version",
    "recorded_rollback_disabled",
)

# Example values shared by the examples, so that they form one story a client can replay.
MODEL = "fraud"
STABLE = "1.0.0"
CANARY = "2.0.0"


def openapi_document() -> Document:
    """The whole document, built anew on each call; it reads nothing but the package's version."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Aegis",
            "version": _package_version(),
            "summary": "Model registry, Envoy xDS control plane and canary rollout engine.",
            "description": (
                "All bodies are JSON unless stated. Errors are `{\"error\": {\"code\", \"message\"}}` "
                "with a message that says what to fix; any operation may also answer 405 (wrong "
                "method) or 500 (`internal_error`, details only in the server log). Send "
                "`Authorization: Bearer <token>`; `x-aegis-role` names the least role an operation "
                "needs (admin ⊃ operator ⊃ viewer; `none`: no token). No token or a wrong one is "
                "401, too small a role 403, and nothing changes."
            ),
        },
        "tags": [
            {"name": "registry", "description": "Signed, immutable model versions and their stages."},
            {"name": "traffic", "description": "Weights between prod and canary, and model endpoints."},
            {"name": "rollouts", "description": "Canary rollouts driven by policies, and the policies."},
            {"name": "alerts", "description": "Alertmanager's webhook: a firing alert rolls back."},
            {"name": "xds", "description": "What Envoy polls (REST-JSON v3), and the node view."},
            {"name": "process", "description": "Health, metrics and this document."},
        ],
        "paths": {
            **_registry_paths(),
            **_traffic_paths(),
            **_rollout_paths(),
            **_alert_paths(),
            **_xds_paths(),
            **_process_paths(),
        },
        "components": {
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A token from AEGIS_API_TOKENS (`role:token` or `role:name:token`).",
                }
            },
            "parameters": _parameters(),
            "schemas": {
                **_common_schemas(),
                **_registry_schemas(),
                **_traffic_schemas(),
                **_rollout_schemas(),
                **_alert_schemas(),
                **_xds_schemas(),
            },
        },
    }


async def openapi_endpoint(_request: web.Request) -> web.Response:
    """`GET /v1/openapi.json`, without a token: it describes the API and reveals no state."""
    return web.json_response(openapi_document())


def _package_version() -> str:
    try:
        return metadata.version("aegis")
    except metadata.PackageNotFoundError:
        return "0+unknown"


# -- building blocks ---------------------------------------------------------------------------------


def _ref(name: str) -> Document:
    return {"$ref": f"#/components/schemas/{name}"}


def _param(name: str) -> Document:
    return {"$ref": f"#/components/parameters/{name}"}


def _nullable(schema: Document) -> Document:
    return {"anyOf": [schema, {"type": "null"}]}


def _object(properties: dict[str, Any], *, required: tuple[str, ...] = (), **extra: Any) -> Document:
    schema: Document = {"type": "object", "properties": properties, **extra}
    if required:
        schema["required"] = list(required)
    return schema


def _json_response(description: str, schema: Document) -> Document:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _json_body(schema: Document, examples: dict[str, Any], *, required: bool = True) -> Document:
    """A JSON request body; each example is {name: (summary, value)}."""
    return {
        "required": required,
        "content": {
            JSON: {
                "schema": schema,
                "examples": {name: {"summary": s, "value": v} for name, (s, v) in examples.items()},
            }
        },
    }


def _operation(
    operation_id: str,
    summary: str,
    *,
    role: str,
    tag: str,
    responses: dict[int, Document],
    errors: dict[int, str] | None = None,
    body: Document | None = None,
    parameters: tuple[str, ...] = (),
    description: str | None = None,
) -> Document:
    """One operation. The 401 and 403 that its role implies are added here, with the error schema.

    Every token is at least a viewer, so a viewer operation answers 401 but never 403.
    """
    assert role in ROLES, role
    why = dict(errors or {})
    if role != "none":
        why.setdefault(401, "no token, or a token that is not valid")
    if role in ("operator", "admin"):
        why.setdefault(403, f"the token's role is below {role}")
    operation: Document = {
        "operationId": operation_id,
        "summary": summary,
        "tags": [tag],
        "x-aegis-role": role,
        "security": [] if role == "none" else [{"bearerAuth": []}],
    }
    if description:
        operation["description"] = description
    if parameters:
        operation["parameters"] = [_param(name) for name in parameters]
    if body is not None:
        operation["requestBody"] = body
    operation["responses"] = {
        **{str(status): response for status, response in sorted(responses.items())},
        **{str(status): _json_response(text, _ref("Error")) for status, text in sorted(why.items())},
    }
    return operation


def _parameters() -> Document:
    return {
        "model": {
            "name": "model", "in": "path", "required": True, "schema": _ref("ModelName"), "example": MODEL,
        },
        "version": {
            "name": "version", "in": "path", "required": True, "schema": _ref("Version"), "example": CANARY,
        },
        "command": {
            "name": "command", "in": "path", "required": True,
            "schema": {"type": "string", "enum": list(COMMANDS)},
            "description": "pause, resume, promote (past the current step; `full` to prod) or abort",
        },
        "rolloutId": {
            "name": "rollout_id", "in": "path", "required": True,
            "schema": {"type": "integer", "minimum": 1}, "example": 1,
            "description": "a rollout's `id`, from the history",
        },
        "limit": {
            "name": "limit", "in": "query", "required": False,
            "schema": {"type": "integer", "minimum": 1, "maximum": 500},
            "description": "how many rollouts or decisions (newest first)",
        },
        "before": {
            "name": "before", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1},
            "description": "the next page: the `next_before` of the previous one",
        },
        "xdsType": {
            "name": "type", "in": "path", "required": True,
            "schema": {"type": "string", "enum": list(TYPES_BY_PATH)},
            "description": "the resource type Envoy polls: LDS, CDS, RDS or EDS",
        },
        "expires": {
            "name": "expires", "in": "query", "required": False, "schema": {"type": "string"},
            "description": "signed URL: Unix time after which it stops working",
        },
        "sig": {
            "name": "sig", "in": "query", "required": False, "schema": {"type": "string"},
            "description": "signed URL: the signature; with it no token is needed",
        },
    }


def _common_schemas() -> Document:
    return {
        "Error": _object(
            {
                "error": _object(
                    {
                        "code": {"type": "string", "examples": ["not_found", "invalid_input"]},
                        "message": {"type": "string", "description": "what went wrong and what to fix"},
                    },
                    required=("code", "message"),
                )
            },
            required=("error",),
        ),
        "ModelName": {
            "type": "string",
            "pattern": MODEL_NAME_PATTERN.pattern,
            "not": {"anyOf": [{"enum": sorted(RESERVED_MODEL_NAMES)}, {"pattern": r"\.\."}]},
            "description": "lowercase; no `|`, `/` or `..`; `models` and `register` are reserved",
        },
        "Version": {
            "type": "string",
            "pattern": VERSION_PATTERN.pattern,
            "not": {"pattern": r"\.\."},
            "description": "no `|`, `/` or `..`",
        },
        "Checksum": {
            "type": "string", "pattern": CHECKSUM_PATTERN.pattern,
            "description": "lowercase hex SHA-256 of the artifact's bytes",
        },
        "Stage": {"type": "string", "enum": [stage.value for stage in Stage]},
        "Timestamp": {"type": "string", "format": "date-time"},
    }


# -- registry -----------------------------------------------------------------------------------------

_NAME_ERRORS = {422: "the model name or version is not valid"}


def _registry_paths() -> Document:
    version_params = ("model", "version")
    return {
        "/v1/registry/register": {
            "post": _operation(
                "registerVersion", "Register a model version (metadata and artifact bytes)",
                role="admin", tag="registry",
                description=(
                    "The artifact streams to the blob store while it is hashed. Without a signature "
                    "the server signs with its key; a given checksum or signature must match the "
                    "bytes. A rejected upload leaves nothing behind."
                ),
                body=_register_body(),
                responses={
                    201: _json_response("registered", _ref("VersionDocument")),
                    200: _json_response("already registered with the same bytes", _ref("VersionDocument")),
                },
                errors={
                    400: "not multipart, a part missing or unexpected, or metadata that is not JSON",
                    409: "the version is registered with other bytes (versions are immutable), "
                    "or the server has no signing key",
                    413: "the upload exceeds AEGIS_MAX_ARTIFACT_BYTES",
                    422: "a bad name or version, or a checksum, signature or key id that does not match",
                },
            )
        },
        "/v1/registry/models": {
            "get": _operation(
                "listModels", "Every model with its prod and canary pointers",
                role="viewer", tag="registry",
                responses={200: _json_response("the models", _ref("ModelList"))},
            )
        },
        "/v1/registry/{model}": {
            "get": _operation(
                "getModel", "One model: its versions and stage pointers",
                role="viewer", tag="registry", parameters=("model",),
                responses={200: _json_response("the model", _ref("ModelDocument"))},
                errors={404: "the model is not registered", **_NAME_ERRORS},
            )
        },
        "/v1/registry/{model}/rollback": {
            "post": _operation(
                "rollbackModel", "Roll back: canary to staging, or with no canary prod to the previous prod",
                role="operator", tag="registry", parameters=("model",),
                body=_json_body(
                    _ref("ReasonRequest"),
                    {"with-reason": ("why, for the history", {"reason": "p99 latency regressed"})},
                    required=False,
                ),
                responses={200: _json_response("the stage changes made", _ref("RollbackResult"))},
                errors={
                    400: "the body is not a JSON object",
                    404: "the model is not registered",
                    409: "nothing to roll back to, the version to restore fails validation, or it has "
                    "no live endpoint while another version serves (`force` goes ahead)",
                    422: "a bad model name, or a reason that is not a string of at most 1000 characters",
                },
            )
        },
        "/v1/registry/{model}/{version}": {
            "get": _operation(
                "getVersion", "The version document, with its promotion history",
                role="viewer", tag="registry", parameters=version_params,
                responses={200: _json_response("the version", _ref("VersionDocument"))},
                errors={404: "no such version", **_NAME_ERRORS},
            )
        },
        "/v1/registry/{model}/{version}/promote": {
            "post": _operation(
                "promoteVersion", "Promote a version to canary or prod",
                role="operator", tag="registry", parameters=version_params,
                description=(
                    "The bytes are re-hashed and the signature checked first. Promoting to prod "
                    "archives the old prod; promoting to canary starts a rollout when a policy "
                    "matches (which needs a prod version)."
                ),
                body=_json_body(
                    _ref("PromoteRequest"),
                    {
                        "prod": ("make a version prod", {"stage": "prod", "reason": "first release"}),
                        "canary": ("start a canary", {"stage": "canary", "reason": "retrained on May data"}),
                    },
                ),
                responses={200: _json_response("the promoted version", _ref("PromotionDocument"))},
                errors={
                    400: "the body is not a JSON object",
                    404: "no such model or version",
                    409: "already in that stage, an illegal transition, another canary running, "
                    "the version fails validation, a policy needs a prod version first, or a new prod "
                    "has no live endpoint while another version serves (`force` goes ahead)",
                    422: "a bad name, version, stage or reason",
                },
            )
        },
        "/v1/registry/{model}/{version}/validate": {
            "get": _operation(
                "validateVersion", "Re-hash the stored bytes and check the signature",
                role="viewer", tag="registry", parameters=version_params,
                description="Tampering gives `valid: false` with the problems, never an error.",
                responses={200: _json_response("the validation report", _ref("ValidationReport"))},
                errors={404: "no such version", **_NAME_ERRORS},
            )
        },
        "/v1/registry/{model}/{version}/artifact": {
            "get": {
                **_operation(
                    "downloadArtifact", "Download the artifact's bytes (a token or a signed URL)",
                    role="viewer", tag="registry", parameters=(*version_params, "expires", "sig"),
                    description="With `expires` and `sig` from POST …/artifact-url, no token is needed.",
                    responses={200: _artifact_response()},
                    errors={
                        403: "the signed URL is malformed, not valid or expired",
                        404: "no such version, or its bytes are missing from the blob store",
                        **_NAME_ERRORS,
                    },
                ),
                "security": [{"bearerAuth": []}, {}],
            }
        },
        "/v1/registry/{model}/{version}/artifact-url": {
            "post": _operation(
                "createArtifactUrl", "A download URL that works without a token until it expires",
                role="viewer", tag="registry", parameters=version_params,
                body=_json_body(
                    _ref("ArtifactUrlRequest"),
                    {"one-hour": ("valid for an hour", {"ttl_seconds": 3600})},
                    required=False,
                ),
                responses={200: _json_response("the signed URL", _ref("ArtifactUrl"))},
                errors={
                    400: "the body is not a JSON object",
                    404: "no such version",
                    422: f"a bad name or version, or ttl_seconds outside 1..{MAX_URL_TTL_SECONDS}",
                },
            )
        },
    }


def _register_body() -> Document:
    unsigned = {"model_name": MODEL, "version": CANARY, "metadata": {"framework": "onnx", "owner": "risk-ml"}}
    signed = {
        "model_name": MODEL,
        "version": CANARY,
        "checksum": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        "signature": "3c7bd2a1b9d0e1f4a5c6b7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8",
        "key_id": "legacy",
    }
    return {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": _ref("RegisterUpload"),
                "encoding": {
                    "metadata": {"contentType": JSON},
                    "artifact": {"contentType": "application/octet-stream"},
                },
                "examples": {
                    "server-signed": {
                        "summary": "the server hashes and signs with its key",
                        "value": {"metadata": unsigned, "artifact": "<the artifact's bytes>"},
                    },
                    "signed-by-ci": {
                        "summary": "CI signed it (`aegis sign`): the server re-checks both claims",
                        "value": {"metadata": signed, "artifact": "<the artifact's bytes>"},
                    },
                },
            }
        },
    }


def _artifact_response() -> Document:
    header = {"schema": {"type": "string"}}
    return {
        "description": "the bytes",
        "headers": {
            "X-Aegis-Checksum-Sha256": {**header, "description": "SHA-256 of the bytes: check it"},
            "X-Aegis-Signature": {**header, "description": "the version's signature"},
            "X-Aegis-Key-Id": {**header, "description": "the key that signed it"},
        },
        "content": {
            "application/octet-stream": {
                "schema": {"type": "string", "contentMediaType": "application/octet-stream"}
            }
        },
    }


def _registry_schemas() -> Document:
    stage_pointers = _object(
        {"prod": _nullable(_ref("Version")), "canary": _nullable(_ref("Version"))},
        required=("prod", "canary"),
    )
    history_entry = _object(
        {
            "from_stage": _ref("Stage"),
            "to_stage": _ref("Stage"),
            "at": _ref("Timestamp"),
            "actor": {"type": "string", "description": "the token's name or role, never the token"},
            "reason": {"type": "string"},
            "action": {"type": "string", "enum": [action.value for action in ChangeAction]},
        },
        required=("from_stage", "to_stage", "at", "actor", "reason", "action"),
    )
    return {
        "RegistrationMetadata": _object(
            {
                "model_name": _ref("ModelName"),
                "version": _ref("Version"),
                "checksum": {**_ref("Checksum"), "description": "optional claim, checked against the bytes"},
                "signature": {"type": "string", "description": "optional; over `model|version|checksum`"},
                "key_id": {"type": "string", "description": "the signature's key; default: the signing key"},
                "metadata": {
                    "type": "object",
                    "not": {"required": ["_registry"]},
                    "description": "free-form; `_registry` is reserved",
                },
            },
            required=("model_name", "version"),
        ),
        "RegisterUpload": _object(
            {
                "metadata": _ref("RegistrationMetadata"),
                "artifact": {"type": "string", "contentMediaType": "application/octet-stream"},
            },
            required=("metadata", "artifact"),
            description="multipart parts, in either order: one `metadata` (JSON) and one `artifact`",
        ),
        "HistoryEntry": history_entry,
        "VersionDocument": _object(
            {
                "model_name": _ref("ModelName"),
                "version": _ref("Version"),
                "checksum": _ref("Checksum"),
                "size_bytes": {"type": "integer", "minimum": 0},
                "signature": {"type": "string"},
                "key_id": {"type": "string"},
                "algorithm": {"type": "string", "enum": [a.value for a in Algorithm]},
                "stage": _ref("Stage"),
                "created_at": _ref("Timestamp"),
                "created_by": {"type": "string"},
                "metadata": _object(
                    {
                        "_registry": _object(
                            {"promotion_history": {"type": "array", "items": _ref("HistoryEntry")}},
                            required=("promotion_history",),
                        )
                    },
                    required=("_registry",),
                    description="the registered metadata plus the registry's own records",
                ),
            },
            required=(
                "model_name", "version", "checksum", "size_bytes", "signature", "key_id", "algorithm",
                "stage", "created_at", "created_by", "metadata",
            ),
        ),
        "StagePointers": stage_pointers,
        "ModelList": _object(
            {
                "models": {
                    "type": "array",
                    "items": _object(
                        {
                            "model_name": _ref("ModelName"),
                            "created_at": _ref("Timestamp"),
                            "versions": {"type": "integer", "minimum": 1, "description": "how many"},
                            "stages": _ref("StagePointers"),
                        },
                        required=("model_name", "created_at", "versions", "stages"),
                    ),
                }
            },
            required=("models",),
        ),
        "ModelDocument": _object(
            {
                "model_name": _ref("ModelName"),
                "stages": _ref("StagePointers"),
                "versions": {"type": "array", "items": _ref("VersionDocument")},
            },
            required=("model_name", "stages", "versions"),
        ),
        "PromoteRequest": _object(
            {
                "stage": {"type": "string", "enum": [Stage.CANARY.value, Stage.PROD.value]},
                "reason": {"type": "string", "maxLength": 1000},
                "force": {
                    "type": "boolean", "default": False,
                    "description": "make prod a version with no live endpoint even while another serves",
                },
            },
            required=("stage",),
        ),
        "PromotionDocument": {
            "allOf": [_ref("VersionDocument")],
            "type": "object",
            "properties": {
                "rollout": _object(
                    {
                        "started": {"type": "boolean"},
                        "policy": _nullable({"type": "string"}),
                        "reason": {"type": "string", "description": "why no rollout started"},
                    },
                    required=("started", "policy", "reason"),
                    description="promotions to canary: whether a rollout started, and if not, why",
                ),
            },
        },
        "ReasonRequest": _object(
            {
                "reason": {"type": "string", "maxLength": 1000},
                "force": {
                    "type": "boolean", "default": False,
                    "description": "make prod a version with no live endpoint even while another serves",
                },
            }
        ),
        "RollbackResult": _object(
            {
                "model_name": _ref("ModelName"),
                "changes": {
                    "type": "array",
                    "items": _object(
                        {"version": _ref("Version"), "from_stage": _ref("Stage"), "to_stage": _ref("Stage")},
                        required=("version", "from_stage", "to_stage"),
                    ),
                },
            },
            required=("model_name", "changes"),
        ),
        "ValidationReport": _object(
            {
                "valid": {"type": "boolean", "description": "checksum_ok and signature_ok"},
                "checksum_ok": {"type": "boolean"},
                "signature_ok": {"type": "boolean"},
                "checksum": _ref("Checksum"),
                "actual_checksum": _nullable(_ref("Checksum")),
                "key_id": {"type": "string"},
                "problems": {"type": "array", "items": {"type": "string"}},
            },
            required=(
                "valid", "checksum_ok", "signature_ok", "checksum", "actual_checksum", "key_id", "problems",
            ),
        ),
        "ArtifactUrlRequest": _object(
            {"ttl_seconds": {"type": "integer", "minimum": 1, "maximum": MAX_URL_TTL_SECONDS}}
        ),
        "ArtifactUrl": _object(
            {
                "url": {"type": "string", "format": "uri"},
                "expires_at": _ref("Timestamp"),
                "checksum": _ref("Checksum"),
            },
            required=("url", "expires_at", "checksum"),
        ),
    }


# -- traffic and endpoints ----------------------------------------------------------------------------


def _traffic_paths() -> Document:
    endpoint = {"model_name": MODEL, "version": CANARY, "address": "10.0.0.12", "port": 8502}
    announcement = {**endpoint, "ttl_seconds": 30}
    return {
        "/v1/traffic/{model}": {
            "get": _operation(
                "getTraffic", "A model's weights, endpoints and whether Envoy runs them",
                role="viewer", tag="traffic", parameters=("model",),
                responses={200: _json_response("the model's traffic", _ref("TrafficDocument"))},
                errors={404: "the model is not registered", 422: "the model name is not valid"},
            ),
            "put": _operation(
                "setTraffic", "Set the weights between prod and canary, header matches and mirroring",
                role="operator", tag="traffic", parameters=("model",),
                body=_json_body(
                    _ref("TrafficRequest"),
                    {
                        "ten-percent": (
                            "10% to the canary; requests with x-canary: always reach it",
                            {
                                "weights": {STABLE: 90, CANARY: 10},
                                "match": [{"headers": {"x-canary": "always"}}],
                                "mirror": {"percent": 0},
                            },
                        )
                    },
                ),
                responses={200: _json_response("the traffic now", _ref("TrafficDocument"))},
                errors={
                    400: "the body is not a JSON object",
                    404: "the model is not registered",
                    409: "a rollout drives this model's traffic: pause or abort it first",
                    422: "weights naming other than the prod and canary versions, a sum of 0, a bad "
                    "match or mirror, or a config Envoy rejects",
                },
            ),
        },
        "/v1/endpoints": {
            "get": _operation(
                "listEndpoints", "Every live endpoint with its expiry",
                role="viewer", tag="traffic",
                responses={200: _json_response("the endpoints", _ref("EndpointList"))},
            ),
            "post": _operation(
                "announceEndpoint", "Add or renew a model server's endpoint",
                role="operator", tag="traffic",
                description="An endpoint not renewed within its TTL drops out of Envoy's config.",
                body=_json_body(
                    _ref("EndpointAnnouncement"),
                    {"canary-server": ("the canary's server, renewed every 10 s", announcement)},
                ),
                responses={
                    201: _json_response("a new endpoint", _ref("EndpointAck")),
                    200: _json_response("an endpoint renewed", _ref("EndpointAck")),
                },
                errors={
                    400: "the body is not a JSON object",
                    404: "the version is not registered",
                    422: "a bad name, version, IP address, port or ttl_seconds",
                },
            ),
            "delete": _operation(
                "withdrawEndpoint", "Withdraw an endpoint at once",
                role="operator", tag="traffic",
                body=_json_body(
                    _ref("EndpointWithdrawal"), {"canary-server": ("the server is stopping", endpoint)}
                ),
                responses={200: _json_response("withdrawn", _ref("EndpointWithdrawn"))},
                errors={
                    400: "the body is not a JSON object",
                    404: "no such endpoint",
                    422: "a bad name, version, IP address or port",
                },
            ),
        },
    }


def _traffic_schemas() -> Document:
    address = {"type": "string", "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}],
               "description": "an IP address: Envoy's STATIC clusters resolve no names"}
    port = {"type": "integer", "minimum": 1, "maximum": 65535}
    endpoint_key = {
        "model_name": _ref("ModelName"), "version": _ref("Version"), "address": address, "port": port,
    }
    header_map = {"type": "object", "minProperties": 1, "additionalProperties": {"type": "string"}}
    return {
        "TrafficRequest": _object(
            {
                "weights": {
                    "type": "object", "minProperties": 1,
                    "additionalProperties": {"type": "integer", "minimum": 0, "maximum": MAX_WEIGHT},
                    "description": "version -> weight; only the prod and canary versions; a positive sum",
                },
                "match": {
                    "type": "array",
                    "items": _object(
                        {"headers": header_map}, required=("headers",), additionalProperties=False
                    ),
                    "description": "requests with all these headers always reach the canary",
                },
                "mirror": _object(
                    {"percent": {"type": "integer", "minimum": 0, "maximum": 100}},
                    description="share of requests shadowed to the canary, responses discarded",
                ),
            },
            required=("weights",),
        ),
        "TrafficDocument": _object(
            {
                "model_name": _ref("ModelName"),
                "weights": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}},
                "prod": _nullable(_ref("Version")),
                "canary": _nullable(_ref("Version")),
                "endpoints": {
                    "type": "object",
                    "additionalProperties": {"type": "array", "items": {"type": "string"}},
                    "description": "version -> `address:port` list",
                },
                "endpoint_counts": {
                    "type": "object",
                    "additionalProperties": {"type": "integer", "minimum": 0},
                    "description": "version -> live endpoints; a version with weight and 0 gets no traffic",
                },
                "match": {
                    "type": "array",
                    "items": _object({"headers": header_map}, required=("headers",)),
                    "description": "requests with these headers always reach the canary (as PUT takes it)",
                },
                "mirror": _object({"percent": {"type": "integer"}}, required=("percent",)),
                "owner": _nullable({"type": "string", "enum": ["operator", ROLLOUT_OWNER]}),
                "xds_version": {"type": "string", "description": "the route version carrying these weights"},
                "acked": {"type": "boolean", "description": "every live Envoy node runs these weights"},
                "nodes_acked": {"type": "integer", "minimum": 0},
                "nodes_total": {"type": "integer", "minimum": 0},
            },
            required=(
                "model_name", "weights", "prod", "canary", "endpoints", "endpoint_counts", "match", "mirror",
                "owner",
                "xds_version", "acked", "nodes_acked", "nodes_total",
            ),
        ),
        "EndpointAnnouncement": _object(
            {
                **endpoint_key,
                "ttl_seconds": {
                    "type": "integer", "minimum": 1, "maximum": MAX_TTL_SECONDS,
                    "default": DEFAULT_TTL_SECONDS,
                },
            },
            required=("model_name", "version", "address", "port"),
        ),
        "EndpointWithdrawal": _object(endpoint_key, required=("model_name", "version", "address", "port")),
        "EndpointAck": _object(
            {**endpoint_key, "ttl_seconds": {"type": "integer"}, "new": {"type": "boolean"}},
            required=("model_name", "version", "address", "port", "ttl_seconds", "new"),
        ),
        "EndpointWithdrawn": _object({"removed": {"const": True}}, required=("removed",)),
        "EndpointList": _object(
            {
                "endpoints": {
                    "type": "array",
                    "items": _object(
                        {**endpoint_key, "expires_at": _ref("Timestamp")},
                        required=("model_name", "version", "address", "port", "expires_at"),
                    ),
                }
            },
            required=("endpoints",),
        ),
    }


# -- rollouts and policies ----------------------------------------------------------------------------


def _rollout_paths() -> Document:
    return {
        "/v1/rollouts": {
            "get": _operation(
                "listRollouts", "Each model's latest rollout",
                role="viewer", tag="rollouts",
                responses={200: _json_response("the rollouts, without decisions", _ref("RolloutList"))},
            ),
            "post": _operation(
                "startRollout", "Start a rollout by hand with a loaded policy",
                role="operator", tag="rollouts",
                body=_json_body(
                    _ref("RolloutStartRequest"),
                    {"default-policy": ("roll out the canary with policy default",
                                        {"model_name": MODEL, "policy": "default"})},
                ),
                responses={201: _json_response("started", _ref("RolloutDocument"))},
                errors={
                    400: "the body is not a JSON object",
                    404: "the model is not registered",
                    409: "no prod or no canary version, or a rollout is already active",
                    422: "a bad model name, or a policy that is not loaded",
                },
            ),
        },
        "/v1/rollouts/{model}": {
            "get": _operation(
                "getRollout", "A model's latest rollout with its decisions and their reasons",
                role="viewer", tag="rollouts", parameters=("model", "limit"),
                responses={200: _json_response("the rollout", _ref("RolloutDocument"))},
                errors={404: "the model has no rollout", 422: "the model name or the limit is not valid"},
            )
        },
        "/v1/rollouts/{model}/history": {
            "get": _operation(
                "rolloutHistory", "Every rollout of a model, newest first",
                role="viewer", tag="rollouts", parameters=("model", "limit", "before"),
                responses={200: _json_response("a page of the model's rollouts", _ref("RolloutHistory"))},
                errors={422: "a bad model name, limit or before"},
            )
        },
        "/v1/rollouts/{model}/history/{rollout_id}": {
            "get": _operation(
                "getPastRollout", "One rollout of a model, current or past, with a page of its decisions",
                role="viewer", tag="rollouts", parameters=("model", "rolloutId", "limit", "before"),
                responses={200: _json_response("the rollout", _ref("PastRollout"))},
                errors={
                    404: "the model has no rollout with this id",
                    422: "a bad model name, rollout id, limit or before",
                },
            )
        },
        "/v1/rollouts/{model}/{command}": {
            "post": _operation(
                "commandRollout", "Pause, resume, promote or abort an active rollout at once",
                role="operator", tag="rollouts", parameters=("model", "command"),
                body=_json_body(
                    _ref("RolloutCommandRequest"),
                    {
                        "with-reason": ("any command, with a reason for the record",
                                        {"reason": "waiting for the nightly batch"}),
                        "promote-full": ("with promote: straight to prod", {"full": True}),
                    },
                    required=False,
                ),
                responses={200: _json_response("the rollout after the command", _ref("RolloutDocument"))},
                errors={
                    400: "the body is not a JSON object",
                    404: "an unknown command, or the model has no active rollout",
                    422: "a bad model name, `full` not a boolean or `reason` not a string",
                },
            )
        },
        "/v1/policies": {
            "get": _operation(
                "listPolicies", "The policies in force and the current file errors",
                role="viewer", tag="rollouts",
                responses={200: _json_response("the policies", _ref("PolicyStatus"))},
            )
        },
    }


def _rollout_schemas() -> Document:
    decision = _object(
        {
            "id": {"type": "integer", "description": "for paging with `before`"},
            "at": _ref("Timestamp"),
            "phase": {"type": "string", "enum": [phase.value for phase in Phase]},
            "step": {"type": "integer", "minimum": 1},
            "canary_weight": {"type": "integer", "minimum": 0, "maximum": 100},
            "reason": {"type": "string", "description": "why, with the values behind it"},
            "verdicts": {"type": "array", "items": _ref("Verdict")},
            "command": _nullable({"type": "string"}),
            "actor": _nullable({"type": "string", "description": "who gave the command"}),
            "acked_at": _nullable({"type": "number", "description": "Unix time"}),
        },
        required=("at", "phase", "step", "canary_weight", "reason"),
    )
    step = {
        "oneOf": [
            _object({"setWeight": {"type": "integer"}}, required=("setWeight",), additionalProperties=False),
            _object(
                {"pause": _object({"duration": {"type": "string", "examples": ["30s"]}})},
                required=("pause",), additionalProperties=False,
            ),
        ]
    }
    return {
        "Verdict": _object(
            {
                "metric": {"type": "string"},
                "verdict": {"type": "string", "enum": [kind.value for kind in VerdictKind]},
                "value": _nullable({"type": "number"}),
                "message": {"type": "string"},
            },
            required=("metric", "verdict", "value", "message"),
        ),
        "Decision": decision,
        "RolloutDocument": _object(
            {
                "id": {"type": "integer", "description": "the rollout's id in the history"},
                "model_name": _ref("ModelName"),
                "policy": {"type": "string"},
                "phase": {"type": "string", "enum": [phase.value for phase in Phase]},
                "finished": {"type": "boolean", "description": "succeeded or rolled back"},
                "stable_version": _ref("Version"),
                "canary_version": _ref("Version"),
                "step": {"type": "integer", "minimum": 1, "description": "1-based; the last when finished"},
                "steps": _nullable({"type": "integer", "description": "null when the policy is gone"}),
                "canary_weight": {"type": "integer", "minimum": 0, "maximum": 100},
                "acknowledged": {"type": "boolean", "description": "every live Envoy node runs the weight"},
                "acknowledged_at": _nullable({"type": "number", "description": "Unix time"}),
                "actual_canary_weight": _nullable(
                    {
                        "type": "integer", "minimum": 0, "maximum": 100,
                        "description": "the canary share every live Envoy node serves (from the route "
                        "version it acknowledged); null when no node polled or nodes differ",
                    }
                ),
                "served_canary_weights": {
                    "type": "array",
                    "items": _object(
                        {
                            "canary_weight": _nullable({"type": "integer", "minimum": 0, "maximum": 100}),
                            "nodes": {"type": "integer", "minimum": 1},
                        },
                        required=("canary_weight", "nodes"),
                    ),
                    "description": "live nodes per served canary share; null: routes this process "
                    "did not publish",
                },
                "failures": {"type": "integer", "minimum": 0},
                "inconclusive_streak": {"type": "integer", "minimum": 0},
                "error_streak": {"type": "integer", "minimum": 0},
                "message": {"type": "string"},
                "started_at": _ref("Timestamp"),
                "started_by": {"type": "string"},
                "decisions": {
                    "type": "array", "items": _ref("Decision"), "description": "the last decisions",
                },
            },
            required=(
                "model_name", "policy", "phase", "stable_version", "canary_version", "step", "steps",
                "canary_weight", "acknowledged", "acknowledged_at", "failures", "inconclusive_streak",
                "error_streak", "message", "started_at", "started_by",
            ),
        ),
        "RolloutHistory": _object(
            {
                "model_name": _ref("ModelName"),
                "rollouts": {
                    "type": "array",
                    "items": {
                        "allOf": [_ref("RolloutDocument")],
                        "type": "object",
                        "properties": {
                            "decision_count": {"type": "integer", "minimum": 0},
                            "last_decision_at": _nullable(_ref("Timestamp")),
                        },
                        "required": ["decision_count", "last_decision_at"],
                    },
                },
                "next_before": _nullable({"type": "integer", "description": "`before` for the next page"}),
            },
            required=("model_name", "rollouts", "next_before"),
        ),
        "PastRollout": {
            "allOf": [_ref("RolloutDocument")],
            "type": "object",
            "properties": {
                "next_before": _nullable(
                    {"type": "integer", "description": "`before` for the next page of decisions"}
                ),
            },
            "required": ["decisions", "next_before"],
        },
        "RolloutList": _object(
            {"rollouts": {"type": "array", "items": _ref("RolloutDocument")}}, required=("rollouts",)
        ),
        "RolloutStartRequest": _object(
            {"model_name": _ref("ModelName"), "policy": {"type": "string"}}, required=("model_name", "policy")
        ),
        "RolloutCommandRequest": _object(
            {
                "full": {"type": "boolean", "default": False, "description": "promote: straight to prod"},
                "reason": {"type": "string"},
            }
        ),
        "Policy": _object(
            {
                "name": {"type": "string"},
                "source": {"type": "string", "description": "file:line"},
                "models": {"type": "array", "items": {"type": "string"}},
                "steps": {"type": "array", "items": step},
                "analysis": {"type": "object", "description": "the `analysis` block, as in the YAML"},
                "match": {"type": "array", "items": {"type": "object"}},
                "mirror": _object({"percent": {"type": "integer"}}),
                "alerts": _object({"rollback": {"type": "boolean"}}),
            },
            required=("name", "models", "steps", "analysis"),
        ),
        "PolicyError": _object(
            {
                "file": {"type": "string"},
                "line": {"type": "integer"},
                "field": {"type": "string"},
                "message": {"type": "string"},
                "text": {"type": "string"},
            },
            required=("file", "line", "field", "message", "text"),
        ),
        "PolicyStatus": _object(
            {
                "path": _nullable({"type": "string", "description": "AEGIS_POLICIES; null when unset"}),
                "ok": {"type": "boolean"},
                "policies": {"type": "array", "items": _ref("Policy")},
                "files": {
                    "type": "array",
                    "items": _object(
                        {
                            "file": {"type": "string"},
                            "policies": {"type": "array", "items": {"type": "string"}},
                            "stale": {"type": "boolean", "description": "an earlier version kept in force"},
                            "errors": {"type": "integer"},
                        },
                        required=("file", "policies", "stale", "errors"),
                    ),
                },
                "errors": {"type": "array", "items": _ref("PolicyError")},
            },
            required=("path", "ok", "policies", "files", "errors"),
        ),
    }


# -- alerts ------------------------------------------------------------------------------------------


def _alert_paths() -> Document:
    webhook = {
        "version": "4",
        "groupKey": '{}:{alertname="AegisCanaryHighErrorRate"}',
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "aegis",
        "groupLabels": {"alertname": "AegisCanaryHighErrorRate"},
        "commonLabels": {"alertname": "AegisCanaryHighErrorRate", "model": MODEL, "version": CANARY},
        "commonAnnotations": {"summary": "20% of requests fail"},
        "externalURL": "http://127.0.0.1:9093",
        "alerts": [
            {
                "status": "firing",
                "labels": {"alertname": "AegisCanaryHighErrorRate", "model": MODEL, "version": CANARY},
                "annotations": {"summary": "20% of requests fail"},
                "startsAt": "2024-05-01T12:00:00Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://127.0.0.1:9090/graph",
                "fingerprint": "c6e2f0d7a1b34e59",
            }
        ],
    }
    return {
        "/v1/alerts/alertmanager": {
            "post": _operation(
                "receiveAlerts", "Alertmanager's webhook (version 4)",
                role="operator", tag="alerts",
                description=(
                    "A firing alert whose labels name a model (`model` or `model_name`, and `version` if "
                    "present) with an active rollout rolls its canary back at once; the rest are recorded. "
                    "Idempotent on (model, fingerprint or labels, startsAt, status): Alertmanager retries. "
                    "The whole webhook is checked before anything is recorded; an alert is recorded once "
                    "its rollback completed, so a retry after a 5xx acts."
                ),
                body=_json_body(
                    _ref("AlertmanagerWebhook"), {"canary-errors": ("a canary alert fires", webhook)}
                ),
                responses={200: _json_response("what was done with each alert", _ref("AlertIntake"))},
                errors={
                    400: "not Alertmanager's webhook (`alerts` is not a list of objects)",
                    422: "a webhook version other than 4, or an alert whose fields are malformed "
                         "(the message names it, e.g. `alerts[1].annotations`); nothing is recorded",
                    503: "a rollback an alert asked for did not complete; nothing is recorded, retry",
                },
            )
        }
    }


def _alert_schemas() -> Document:
    labels = {"type": "object", "additionalProperties": {"type": "string"}}
    return {
        "Alert": _object(
            {
                "status": {"type": "string", "enum": ["firing", "resolved"]},
                "labels": {**labels, "description": "`model` or `model_name` (and `version`): the canary"},
                "annotations": labels,
                "startsAt": _ref("Timestamp"),
                "endsAt": _ref("Timestamp"),
                "generatorURL": {"type": "string"},
                "fingerprint": {"type": "string"},
            },
            required=("status", "labels"),
        ),
        "AlertmanagerWebhook": _object(
            {
                "version": {"const": "4"},
                "groupKey": {"type": "string"},
                "truncatedAlerts": {"type": "integer"},
                "status": {"type": "string", "enum": ["firing", "resolved"]},
                "receiver": {"type": "string"},
                "groupLabels": labels,
                "commonLabels": labels,
                "commonAnnotations": labels,
                "externalURL": {"type": "string"},
                "alerts": {"type": "array", "items": _ref("Alert")},
            },
            required=("alerts",),
        ),
        "AlertIntake": _object(
            {
                "received": {"type": "integer", "minimum": 0},
                "outcomes": {
                    "type": "array",
                    "items": _object(
                        {
                            "alertname": {"type": "string"},
                            "model": _nullable({"type": "string"}),
                            "status": {"type": "string"},
                            "action": {"type": "string", "enum": list(ALERT_ACTIONS)},
                        },
                        required=("alertname", "model", "status", "action"),
                    ),
                },
            },
            required=("received", "outcomes"),
        ),
    }


# -- xDS ---------------------------------------------------------------------------------------------


def _xds_paths() -> Document:
    first_poll = {
        "version_info": "",
        "node": {"id": "aegis-envoy-1", "cluster": "model-gateway"},
        "resource_names": [],
        "type_url": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
    }
    return {
        "/v3/discovery:{type}": {
            "post": _operation(
                "discover", "Envoy's REST-JSON xDS poll (LDS, CDS, RDS, EDS)",
                role="none", tag="xds", parameters=("xdsType",),
                description=(
                    "No API token. With AEGIS_XDS_NODE_TOKENS set, a node token in 'Authorization: "
                    "Bearer' (added by envoy/envoy.yaml from AEGIS_XDS_NODE_TOKEN) valid for the poll's "
                    "node id; without it 401/403 and the poll is not recorded. With AEGIS_XDS_LISTEN set, "
                    "served only on that listener. A poll that already has the current version is held "
                    "open (AEGIS_XDS_HOLD_SECONDS) until the config changes, else answered 304. A "
                    "node that polls again on an older version rejected the newer one; a version never "
                    "served to the node is ignored."
                ),
                body=_json_body(
                    _ref("DiscoveryRequest"), {"first-cds-poll": ("Envoy's first CDS poll", first_poll)}
                ),
                responses={
                    200: _json_response("a newer config", _ref("DiscoveryResponse")),
                    304: {"description": "the node already runs the current version (after the hold)"},
                },
                errors={
                    # 401/403 with AEGIS_XDS_NODE_TOKENS: a node token, not an API role (see description).
                    400: "not a discovery request (not JSON; too long or bad node, resource_names, version)",
                    404: "an unknown resource type, or discovery is on AEGIS_XDS_LISTEN",
                },
            )
        },
        "/v1/xds/nodes": {
            "get": _operation(
                "listXdsNodes", "Each Envoy node: live or not, acknowledged, served and rejected versions",
                role="viewer", tag="xds",
                responses={200: _json_response("the nodes", _ref("XdsNodes"))},
            )
        },
    }


def _xds_schemas() -> Document:
    type_names = ["listener", "cluster", "route", "endpoint"]
    by_type = {"type": "object", "propertyNames": {"enum": type_names}}
    return {
        "DiscoveryRequest": _object(
            {
                "version_info": {"type": "string", "description": "the version the node runs; empty first"},
                "node": _object(
                    {"id": {"type": "string"}, "cluster": {"type": "string"}},
                    description="Envoy's node description (other fields are ignored)",
                ),
                "resource_names": {"type": "array", "items": {"type": "string"}},
                "type_url": {"type": "string"},
                "response_nonce": {"type": "string"},
                "error_detail": {"type": "object"},
            }
        ),
        "DiscoveryResponse": _object(
            {
                "version_info": {"type": "string", "description": "SHA-256 of the canonical config"},
                "type_url": {"type": "string"},
                "resources": {
                    "type": "array",
                    "items": _object({"@type": {"type": "string"}}, required=("@type",)),
                },
                "nonce": {"type": "string"},
            },
            required=("version_info", "type_url", "resources", "nonce"),
        ),
        "XdsNode": _object(
            {
                "node_id": {"type": "string"},
                "cluster": {"type": "string"},
                "live": {"type": "boolean", "description": "polls and must acknowledge changes"},
                "authenticated": {"type": "boolean", "description": "its last poll had a valid node token"},
                "first_seen": {"type": "number", "description": "Unix time"},
                "last_seen": {"type": "number", "description": "Unix time"},
                "types": {
                    **by_type,
                    "additionalProperties": _object(
                        {
                            "acked_version": {"type": "string"},
                            "served_version": {"type": "string"},
                            "rejected_versions": {"type": "array", "items": {"type": "string"}},
                        },
                        required=("acked_version", "served_version", "rejected_versions"),
                    ),
                },
            },
            required=("node_id", "cluster", "live", "authenticated", "first_seen", "last_seen", "types"),
        ),
        "XdsNodes": _object(
            {
                "nodes": {"type": "array", "items": _ref("XdsNode")},
                "current": {**by_type, "additionalProperties": {"type": "string"}},
                "last_publish_error": {"type": "string", "description": "empty when the last publish worked"},
                "last_publish_error_at": _nullable({"type": "number", "description": "Unix time"}),
            },
            required=("nodes", "current", "last_publish_error", "last_publish_error_at"),
        ),
    }


# -- process ------------------------------------------------------------------------------------------


def _process_paths() -> Document:
    return {
        "/healthz": {
            "get": _operation(
                "health", "The process is up", role="none", tag="process",
                responses={
                    200: _json_response(
                        "up", _object({"status": {"const": "ok"}}, required=("status",))
                    )
                },
            )
        },
        "/metrics": {
            "get": _operation(
                "metrics", "Prometheus metrics (registry, rollouts, analysis, xDS, process)",
                role="none", tag="process",
                responses={
                    200: {
                        "description": "the Prometheus text exposition format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            )
        },
        "/v1/openapi.json": {
            "get": _operation(
                "openapi", "This document", role="none", tag="process",
                responses={200: _json_response("the OpenAPI 3.1 document", {"type": "object"})},
            )
        },
    }
