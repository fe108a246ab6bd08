"""The typed HTTP boundary: one table of operations that routing, parsing, answers and OpenAPI share.

Each `Operation` carries its method, path, least role, request and query models,
the response model per status and its documentation. The kit checks the token,
parses the path, query and body through the models (a 422 naming the field, or a
400 for a body that is not JSON), calls the handler with the parsed `Call`, and
serialises what it returns through the documented response model.
`registry.openapi` turns the same table into the OpenAPI document.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from aiohttp import web
from pydantic import BaseModel, TypeAdapter, ValidationError

from registry.auth import Principal, Role
from registry.boundary import JSON
from registry.errors import InvalidInput, MalformedRequest, NotFound
from registry.http import MAX_JSON_BODY_BYTES, authorize, read_body
from registry.strict_json import MAX_DEPTH, parse_json

# At most this many field errors are listed in one message, each cut to this length.
MAX_LISTED_ERRORS = 5
MAX_ERROR_CHARS = 300

BodyT = TypeVar("BodyT")
QueryT = TypeVar("QueryT")


@dataclass(frozen=True)
class PathParam:
    """A path segment with its type: validated like a body field, documented once."""

    name: str
    type: Any
    description: str = ""
    example: Any = None
    enum: tuple[str, ...] = ()

    def parse(self, raw: str) -> Any:
        if self.enum and raw not in self.enum:
            # A path outside the enum names no resource: 404, as for any unknown path.
            raise NotFound(f"{self.name} {raw[:64]!r} is unknown: use one of {', '.join(self.enum)}")
        try:
            return _adapter(self.type).validate_python(raw)
        except ValidationError as exc:
            raise InvalidInput(describe(exc, what=f"the path's {self.name}")) from None

    def schema(self) -> dict[str, Any]:
        if self.enum:
            return {"type": "string", "enum": list(self.enum)}
        return dict(_adapter(self.type).json_schema())


@dataclass(frozen=True)
class Reply:
    """One documented answer: a JSON model, or another media type with its schema."""

    description: str
    model: type[BaseModel] | None = None
    media_type: str = JSON
    schema: Mapping[str, Any] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Answer:
    """A handler's answer with a status other than 200."""

    status: int
    body: BaseModel


@dataclass(frozen=True)
class Call(Generic[BodyT, QueryT]):
    """What a handler receives: the request, who sent it, and the parsed inputs."""

    request: web.Request
    principal: Principal | None
    body: BodyT
    query: QueryT
    path: Mapping[str, Any]

    @property
    def app(self) -> web.Application:
        return self.request.app

    @property
    def actor(self) -> str:
        return self.principal.name if self.principal is not None else "anonymous"


Handler = Callable[[Call[Any, Any]], Awaitable[BaseModel | Answer | web.StreamResponse]]


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    operation_id: str
    summary: str
    tag: str
    role: Role | None  # None: no token (Envoy, probes, this document)
    handler: Handler
    responses: Mapping[int, Reply]
    errors: Mapping[int, str] = field(default_factory=dict)
    params: Sequence[PathParam] = ()
    body: type[BaseModel] | None = None
    body_required: bool = True
    body_media: str = JSON
    # The handler reads the body itself: multipart uploads stream, xDS polls count their errors.
    reads_body: bool = False
    examples: Mapping[str, tuple[str, Any]] = field(default_factory=dict)
    query: type[BaseModel] | None = None
    description: str | None = None
    # A token or another credential (a signed URL): the handler checks which.
    self_authorizing: bool = False
    # Past this a JSON body is a 413 (Alertmanager's batches need more than the default).
    max_body_bytes: int = MAX_JSON_BODY_BYTES


def add_operations(app: web.Application, operations: Sequence[Operation]) -> None:
    for operation in operations:
        if operation.method.lower() == "get":
            # HEAD answers like GET without the body, as aiohttp's add_get (and HTTP) has it.
            app.router.add_get(operation.path, _bind(operation))
        else:
            app.router.add_route(operation.method.upper(), operation.path, _bind(operation))


def _bind(operation: Operation) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        principal = None
        if operation.role is not None and not operation.self_authorizing:
            principal = authorize(request, operation.role)
        path = {param.name: param.parse(request.match_info[param.name]) for param in operation.params}
        query = None
        if operation.query is not None:
            query = parse_model(operation.query, dict(request.query), what="the query")
        body = None
        if operation.body is not None and not operation.reads_body:
            body = await _read_body(
                request, operation.body, required=operation.body_required, limit=operation.max_body_bytes
            )
        result = await operation.handler(Call(request, principal, body, query, path))
        if isinstance(result, web.StreamResponse):
            return result
        answer = result if isinstance(result, Answer) else Answer(200, result)
        return respond(operation, answer)

    return handle


def respond(operation: Operation, answer: Answer) -> web.Response:
    """Serialise through the documented model: an undocumented answer is a bug, not a reply."""
    reply = operation.responses.get(answer.status)
    if reply is None or reply.model is not type(answer.body):
        raise TypeError(
            f"{operation.operation_id} answered {answer.status} with {type(answer.body).__name__}, "
            "which its operation does not document"
        )
    return web.Response(
        body=answer.body.model_dump_json(by_alias=True), status=answer.status, content_type=JSON
    )


async def _read_body(
    request: web.Request, model: type[BaseModel], *, required: bool, limit: int
) -> BaseModel:
    raw = await read_body(request, limit=limit)
    if not raw.strip():
        if required:
            raise MalformedRequest("the request needs a JSON object body")
        raw = b"{}"
    return parse_json_model(model, raw, what="the request body")


ModelT = TypeVar("ModelT", bound=BaseModel)


def parse_json_model(model: type[ModelT], raw: bytes, *, what: str) -> ModelT:
    """Raw JSON through a model: `registry.strict_json` refuses what is not JSON, nests too
    deep or holds a number no field can take (400); the model refuses the rest (422)."""
    document = parse_json(raw, what=what, max_depth=getattr(model, "json_max_depth", MAX_DEPTH))
    if not isinstance(document, dict):
        raise MalformedRequest(f"{what} must be a JSON object")
    return parse_model(model, document, what=what)


def parse_model(model: type[ModelT], values: Mapping[str, Any], *, what: str) -> ModelT:
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise InvalidInput(describe(exc, what=what)) from None


def describe(exc: ValidationError, *, what: str) -> str:
    """`the request body was not accepted and nothing was recorded: port: Input should be less
    than or equal to 65535`: validation runs before anything is done, so nothing was."""
    problems = []
    for error in exc.errors(include_url=False)[:MAX_LISTED_ERRORS]:
        where = _field_path(error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "missing":
            message = "is required"
        elif error["type"] == "extra_forbidden":
            message = "is not a field of this request; check its spelling"
        text = f"{where}: {message}" if where else message
        problems.append(text[:MAX_ERROR_CHARS])
    more = len(exc.errors()) - MAX_LISTED_ERRORS
    suffix = f" (and {more} more)" if more > 0 else ""
    return f"{what} was not accepted and nothing was recorded: " + "; ".join(problems) + suffix


def _field_path(location: tuple[int | str, ...]) -> str:
    """("alerts", 1, "annotations") -> "alerts[1].annotations"."""
    path = ""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


_ADAPTERS: dict[int, TypeAdapter[Any]] = {}


def _adapter(annotation: Any) -> TypeAdapter[Any]:
    adapter = _ADAPTERS.get(id(annotation))
    if adapter is None:
        adapter = _ADAPTERS[id(annotation)] = TypeAdapter(annotation)
    return adapter
