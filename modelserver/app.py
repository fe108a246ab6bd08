"""The model server's HTTP surface: KServe v1 predict, v2 infer, health, metrics and the fault switch.

Handlers translate HTTP to the pure parts (`predict`, `faults`) and record every
predict/infer answer, injected failures included, in the server's metrics.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from modelserver.artifact import VerifiedArtifact
from modelserver.faults import Faults, FaultValueError, injects_error, updated_faults
from modelserver.metrics import ModelMetrics
from modelserver.predict import BadPredictionRequest, infer_v2, predict_v1
from modelserver.settings import ADMIN_TOKEN_ENV
from registry.errors import Forbidden, InvalidInput, MalformedRequest, NotFound, RegistryError, Unauthorized
from registry.http import error_response, json_errors, read_json

log = logging.getLogger(__name__)

VERSION_HEADER = "x-model-version"

Model = Callable[[str, dict[str, Any]], list[float]]
Render = Callable[[list[float], dict[str, Any]], dict[str, Any]]


@dataclass
class ServingState:
    """What the handlers share; `faults` is the only field that changes after start."""

    artifact: VerifiedArtifact
    metrics: ModelMetrics
    faults: Faults
    # SHA-256 of the admin token: equal lengths for compare_digest, no secret in a repr.
    admin_token_digest: bytes | None = field(repr=False)
    # Uniform draws in [0, 1) for the error-rate decision; a test may pass its own.
    draw: Callable[[], float] = random.random


STATE = web.AppKey("model_server_state", ServingState)


def create_app(
    artifact: VerifiedArtifact,
    *,
    faults: Faults,
    admin_token: str | None,
    metrics: ModelMetrics | None = None,
    draw: Callable[[], float] = random.random,
) -> web.Application:
    """The app for one verified artifact; build it only after verification succeeded."""
    metrics = metrics or ModelMetrics(artifact.model_name, artifact.version)
    metrics.set_quality(faults.quality)
    app = web.Application(middlewares=[json_errors])
    app[STATE] = ServingState(
        artifact, metrics, faults,
        hashlib.sha256(admin_token.encode()).digest() if admin_token else None, draw,
    )
    app.on_response_prepare.append(_add_version_header)
    app.router.add_post("/v1/models/{model}:predict", predict)
    app.router.add_post("/v2/models/{model}/infer", infer)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_endpoint)
    app.router.add_get("/admin/faults", get_faults)
    app.router.add_post("/admin/faults", set_faults)
    return app


async def _add_version_header(request: web.Request, response: web.StreamResponse) -> None:
    # On every answer, errors included: a client behind Envoy sees which arm served it.
    response.headers[VERSION_HEADER] = request.app[STATE].artifact.version


async def predict(request: web.Request) -> web.Response:
    return await _answer(request, predict_v1, lambda scores, _body: {"predictions": scores})


async def infer(request: web.Request) -> web.Response:
    def render(scores: list[float], body: dict[str, Any]) -> dict[str, Any]:
        outputs = [{"name": "score", "datatype": "FP64", "shape": [len(scores)], "data": scores}]
        request_id = body.get("id")
        return {"outputs": outputs, **({"id": request_id} if isinstance(request_id, str) else {})}

    return await _answer(request, infer_v2, render)


async def _answer(request: web.Request, model: Model, render: Render) -> web.Response:
    """Run one prediction and count it with the status the client got, whatever it was."""
    state = request.app[STATE]
    started = time.perf_counter()
    status = 500
    try:
        response = await _predict(request, state, model, render)
        status = response.status
        return response
    except RegistryError as exc:
        status = exc.status
        raise
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        state.metrics.observe_request(status, time.perf_counter() - started)


async def _predict(request: web.Request, state: ServingState, model: Model, render: Render) -> web.Response:
    artifact = state.artifact
    requested = request.match_info["model"]
    if requested != artifact.model_name:
        raise NotFound(f"this server serves model {artifact.model_name!r}, not {requested!r}")
    body = await read_json(request)
    try:
        scores = model(artifact.checksum, body)
    except BadPredictionRequest as exc:
        raise MalformedRequest(str(exc)) from None
    # Faults apply only to requests that would have succeeded, so a 400 stays a 400.
    faults = state.faults
    if faults.latency_ms > 0:
        await asyncio.sleep(faults.latency_ms / 1000)
    if injects_error(faults, state.draw()):
        return error_response(
            500, "injected_fault", f"injected failure (error_rate {faults.error_rate:g} set by /admin/faults)"
        )
    return web.json_response(
        {"model_name": artifact.model_name, "model_version": artifact.version, **render(scores, body)}
    )


async def healthz(request: web.Request) -> web.Response:
    artifact = request.app[STATE].artifact
    return web.json_response(
        {
            "status": "ok", "model": artifact.model_name, "version": artifact.version,
            "checksum": artifact.checksum,
        }
    )


async def metrics_endpoint(request: web.Request) -> web.Response:
    body = generate_latest(request.app[STATE].metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def get_faults(request: web.Request) -> web.Response:
    state = request.app[STATE]
    _authorize_admin(request, state)
    return web.json_response(state.faults.as_document())


async def set_faults(request: web.Request) -> web.Response:
    state = request.app[STATE]
    _authorize_admin(request, state)
    try:
        state.faults = updated_faults(state.faults, await read_json(request))
    except FaultValueError as exc:
        raise InvalidInput(str(exc)) from None
    state.metrics.set_quality(state.faults.quality)
    log.info("faults of %s %s are now %s", state.artifact.model_name, state.artifact.version,
             state.faults.as_document())
    return web.json_response(state.faults.as_document())


def _authorize_admin(request: web.Request, state: ServingState) -> None:
    if state.admin_token_digest is None:
        raise Forbidden(f"faults cannot be changed at run time: set {ADMIN_TOKEN_ENV} and restart the server")
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized(f"send 'Authorization: Bearer <token>' with the {ADMIN_TOKEN_ENV} token")
    presented = hashlib.sha256(token.strip().encode()).digest()
    if not hmac.compare_digest(presented, state.admin_token_digest):
        raise Unauthorized(f"the token is not the {ADMIN_TOKEN_ENV} token")
