"""The registry's HTTP API (DESIGN section 3): handlers that translate HTTP to service calls.

Each handler gets its inputs parsed by the models of `registry.schemas` and returns
one of them; `OPERATIONS` is the table routing and the OpenAPI document share.
"""

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
from registry.blobs import CHUNK_BYTES, BlobStore, RemoteBlob, StagedBlob
from registry.domain import Stage, StageChange
from registry.download_urls import check_url_signature, url_signature
from registry.errors import MalformedRequest, NotFound, PayloadTooLarge
from registry.http import authorize, body_idle_timeout
from registry.metrics import RegistryMetrics
from registry.routes import Answer, Call, Operation, Reply, parse_json_model
from registry.schemas import (
    CANARY,
    MAX_URL_TTL_SECONDS,
    MODEL,
    MODEL_PARAM,
    VERSION_PARAM,
    ArtifactQuery,
    ArtifactUrl,
    ArtifactUrlRequest,
    ModelDocument,
    ModelList,
    ModelSummary,
    PromoteRequest,
    PromotionDocument,
    RegisterUpload,
    RegistrationMetadata,
    RollbackChange,
    RollbackRequest,
    RollbackResult,
    StagePointers,
    ValidationReportDocument,
    VersionDocument,
)
from registry.service import Registration, RegistryService, StageChangeListener

MAX_METADATA_BYTES = 1 << 20
# What aiohttp's multipart reader raises on a body that is not the multipart it announces.
MULTIPART_ERRORS = (ValueError, HttpProcessingError)


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
BLOBS: web.AppKey[BlobStore] = web.AppKey("registry_blobs")
CONFIG = web.AppKey("registry_api_config", RegistryApiConfig)
METRICS = web.AppKey("registry_metrics", RegistryMetrics)


def record_stage_changes(metrics: RegistryMetrics) -> StageChangeListener:
    async def listener(changes: list[StageChange]) -> None:
        for change in changes:
            metrics.promotions.labels(change.to_stage.value, change.action.value).inc()

    return listener


async def register(call: Call[None, None]) -> Answer:
    request = call.request
    config = request.app[CONFIG]
    declared = request.content_length
    if declared is not None and declared > config.max_artifact_bytes + MAX_METADATA_BYTES:
        raise PayloadTooLarge(
            f"the upload ({declared} bytes) exceeds the artifact limit of "
            f"{config.max_artifact_bytes} bytes (AEGIS_MAX_ARTIFACT_BYTES)"
        )
    claim, staged = await _read_upload(request)
    result = await request.app[SERVICE].register(claim, staged, actor=call.actor)
    request.app[METRICS].registrations.labels(
        "created" if result.created else "already_registered"
    ).inc()
    return Answer(201 if result.created else 200, VersionDocument.of(result.version))


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
                claim = parse_json_model(RegistrationMetadata, raw, what="the metadata part").claim()
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


async def list_models(call: Call[None, None]) -> ModelList:
    models = await call.app[SERVICE].store.list_models()
    return ModelList(
        models=[
            ModelSummary(
                model_name=name, created_at=created_at, versions=len(stages), stages=StagePointers.of(stages)
            )
            for name, created_at, stages in models
        ]
    )


async def get_model(call: Call[None, None]) -> ModelDocument:
    model_name = call.path["model"]
    versions = await call.app[SERVICE].list_versions(model_name)
    return ModelDocument(
        model_name=model_name,
        stages=StagePointers.of([(v.version, v.stage.value) for v in versions]),
        versions=[VersionDocument.of(v) for v in versions],
    )


async def get_version(call: Call[None, None]) -> VersionDocument:
    found = await call.app[SERVICE].get_version(call.path["model"], call.path["version"])
    return VersionDocument.of(found)


async def promote(call: Call[PromoteRequest, None]) -> PromotionDocument:
    stage = Stage(call.body.stage)
    promoted = await call.app[SERVICE].promote(
        call.path["model"], call.path["version"], stage,
        actor=call.actor, reason=call.body.reason or f"promoted to {stage.value}", force=call.body.force,
    )
    extra: dict[str, Any] = {}
    for report in call.app.get(PROMOTION_REPORTS, []):
        extra.update(await report(promoted.model_name, promoted.version, stage))
    # The reports' fields (a canary's rollout) are validated like every other field of the answer.
    document = VersionDocument.of(promoted).model_dump(by_alias=True)
    return PromotionDocument.model_validate({**document, **extra})


async def rollback(call: Call[RollbackRequest, None]) -> RollbackResult:
    changes = await call.app[SERVICE].rollback(
        call.path["model"], actor=call.actor, reason=call.body.reason or "rolled back by an operator",
        force=call.body.force,
    )
    return RollbackResult(model_name=call.path["model"], changes=[RollbackChange.of(c) for c in changes])


