"""The registry service: registers, validates, promotes and rolls back model versions.

It sequences the pure rules of `registry.domain` with the store, the blob store and
the keyring, and announces every committed stage change to its listeners (the
rollout engine subscribes here).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from registry.blobs import BLOB_GRACE_SECONDS, BlobStore, StagedBlob, SweepReport
from registry.domain import (
    ChangeAction,
    HistoryEntry,
    ModelVersion,
    Stage,
    StageChange,
    check_model_name,
    check_version,
    plan_promotion,
    plan_rollback,
)
from registry.errors import Conflict, InvalidInput, NotFound
from registry.signing import Algorithm, Keyring, Signature, SigningConfigError
from registry.store import RegistryStore

log = logging.getLogger(__name__)

StageChangeListener = Callable[[list[StageChange]], Awaitable[None]]


class StageChangeGuard(Protocol):
    """Vetoes a stage change before it is committed by raising a RegistryError.

    `force`: the operator asked to go ahead past the checks that protect traffic (not
    past the registry's own rules); a guard decides which of its checks it waives.
    """

    def __call__(self, changes: list[StageChange], *, force: bool) -> Awaitable[None]: ...


@dataclass(frozen=True)
class Registration:
    """What a client says about an upload; checksum and signature are optional claims."""

    model_name: str
    version: str
    checksum: str | None = None
    signature: str | None = None
    key_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ValidationReport:
    valid: bool
    checksum_ok: bool
    signature_ok: bool
    checksum: str
    actual_checksum: str | None
    key_id: str
    problems: tuple[str, ...]


@dataclass(frozen=True)
class RegistrationResult:
    version: ModelVersion
    created: bool


class RegistryService:
    def __init__(self, store: RegistryStore, blobs: BlobStore, keyring: Keyring) -> None:
        self.store = store
        self.blobs = blobs
        self.keyring = keyring
        self._listeners: list[StageChangeListener] = []
        self._guards: list[StageChangeGuard] = []

    def on_stage_change(self, listener: StageChangeListener) -> None:
        """Call `listener` with each committed batch of stage changes."""
        self._listeners.append(listener)

    def guard_stage_change(self, guard: StageChangeGuard) -> None:
        """Let `guard` veto stage changes before they are committed."""
        self._guards.append(guard)

    async def register(
        self, claim: Registration, staged: StagedBlob, *, actor: str
    ) -> RegistrationResult:
        """Register staged bytes under a name and version; the staged file is consumed either way.

        Idempotent under concurrency: of many registrations of the same version with the
        same bytes exactly one creates it (201) and the others find it (200); other
        bytes under a registered version are a 409.
        """
        created_blob = False
        try:
            signature = self._check_claims(claim, staged)
            existing = await self.store.get_version(claim.model_name, claim.version)
            if existing is not None:
                return self._repeat_registration(existing, staged)
            created_blob = await self.blobs.publish(staged)
            version = self._new_version(claim, staged, signature, actor=actor)
            if await self.store.insert_version(version):
                created_blob = False  # a row names it now
                await self.blobs.ensure_stored(staged)
                return RegistrationResult(version, created=True)
            # Registered by someone else between our read and our write: compare with theirs.
            existing = await self.store.get_version(claim.model_name, claim.version)
            if existing is None:
                raise Conflict(
                    f"{claim.model_name} {claim.version} changed while it was being registered; "
                    "try again"
                )
            result = self._repeat_registration(existing, staged)
            created_blob = False  # the same bytes: the winner's row names this blob
            await self.blobs.ensure_stored(staged)
            return result
        finally:
            # The lock goes first, so that removing the blob we made (when no row names
            # it) follows the same rules as any sweep.
            await self.blobs.discard(staged)
            if created_blob:
                await self.blobs.remove_unreferenced(
                    staged.checksum, lambda: self.store.named_checksums([staged.checksum])
                )

    @staticmethod
    def _new_version(
        claim: Registration, staged: StagedBlob, signature: Signature, *, actor: str
    ) -> ModelVersion:
        now = datetime.now(UTC)
        return ModelVersion(
            model_name=claim.model_name, version=claim.version, checksum=staged.checksum,
            size_bytes=staged.size_bytes, signature=signature.signature,
            key_id=signature.key_id, algorithm=signature.algorithm.value, stage=Stage.STAGING,
            created_at=now, created_by=actor, metadata=claim.metadata,
            history=(
                HistoryEntry(
                    Stage.STAGING, Stage.STAGING, now, actor, "registered", ChangeAction.REGISTER
                ),
            ),
        )

    async def sweep_garbage(self, *, grace_seconds: float = BLOB_GRACE_SECONDS) -> SweepReport:
        """Remove what crashed uploads left: temporary files, and blobs no version names."""
        report = await self.blobs.sweep(self.store.referenced_checksums, grace_seconds=grace_seconds)
        if report.files:
            log.warning(
                "swept crash garbage from the blob store: %d interrupted upload(s), %d bytes; "
                "%d blob(s) no version names, %d bytes",
                report.uploads, report.upload_bytes, report.blobs, report.blob_bytes,
            )
        return report

    def _check_claims(self, claim: Registration, staged: StagedBlob) -> Signature:
        if claim.checksum is not None and not hmac.compare_digest(claim.checksum, staged.checksum):
            raise InvalidInput(
                f"checksum mismatch: the metadata says {claim.checksum} but the uploaded bytes "
                f"hash to {staged.checksum}; upload the right file or fix the checksum"
            )
        if claim.signature is None:
            try:
                made = self.keyring.sign(claim.model_name, claim.version, staged.checksum)
            except SigningConfigError as exc:
                raise Conflict(f"cannot sign: {exc}") from exc
            return made
        key_id = claim.key_id or self.keyring.signing_key_id
        if key_id is None or not self.keyring.knows(key_id):
            raise InvalidInput(
                f"key_id {key_id!r} is not a configured verify key; known key ids: "
                + (", ".join(self.keyring.key_ids) or "none")
            )
        if not self.keyring.verify(
            claim.model_name, claim.version, staged.checksum,
            signature=claim.signature, key_id=key_id,
        ):
            raise InvalidInput(
                f"signature does not verify with key {key_id!r} over "
                f"'{claim.model_name}|{claim.version}|<sha256 of the bytes>'; re-sign the "
                "artifact with that key (aegis sign) or check that you uploaded the signed file"
            )
        algorithm = Algorithm.ED25519 if key_id.startswith("ed25519:") else Algorithm.HMAC_SHA256
        return Signature(claim.signature.lower(), key_id, algorithm)

    def _repeat_registration(self, existing: ModelVersion, staged: StagedBlob) -> RegistrationResult:
        if hmac.compare_digest(existing.checksum, staged.checksum):
            return RegistrationResult(existing, created=False)
        raise Conflict(
            f"{existing.model_name} {existing.version} is already registered with checksum "
            f"{existing.checksum}; versions are immutable: register these bytes as a new version"
        )

    async def get_version(self, model_name: str, version: str) -> ModelVersion:
        found = await self.store.get_version(check_model_name(model_name), check_version(version))
        if found is None:
            raise NotFound(
                f"{model_name} has no version {version!r}; list versions with "
                f"GET /v1/registry/{model_name}"
            )
        return found

    async def list_versions(self, model_name: str) -> list[ModelVersion]:
        versions = await self.store.list_versions(check_model_name(model_name))
        if not versions:
            raise NotFound(
                f"model {model_name!r} is not registered; list models with GET /v1/registry/models"
            )
        return versions

    async def validate(self, model_name: str, version: str) -> ValidationReport:
        found = await self.get_version(model_name, version)
        return await self._validate(found)

    async def _validate(self, found: ModelVersion) -> ValidationReport:
        problems: list[str] = []
        actual = await self.blobs.rehash(found.checksum)
        checksum_ok = actual is not None and hmac.compare_digest(actual, found.checksum)
        if actual is None:
            problems.append("the artifact is missing from the blob store")
        elif not checksum_ok:
            problems.append(f"stored bytes hash to {actual}, not the registered {found.checksum}")
        signature_ok = self.keyring.verify(
            found.model_name, found.version, found.checksum,
            signature=found.signature, key_id=found.key_id,
        )
        if not signature_ok:
            why = "does not verify" if self.keyring.knows(found.key_id) else "uses an unknown key"
            problems.append(f"signature with key {found.key_id!r} {why}")
        return ValidationReport(
            valid=checksum_ok and signature_ok, checksum_ok=checksum_ok,
            signature_ok=signature_ok, checksum=found.checksum, actual_checksum=actual,
            key_id=found.key_id, problems=tuple(problems),
        )

    async def promote(
        self, model_name: str, version: str, to_stage: Stage, *, actor: str, reason: str,
        force: bool = False,
    ) -> ModelVersion:
        versions = await self.list_versions(model_name)
        target = _find(versions, check_version(version))
        changes = plan_promotion(versions, target, to_stage, actor=actor, reason=reason)
        await self._require_valid(target, purpose=f"promoted to {to_stage.value}")
        await self._commit(changes, force=force)
        return await self.get_version(model_name, version)

    async def rollback(
        self, model_name: str, *, actor: str, reason: str, force: bool = False,
        canary_version: str | None = None,
    ) -> list[StageChange]:
        """Roll a model back (see `plan_rollback`); with `canary_version`, only that canary."""
        versions = await self.list_versions(model_name)
        changes = plan_rollback(versions, actor=actor, reason=reason, canary_version=canary_version)
        if not changes:
            return changes
        for change in changes:
            if change.to_stage is Stage.PROD:
                await self._require_valid(_find(versions, change.version), purpose="restored to prod")
        await self._commit(changes, force=force)
        return changes

    async def _require_valid(self, target: ModelVersion, *, purpose: str) -> None:
        report = await self._validate(target)
        if not report.valid:
            raise Conflict(
                f"{target.model_name} {target.version} cannot be {purpose}: it fails validation ("
                + "; ".join(report.problems)
                + "); register a good copy as a new version"
            )

    async def _commit(self, changes: list[StageChange], *, force: bool) -> None:
        for guard in self._guards:
            await guard(changes, force=force)
        await self.store.apply_changes(changes, at=datetime.now(UTC))
        for change in changes:
            log.info(
                "stage change %s %s: %s -> %s by %s (%s)", change.model_name, change.version,
                change.from_stage.value, change.to_stage.value, change.actor, change.reason,
            )
        for listener in self._listeners:
            try:
                await listener(changes)
            except Exception:
                # The change is committed; a failing subscriber must not undo or hide it.
                log.exception("stage change listener failed")


def _find(versions: list[ModelVersion], version: str) -> ModelVersion:
    for candidate in versions:
        if candidate.version == version:
            return candidate
    model_name = versions[0].model_name if versions else "?"
    raise NotFound(
        f"{model_name} has no version {version!r}; list versions with GET /v1/registry/{model_name}"
    )
