"""The registry API's request and response models: validation, answers and OpenAPI in one place.

Request models refuse unknown fields (see `registry.routes.RequestModel`); response
models are built from the domain's values by their `of` constructors.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, WithJsonSchema

from registry.boundary import QueryModel, RequestModel, ResponseModel
from registry.domain import ChangeAction, HistoryEntry, ModelVersion, Stage, StageChange
from registry.fields import Checksum, ModelName, Timestamp, Version
from registry.routes import PathParam
from registry.service import Registration, ValidationReport
from registry.signing import Algorithm

MAX_URL_TTL_SECONDS = 7 * 24 * 3600
MAX_REASON_CHARS = 1000
MAX_SIGNATURE_CHARS = 512
MAX_KEY_ID_CHARS = 128

# Example values shared by the examples, so that they form one story a client can replay.
MODEL = "fraud"
STABLE = "1.0.0"
CANARY = "2.0.0"

MODEL_PARAM = PathParam("model", ModelName, example=MODEL)
VERSION_PARAM = PathParam("version", Version, example=CANARY)

Reason = Annotated[str, Field(max_length=MAX_REASON_CHARS, description="why, for the history")]


def _no_registry_key(metadata: dict[str, Any]) -> dict[str, Any]:
    if "_registry" in metadata:
        raise ValueError("metadata._registry is reserved for the registry's own records")
    return metadata


FreeMetadata = Annotated[
    dict[str, Any],
    AfterValidator(_no_registry_key),
    WithJsonSchema(
        {"type": "object", "not": {"required": ["_registry"]},
         "description": "free-form; `_registry` is reserved"}
    ),
]


class RegistrationMetadata(RequestModel):
    """The `metadata` part of an upload: checksum and signature are optional claims."""

    model_name: ModelName
    version: Version
    checksum: Checksum | None = Field(default=None, description="optional claim, checked against the bytes")
    signature: str | None = Field(
        default=None, max_length=MAX_SIGNATURE_CHARS, pattern=r"^[0-9a-fA-F]+$",
        description="optional, hex; over `model|version|checksum`",
    )
    key_id: str | None = Field(
        default=None, max_length=MAX_KEY_ID_CHARS, description="the signature's key; default: the signing key"
    )
    metadata: FreeMetadata = Field(default_factory=dict)

    def claim(self) -> Registration:
        return Registration(
            model_name=self.model_name, version=self.version, checksum=self.checksum,
            signature=self.signature, key_id=self.key_id, metadata=self.metadata,
        )


class RegisterUpload(RequestModel):
    """multipart parts, in either order: one `metadata` (JSON) and one `artifact`."""

    metadata: RegistrationMetadata
    artifact: str = Field(json_schema_extra={"contentMediaType": "application/octet-stream"})


Force = Annotated[
    bool, Field(description="make prod a version with no live endpoint even while another serves")
]


class PromoteRequest(RequestModel):
    # Plain strings, not the enum's members: the error message then lists 'canary' or 'prod'.
    stage: Literal["canary", "prod"]
    reason: Reason = ""
    force: Force = False


class RollbackRequest(RequestModel):
    reason: Reason = ""
    force: Force = False


class ArtifactUrlRequest(RequestModel):
    ttl_seconds: int | None = Field(
        default=None, ge=1, le=MAX_URL_TTL_SECONDS, description="default: AEGIS_DOWNLOAD_URL_TTL_SECONDS"
    )


class ArtifactQuery(QueryModel):
    """A signed download URL's query; without `sig` a token is needed instead."""

    expires: str | None = Field(
        default=None, max_length=32, description="signed URL: Unix time after which it stops working"
    )
    sig: str | None = Field(
        default=None, max_length=128, description="signed URL: the signature; with it no token is needed"
    )


class HistoryEntryDocument(ResponseModel):
    from_stage: Stage
    to_stage: Stage
    at: Timestamp
    actor: str = Field(description="the token's name or role, never the token")
    reason: str
    action: ChangeAction

    @classmethod
    def of(cls, entry: HistoryEntry) -> HistoryEntryDocument:
        return cls(
            from_stage=entry.from_stage, to_stage=entry.to_stage, at=entry.at, actor=entry.actor,
            reason=entry.reason, action=entry.action,
        )


class RegistryRecords(ResponseModel):
    promotion_history: list[HistoryEntryDocument]


class VersionMetadata(ResponseModel):
    """The registered metadata plus the registry's own records under `_registry`."""

    model_config = ResponseModel.model_config | {"extra": "allow"}

    registry: RegistryRecords = Field(alias="_registry")


class VersionDocument(ResponseModel):
    model_name: str
    version: str
    checksum: str
    size_bytes: int = Field(ge=0)
    signature: str
    key_id: str
    algorithm: Algorithm
    stage: Stage
    created_at: Timestamp
    created_by: str
    metadata: VersionMetadata

    @classmethod
    def of(cls, version: ModelVersion) -> VersionDocument:
        records = RegistryRecords(promotion_history=[HistoryEntryDocument.of(e) for e in version.history])
        return cls(
            model_name=version.model_name, version=version.version, checksum=version.checksum,
            size_bytes=version.size_bytes, signature=version.signature, key_id=version.key_id,
            algorithm=Algorithm(version.algorithm), stage=version.stage, created_at=version.created_at,
            created_by=version.created_by,
            metadata=VersionMetadata.model_validate({**version.metadata, "_registry": records}),
        )


class PromotionRollout(ResponseModel):
    """Promotions to canary: whether a rollout started, and if not, why."""

    started: bool
    policy: str | None
    reason: str = Field(description="why no rollout started")


class PromotionDocument(VersionDocument):
    rollout: PromotionRollout | None = Field(
        default=None, description="promotions to canary: whether a rollout started; null otherwise"
    )


class StagePointers(ResponseModel):
    prod: str | None
    canary: str | None

    @classmethod
    def of(cls, stages: list[tuple[str, str]]) -> StagePointers:
        found = {stage: version for version, stage in stages}
        return cls(prod=found.get(Stage.PROD.value), canary=found.get(Stage.CANARY.value))


class ModelSummary(ResponseModel):
    model_name: str
    created_at: Timestamp
    versions: int = Field(ge=1, description="how many")
    stages: StagePointers


class ModelList(ResponseModel):
    models: list[ModelSummary]


class ModelDocument(ResponseModel):
    model_name: str
    stages: StagePointers
    versions: list[VersionDocument]


class RollbackChange(ResponseModel):
    version: str
    from_stage: Stage
    to_stage: Stage

    @classmethod
    def of(cls, change: StageChange) -> RollbackChange:
        return cls(version=change.version, from_stage=change.from_stage, to_stage=change.to_stage)


class RollbackResult(ResponseModel):
    model_name: str
    changes: list[RollbackChange]


class ValidationReportDocument(ResponseModel):
    valid: bool = Field(description="checksum_ok and signature_ok")
    checksum_ok: bool
    signature_ok: bool
    checksum: str
    actual_checksum: str | None
    key_id: str
    problems: list[str]

    @classmethod
    def of(cls, report: ValidationReport) -> ValidationReportDocument:
        return cls(
            valid=report.valid, checksum_ok=report.checksum_ok, signature_ok=report.signature_ok,
            checksum=report.checksum, actual_checksum=report.actual_checksum, key_id=report.key_id,
            problems=list(report.problems),
        )


class ArtifactUrl(ResponseModel):
    url: str = Field(json_schema_extra={"format": "uri"})
    expires_at: Timestamp
    checksum: str