async def validate(call: Call[None, None]) -> ValidationReportDocument:
    report = await call.app[SERVICE].validate(call.path["model"], call.path["version"])
    return ValidationReportDocument.of(report)


async def download(call: Call[None, ArtifactQuery]) -> web.StreamResponse:
    request = call.request
    config = request.app[CONFIG]
    model_name, version = call.path["model"], call.path["version"]
    if call.query.sig is not None:
        expires = check_url_signature(
            config.download_url_key, model_name, version,
            expires=call.query.expires or "", signature=call.query.sig, now=time.time(),
        )
    else:
        authorize(request, Role.VIEWER)
        expires = int(time.time()) + config.download_url_ttl_seconds
    found = await request.app[SERVICE].get_version(model_name, version)
    located = await request.app[BLOBS].download(
        found.checksum, filename=f"{model_name}-{version}.bin",
        expires_at=datetime.fromtimestamp(expires, UTC),
    )
    if located is None:
        raise NotFound(
            f"the artifact of {model_name} {version} is missing from the blob store; "
            "run GET …/validate and re-register it"
        )
    facts = {
        "X-Aegis-Checksum-Sha256": found.checksum,
        "X-Aegis-Signature": found.signature,
        "X-Aegis-Key-Id": found.key_id,
    }
    if isinstance(located, RemoteBlob):
        # The store serves the bytes itself, through a URL that expires no later than
        # the one that led here (or the token's usual URL lifetime).
        headers = {**facts, "Location": located.url, "Cache-Control": "no-store"}
        return web.Response(status=307, headers=headers)
    return web.FileResponse(
        located.path,
        headers={
            "Content-Type": "application/octet-stream",
            "Content-Disposition": f'attachment; filename="{model_name}-{version}.bin"',
            **facts,
        },
    )


async def artifact_url(call: Call[ArtifactUrlRequest, None]) -> ArtifactUrl:
    config = call.app[CONFIG]
    ttl = call.body.ttl_seconds or config.download_url_ttl_seconds
    found = await call.app[SERVICE].get_version(call.path["model"], call.path["version"])
    expires = int(time.time()) + ttl
    signature = url_signature(config.download_url_key, found.model_name, found.version, expires)
    path = f"/v1/registry/{found.model_name}/{found.version}/artifact"
    # Names are checked to URL-safe characters, so the path needs no quoting.
    url = f"{config.public_url}{path}?{urlencode({'expires': expires, 'sig': signature})}"
    return ArtifactUrl(url=url, expires_at=datetime.fromtimestamp(expires, UTC), checksum=found.checksum)


_SIGNED = {
    "model_name": MODEL,
    "version": CANARY,
    "checksum": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "signature": "3c7bd2a1b9d0e1f4a5c6b7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8",
    "key_id": "legacy",
}
_UNSIGNED = {"model_name": MODEL, "version": CANARY, "metadata": {"framework": "onnx", "owner": "risk-ml"}}
_VERSION = (MODEL_PARAM, VERSION_PARAM)
_NAME_ERRORS = {422: "the model name or version is not valid"}

