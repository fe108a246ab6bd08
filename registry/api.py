"""The registry's HTTP API (DESIGN section 3): handlers that translate HTTP to service calls."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from aiohttp import BodyPartReader, MultipartReader, web
from aiohttp.http import HttpProcessingError

from registry.auth import Role
from registry.blobs import CHUNK_BYTES, BlobStore, StagedBlob
from registry.domain import (
    Stage,
    StageChange,
    check_bounded_int,
    check_model_name,
    check_version,
    parse_stage,
)
from registry.download_urls import check_url_signature, url_signature
from registry.errors import InvalidInput, MalformedRequest, NotFound, PayloadTooLarge
from registry.http import authorize, body_idle_timeout, parse_json_object, read_json
from registry.metrics import RegistryMetrics
from registry.service import Registration, RegistryService, StageChangeListener

MAX_METADATA_BYTES = 1 << 20
# What aiohttp's multipart reader raises on a body that is not the multipart it announces.
MULTIPART_ERRORS = (ValueError, HttpProcessingError)
MAX_URL_TTL_SECONDS = 7 * 24 * 3600


@dataclass(frozen=True)
class RegistryApiConfig:
    max_artifact_bytes: int
    download_url_key: bytes = field(repr=False)
    download_url_ttl_seconds: int = 900
    # Signed URLs are built on this origin (AEGIS_PUBLIC_URL), never on the Host header.
    public_url: str = "http://127.0.0.1:8080"


# What other packages add to a promotion's answer (the control plane: whether a rollout
# started, and if not, why), as extra top-level fields of the version document.
PromotionReport = Callable[[str, str, Stage], Awaitable[dict[str, Any]]]

SERVICE = web.AppKey("registry_service", RegistryService)
PROMOTION_REPORTS: web.AppKey[list[PromotionReport]] = web.AppKey("promotion_reports")
BLOBS = web.AppKey("registry_blobs", BlobStore)
CONFIG = web.AppKey("registry_api_config", RegistryApiConfig)
METRICS = web.AppKey("registry_metrics", RegistryMetrics)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/registry/register", register)
    app.router.add_get("/v1/registry/models", list_models)
    app.router.add_get("/v1/registry/{model}", get_model)
    app.router.add_post("/v1/registry/{model}/rollback", rollback)
    app.router.add_get("/v1/registry/{model}/{version}", get_version)
    app.router.add_post("/v1/registry/{model}/{version}/promote", promote)
    app.router.add_get("/v1/registry/{model}/{version}/validate", validate)
    app.router.add_get("/v1/registry/{model}/{version}/artifact", download)
    app.router.add_post("/v1/registry/{model}/{version}/artifact-url", artifact_url)


def record_stage_changes(metrics: RegistryMetrics) -> StageChangeListener:
    async def listener(changes: list[StageChange]) -> None:
        for change in changes:
            metrics.promotions.labels(change.to_stage.value, change.action.value).inc()

    return listener


async def register(request: web.Request) -> web.Response:
    principal = authorize(request, Role.ADMIN)
    config = request.app[CONFIG]
    declared = request.content_length
    if declared is not None and declared > config.max_artifact_bytes + MAX_METADATA_BYTES:
        raise PayloadTooLarge(
            f"the upload ({declared} bytes) exceeds the artifact limit of "
            f"{config.max_artifact_bytes} bytes (AEGIS_MAX_ARTIFACT_BYTES)"
        )
    claim, staged = await _read_upload(request)
    result = await request.app[SERVICE].register(claim, staged, actor=principal.name)
    request.app[METRICS].registrations.labels(
        "created" if result.created else "already_registered"
    ).inc()
    return web.json_response(result.version.as_document(), status=201 if result.created else 200)


async def _read_upload(request: web.Request) -> tuple[Registration, StagedBlob]:
    """Parse the multipart parts in either order; a staged artifact is discarded on any error."""
    if not request.content_type.startswith("multipart/"):
        raise MalformedRequest(
            "send multipart/form-data with a 'metadata' part (JSON) and an 'artifact' part"
        )
    try:
        reader = await request.multipart()
    except ValueError as exc:  # no boundary, or one aiohttp cannot use
        raise MalformedRequest(f"the multipart body cannot be read: {exc}") from None
    blobs = request.app[BLOBS]
    claim: Registration | None = None
    staged: StagedBlob | None = None
    try:
        while (part := await _next_part(request, reader)) is not None:
            if part.name == "metadata" and claim is None:
                raw = await _read_limited(request, part, MAX_METADATA_BYTES, what="the metadata part")
                claim = Registration.from_document(parse_json_object(raw, what="the metadata part"))
            elif part.name == "artifact" and staged is None:
                staged = await blobs.stage(
                    _part_chunks(request, part), max_bytes=request.app[CONFIG].max_artifact_bytes
                )
            else:
                raise MalformedRequest(_unexpected_part(part.name))
        if claim is None or staged is None:
            missing = "metadata" if claim is None else "artifact"
            raise MalformedRequest(f"the upload has no {missing!r} part")
    except BaseException:
        if staged is not None:
            await blobs.discard(staged)
        raise
    return claim, staged


def _unexpected_part(name: str | None) -> str:
    expected = "send one 'metadata' part (JSON) and one 'artifact' part"
    if name in ("metadata", "artifact"):
        return f"the upload has a second {name!r} part; {expected}"
    if name is None:
        return f"a part has no name (Content-Disposition: form-data; name=...); {expected}"
    return f"unexpected part {name!r}; {expected}"


async def _next_part(request: web.Request, reader: MultipartReader) -> BodyPartReader | None:
    try:
        async with body_idle_timeout(request):
            part = await reader.next()
    except MULTIPART_ERRORS as exc:  # a wrong boundary, bad part headers, a body cut short
        raise MalformedRequest(_malformed(exc)) from None
    if part is not None and not isinstance(part, BodyPartReader):
        raise MalformedRequest("nested multipart bodies are not supported")
    return part


async def _read_chunk(request: web.Request, part: BodyPartReader, size: int) -> bytes:
    try:
        async with body_idle_timeout(request):
            return await part.read_chunk(size)
    except MULTIPART_ERRORS as exc:
        raise MalformedRequest(_malformed(exc)) from None


def _malformed(exc: Exception) -> str:
    if isinstance(exc, HttpProcessingError):
        return f"the multipart body has a malformed part header: {exc.message}"
    if "EOF" in str(exc):
        return "the multipart body ends before its closing boundary; send the whole body"
    return f"the multipart body is malformed: {exc}"


async def _part_chunks(request: web.Request, part: BodyPartReader) -> AsyncIterator[bytes]:
    # read_chunk defaults to 8 KiB; 1 MiB keeps hashing close to the machine's limit.
    while chunk := await _read_chunk(request, part, CHUNK_BYTES):
        yield chunk


async def _read_limited(request: web.Request, part: BodyPartReader, limit: int, *, what: str) -> bytes:
    collected = bytearray()
    while chunk := await _read_chunk(request, part, 65536):
        collected.extend(chunk)
        if len(collected) > limit:
            raise PayloadTooLarge(f"{what} is larger than {limit} bytes")
    return bytes(collected)


async def list_models(request: web.Request) -> web.Response:
    authorize(request, Role.VIEWER)
    models = await request.app[SERVICE].store.list_models()
    return web.json_response(
        {
            "models": [
                {
                    "model_name": name,
                    "created_at": created_at.isoformat(),
                    "versions": len(stages),
                    "stages": _stage_pointers(stages),
                }
                for name, created_at, stages in models
            ]
        }
    )


def _stage_pointers(stages: list[tuple[str, str]]) -> dict[str, Any]:
    pointers: dict[str, Any] = {Stage.PROD.value: None, Stage.CANARY.value: None}
    for version, stage in stages:
        if stage in pointers:
            pointers[stage] = version
    return pointers


async def get_model(request: web.Request) -> web.Response:
    authorize(request, Role.VIEWER)
    model_name = request.match_info["model"]
    versions = await request.app[SERVICE].list_versions(model_name)
    return web.json_response(
        {
            "model_name": model_name,
            "stages": _stage_pointers([(v.version, v.stage.value) for v in versions]),
            "versions": [v.as_document() for v in versions],
        }
    )


async def get_version(request: web.Request) -> web.Response:
    authorize(request, Role.VIEWER)
    found = await request.app[SERVICE].get_version(
        request.match_info["model"], request.match_info["version"]
    )
    return web.json_response(found.as_document())


async def promote(request: web.Request) -> web.Response:
    principal = authorize(request, Role.OPERATOR)
    body = await read_json(request)
    stage = parse_stage(body.get("stage"))
    reason = _reason(body, default=f"promoted to {stage.value}")
    promoted = await request.app[SERVICE].promote(
        request.match_info["model"], request.match_info["version"], stage,
        actor=principal.name, reason=reason, force=_force(body),
    )
    document = promoted.as_document()
    for report in request.app.get(PROMOTION_REPORTS, []):
        document.update(await report(promoted.model_name, promoted.version, stage))
    return web.json_response(document)


async def rollback(request: web.Request) -> web.Response:
    principal = authorize(request, Role.OPERATOR)
    body = await read_json(request, required=False)
    changes = await request.app[SERVICE].rollback(
        request.match_info["model"], actor=principal.name,
        reason=_reason(body, default="rolled back by an operator"), force=_force(body),
    )
    return web.json_response(
        {
            "model_name": request.match_info["model"],
            "changes": [
                {"version": c.version, "from_stage": c.from_stage.value, "to_stage": c.to_stage.value}
                for c in changes
            ],
        }
    )


def _force(body: dict[str, Any]) -> bool:
    force = body.get("force", False)
    if not isinstance(force, bool):
        raise InvalidInput('"force" must be true or false')
    return force


def _reason(body: dict[str, Any], *, default: str) -> str:
    reason = body.get("reason", default)
    if not isinstance(reason, str) or len(reason) > 1000:
        raise InvalidInput("reason must be a string of at most 1000 characters")
    return reason or default


async def validate(request: web.Request) -> web.Response:
    authorize(request, Role.VIEWER)
    report = await request.app[SERVICE].validate(
        request.match_info["model"], request.match_info["version"]
    )
    return web.json_response(report.as_document())


async def download(request: web.Request) -> web.StreamResponse:
    model_name = check_model_name(request.match_info["model"])
    version = check_version(request.match_info["version"])
    if "sig" in request.query:
        check_url_signature(
            request.app[CONFIG].download_url_key, model_name, version,
            expires=request.query.get("expires", ""), signature=request.query["sig"],
            now=time.time(),
        )
    else:
        authorize(request, Role.VIEWER)
    found = await request.app[SERVICE].get_version(model_name, version)
    blobs = request.app[BLOBS]
    if not blobs.exists(found.checksum):
        raise NotFound(
            f"the artifact of {model_name} {version} is missing from the blob store; "
            "run GET …/validate and re-register it"
        )
    return web.FileResponse(
        blobs.path_for(found.checksum),
        headers={
            "Content-Type": "application/octet-stream",
            "Content-Disposition": f'attachment; filename="{model_name}-{version}.bin"',
            "X-Aegis-Checksum-Sha256": found.checksum,
            "X-Aegis-Signature": found.signature,
            "X-Aegis-Key-Id": found.key_id,
        },
    )


async def artifact_url(request: web.Request) -> web.Response:
    authorize(request, Role.VIEWER)
    config = request.app[CONFIG]
    body = await read_json(request, required=False)
    ttl = check_bounded_int(
        body.get("ttl_seconds", config.download_url_ttl_seconds),
        label="ttl_seconds", low=1, high=MAX_URL_TTL_SECONDS,
    )
    found = await request.app[SERVICE].get_version(
        request.match_info["model"], request.match_info["version"]
    )
    expires = int(time.time()) + ttl
    signature = url_signature(config.download_url_key, found.model_name, found.version, expires)
    path = f"/v1/registry/{found.model_name}/{found.version}/artifact"
    # Names are checked to URL-safe characters, so the path needs no quoting.
    url = f"{config.public_url}{path}?{urlencode({'expires': expires, 'sig': signature})}"
    return web.json_response(
        {
            "url": url,
            "expires_at": datetime.fromtimestamp(expires, UTC).isoformat(),
            "checksum": found.checksum,
        }
    )
