"""OpenAPI 3.1 generated from the operation table and the models' JSON Schemas (pure).

Nothing here is written twice: paths, roles (`x-aegis-role`), parameters, bodies,
examples and answers come from `registry.routes.Operation`s, and every schema
from a pydantic model, all under one `components/schemas` namespace.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from registry.auth import Role
from registry.boundary import JSON, Error
from registry.routes import Operation, PathParam, Reply

Document = dict[str, Any]
REF_TEMPLATE = "#/components/schemas/{model}"
ROLES = ("none", *(role.label for role in Role))


def role_label(role: Role | None) -> str:
    return "none" if role is None else role.label


def openapi_document(
    operations: Sequence[Operation], *, info: Document, tags: Sequence[Document]
) -> Document:
    schemas, refs = _schemas(operations)
    parameters: dict[str, Document] = {}
    paths: dict[str, Document] = {}
    for operation in operations:
        for param in operation.params:
            parameters[param.name] = _parameter(param)
        paths.setdefault(operation.path, {})[operation.method.lower()] = _operation(operation, refs)
    return {
        "openapi": "3.1.0",
        "info": info,
        "tags": list(tags),
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A token from AEGIS_API_TOKENS (`role:token` or `role:name:token`).",
                }
            },
            "parameters": parameters,
            "schemas": schemas,
        },
    }


def _schemas(operations: Sequence[Operation]) -> tuple[Document, dict[tuple[Any, str], Document]]:
    """One JSON Schema per model in one namespace; requests in validation mode, answers in
    serialisation mode (pydantic names the two apart only where they differ)."""
    wanted: dict[tuple[type[BaseModel], Literal["validation", "serialization"]], None] = {
        (Error, "serialization"): None
    }
    for operation in operations:
        if operation.body is not None:
            wanted[(operation.body, "validation")] = None
        for reply in operation.responses.values():
            if reply.model is not None:
                wanted[(reply.model, "serialization")] = None
    refs, top = models_json_schema(list(wanted), ref_template=REF_TEMPLATE)
    return dict(top.get("$defs", {})), {key: dict(value) for key, value in refs.items()}


def _parameter(param: PathParam) -> Document:
    document: Document = {"name": param.name, "in": "path", "required": True, "schema": param.schema()}
    if param.description:
        document["description"] = param.description
    if param.example is not None:
        document["example"] = param.example
    return document


def _operation(operation: Operation, refs: Mapping[tuple[Any, str], Document]) -> Document:
    """One operation; the 401 and 403 its role implies are added here.

    Every token is at least a viewer, so a viewer operation answers 401 but never 403.
    """
    role = role_label(operation.role)
    why = dict(operation.errors)
    if operation.role is not None:
        why.setdefault(401, "no token, or a token that is not valid")
    if operation.role is not None and operation.role > Role.VIEWER:
        why.setdefault(403, f"the token's role is below {role}")
    if operation.body is not None or operation.query is not None or operation.params:
        why.setdefault(422, "a path, query or body field that is not valid; the message names it")
    if operation.body is not None and operation.body_media == JSON:
        why.setdefault(400, "the body is not JSON")
    security: list[Document] = [] if operation.role is None else [{"bearerAuth": []}]
    if operation.self_authorizing:
        security = [{"bearerAuth": []}, {}]
    document: Document = {
        "operationId": operation.operation_id,
        "summary": operation.summary,
        "tags": [operation.tag],
        "x-aegis-role": role,
        "security": security,
    }
    if operation.description:
        document["description"] = operation.description
    parameters = [{"$ref": f"#/components/parameters/{param.name}"} for param in operation.params]
    if operation.query is not None:
        parameters += _query_parameters(operation.query)
    if parameters:
        document["parameters"] = parameters
    if operation.body is not None:
        document["requestBody"] = _request_body(operation, refs[(operation.body, "validation")])
    error_ref = refs[(Error, "serialization")]
    document["responses"] = {
        **{str(status): _response(reply, refs) for status, reply in sorted(operation.responses.items())},
        **{
            str(status): {"description": text, "content": {JSON: {"schema": error_ref}}}
            for status, text in sorted(why.items())
        },
    }
    return document


def _query_parameters(model: type[BaseModel]) -> list[Document]:
    schema = model.model_json_schema()
    required = set(schema.get("required", []))
    parameters = []
    for name, prop in schema.get("properties", {}).items():
        prop = dict(prop)
        description = prop.pop("description", "")
        prop.pop("title", None)
        parameter: Document = {"name": name, "in": "query", "required": name in required, "schema": prop}
        if description:
            parameter["description"] = description
        parameters.append(parameter)
    return parameters


def _request_body(operation: Operation, schema: Document) -> Document:
    media: Document = {"schema": schema}
    if operation.body_media != JSON:
        media["encoding"] = {"metadata": {"contentType": JSON},
                             "artifact": {"contentType": "application/octet-stream"}}
    if operation.examples:
        media["examples"] = {
            name: {"summary": summary, "value": value}
            for name, (summary, value) in operation.examples.items()
        }
    return {"required": operation.body_required, "content": {operation.body_media: media}}


def _response(reply: Reply, refs: Mapping[tuple[Any, str], Document]) -> Document:
    document: Document = {"description": reply.description}
    if reply.headers:
        document["headers"] = {
            name: {"schema": {"type": "string"}, "description": text} for name, text in reply.headers.items()
        }
    if reply.model is not None:
        document["content"] = {reply.media_type: {"schema": refs[(reply.model, "serialization")]}}
    elif reply.schema is not None:
        document["content"] = {reply.media_type: {"schema": dict(reply.schema)}}
    return document