OPERATIONS = (
    Operation(
        "post", "/v1/registry/register", "registerVersion",
        "Register a model version (metadata and artifact bytes)", "registry", Role.ADMIN, register,
        description=(
            "The artifact streams to the blob store while it is hashed. Without a signature "
            "the server signs with its key; a given checksum or signature must match the "
            "bytes. A rejected upload leaves nothing behind."
        ),
        body=RegisterUpload, body_media="multipart/form-data", reads_body=True,
        examples={
            "server-signed": (
                "the server hashes and signs with its key",
                {"metadata": _UNSIGNED, "artifact": "<the artifact's bytes>"},
            ),
            "signed-by-ci": (
                "CI signed it (`aegis sign`): the server re-checks both claims",
                {"metadata": _SIGNED, "artifact": "<the artifact's bytes>"},
            ),
        },
        responses={
            201: Reply("registered", VersionDocument),
            200: Reply("already registered with the same bytes", VersionDocument),
        },
        errors={
            400: "not multipart, a part missing, repeated or unexpected, or metadata that is not JSON",
            409: "the version is registered with other bytes (versions are immutable), "
            "or the server has no signing key",
            413: "the upload exceeds AEGIS_MAX_ARTIFACT_BYTES",
            422: "a bad name or version, or a checksum, signature or key id that does not match",
        },
    ),
    Operation(
        "get", "/v1/registry/models", "listModels", "Every model with its prod and canary pointers",
        "registry", Role.VIEWER, list_models, responses={200: Reply("the models", ModelList)},
    ),
    Operation(
        "get", "/v1/registry/{model}", "getModel", "One model: its versions and stage pointers",
        "registry", Role.VIEWER, get_model, params=(MODEL_PARAM,),
        responses={200: Reply("the model", ModelDocument)},
        errors={404: "the model is not registered", 422: "the model name is not valid"},
    ),
    Operation(
        "post", "/v1/registry/{model}/rollback", "rollbackModel",
        "Roll back: canary to staging, or with no canary prod to the previous prod",
        "registry", Role.OPERATOR, rollback, params=(MODEL_PARAM,),
        body=RollbackRequest, body_required=False,
        examples={"with-reason": ("why, for the history", {"reason": "p99 latency regressed"})},
        responses={200: Reply("the stage changes made", RollbackResult)},
        errors={
            404: "the model is not registered",
            409: "nothing to roll back to, the version to restore fails validation, or it has "
            "no live endpoint while another version serves (`force` goes ahead)",
            422: "a bad model name, or a reason that is not a string of at most 1000 characters",
        },
    ),
    Operation(
        "get", "/v1/registry/{model}/{version}", "getVersion",
        "The version document, with its promotion history", "registry", Role.VIEWER, get_version,
        params=_VERSION, responses={200: Reply("the version", VersionDocument)},
        errors={404: "no such version", **_NAME_ERRORS},
    ),
    Operation(
        "post", "/v1/registry/{model}/{version}/promote", "promoteVersion",
        "Promote a version to canary or prod", "registry", Role.OPERATOR, promote, params=_VERSION,
        description=(
            "The bytes are re-hashed and the signature checked first. Promoting to prod "
            "archives the old prod; promoting to canary starts a rollout when a policy "
            "matches (which needs a prod version)."
        ),
        body=PromoteRequest,
        examples={
            "prod": ("make a version prod", {"stage": "prod", "reason": "first release"}),
            "canary": ("start a canary", {"stage": "canary", "reason": "retrained on May data"}),
        },
        responses={200: Reply("the promoted version", PromotionDocument)},
        errors={
            404: "no such model or version",
            409: "already in that stage, an illegal transition, another canary running, "
            "the version fails validation, a policy needs a prod version first, or a new prod "
            "has no live endpoint while another version serves (`force` goes ahead)",
            422: "a bad name, version, stage or reason",
        },
    ),
    Operation(
        "get", "/v1/registry/{model}/{version}/validate", "validateVersion",
        "Re-hash the stored bytes and check the signature", "registry", Role.VIEWER, validate,
        params=_VERSION, description="Tampering gives `valid: false` with the problems, never an error.",
        responses={200: Reply("the validation report", ValidationReportDocument)},
        errors={404: "no such version", **_NAME_ERRORS},
    ),
    Operation(
        "get", "/v1/registry/{model}/{version}/artifact", "downloadArtifact",
        "Download the artifact's bytes (a token or a signed URL)", "registry", Role.VIEWER, download,
        params=_VERSION, query=ArtifactQuery, self_authorizing=True,
        description=(
            "With `expires` and `sig` from POST …/artifact-url, no token is needed. With an S3 blob "
            "store (AEGIS_BLOB_STORE=s3://…) the answer is a 307 redirect to a presigned URL of the "
            "store that expires with the signed URL, carrying the same X-Aegis-* headers."
        ),
        responses={
            200: Reply(
                "the bytes", media_type="application/octet-stream",
                schema={"type": "string", "contentMediaType": "application/octet-stream"},
                headers={
                    "X-Aegis-Checksum-Sha256": "SHA-256 of the bytes: check it",
                    "X-Aegis-Signature": "the version's signature",
                    "X-Aegis-Key-Id": "the key that signed it",
                },
            )
        },
        errors={
            403: "the signed URL is malformed, not valid or expired",
            404: "no such version, or its bytes are missing from the blob store",
            **_NAME_ERRORS,
        },
    ),
    Operation(
        "post", "/v1/registry/{model}/{version}/artifact-url", "createArtifactUrl",
        "A download URL that works without a token until it expires", "registry", Role.VIEWER,
        artifact_url, params=_VERSION, body=ArtifactUrlRequest, body_required=False,
        examples={"one-hour": ("valid for an hour", {"ttl_seconds": 3600})},
        responses={200: Reply("the signed URL", ArtifactUrl)},
        errors={
            404: "no such version",
            422: f"a bad name or version, or ttl_seconds outside 1..{MAX_URL_TTL_SECONDS}",
        },
    ),
)
