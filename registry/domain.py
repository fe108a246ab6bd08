"""Model versions, stages and their legal transitions: a purely computational module.

Nothing here reads or writes anything. The service asks these functions what a
stage change means (which versions move where) and then applies the answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from registry.errors import Conflict, InvalidInput

# `|` would make the signed string ambiguous, `/` and `..` would reach outside the store.
MODEL_NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")
VERSION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
CHECKSUM_PATTERN = re.compile(r"^[0-9a-f]{64}$")
# These would shadow the API's own paths under /v1/registry/.
RESERVED_MODEL_NAMES = frozenset({"models", "register"})


class Stage(StrEnum):
    STAGING = "staging"
    CANARY = "canary"
    PROD = "prod"
    ARCHIVED = "archived"


# Stages that at most one version of a model may hold at a time.
EXCLUSIVE_STAGES = frozenset({Stage.CANARY, Stage.PROD})

# Which stage may follow which. A canary returns to staging when rolled back; an
# archived version returns to prod only through a rollback.
LEGAL_TRANSITIONS: dict[Stage, frozenset[Stage]] = {
    Stage.STAGING: frozenset({Stage.CANARY, Stage.PROD, Stage.ARCHIVED}),
    Stage.CANARY: frozenset({Stage.PROD, Stage.STAGING, Stage.ARCHIVED}),
    Stage.PROD: frozenset({Stage.ARCHIVED}),
    Stage.ARCHIVED: frozenset({Stage.CANARY, Stage.PROD, Stage.STAGING}),
}


def check_model_name(name: object) -> str:
    if not isinstance(name, str) or not MODEL_NAME_PATTERN.fullmatch(name):
        raise InvalidInput(
            f"model name {name!r} is invalid: use 1-128 characters of lowercase letters, digits, "
            "'.', '_' or '-', starting with a letter or digit (no '|', '/' or '..')"
        )
    if ".." in name:
        raise InvalidInput(f"model name {name!r} is invalid: '..' is not allowed")
    if name in RESERVED_MODEL_NAMES:
        raise InvalidInput(f"model name {name!r} is reserved by the API; choose another name")
    return name


def check_version(version: object) -> str:
    if not isinstance(version, str) or not VERSION_PATTERN.fullmatch(version):
        raise InvalidInput(
            f"version {version!r} is invalid: use 1-64 characters of letters, digits, '.', '_', "
            "'+' or '-', starting with a letter or digit (no '|', '/' or '..')"
        )
    if ".." in version:
        raise InvalidInput(f"version {version!r} is invalid: '..' is not allowed")
    return version


def check_checksum(checksum: object) -> str:
    if not isinstance(checksum, str) or not CHECKSUM_PATTERN.fullmatch(checksum):
        raise InvalidInput(
            f"checksum {checksum!r} is invalid: give the lowercase hex SHA-256 of the artifact "
            "(64 characters)"
        )
    return checksum


class ChangeAction(StrEnum):
    """Why a stage changed: an explicit promotion, a rollback, or a replaced version archived."""

    REGISTER = "register"
    PROMOTE = "promote"
    ROLLBACK = "rollback"
    ARCHIVE = "archive"


@dataclass(frozen=True)
class StageChange:
    """One version moving from one stage to another, with who asked and why."""

    model_name: str
    version: str
    from_stage: Stage
    to_stage: Stage
    actor: str
    reason: str
    action: ChangeAction


@dataclass(frozen=True)
class HistoryEntry:
    from_stage: Stage
    to_stage: Stage
    at: datetime
    actor: str
    reason: str
    action: ChangeAction = ChangeAction.PROMOTE


@dataclass(frozen=True)
class ModelVersion:
    """A registered version: immutable facts plus its current stage and history."""

    model_name: str
    version: str
    checksum: str
    size_bytes: int
    signature: str
    key_id: str
    algorithm: str
    stage: Stage
    created_at: datetime
    created_by: str
    metadata: dict[str, Any] = field(default_factory=dict)
    history: tuple[HistoryEntry, ...] = ()


def plan_promotion(
    versions: list[ModelVersion],
    target: ModelVersion,
    to_stage: Stage,
    *,
    actor: str,
    reason: str,
) -> list[StageChange]:
    """The stage changes that promoting `target` to `to_stage` implies (pure).

    Promoting to prod archives the current prod. Promoting to canary while another
    version is canary is refused: one canary at a time, and the operator decides
    what happens to the running one.
    """
    if to_stage not in EXCLUSIVE_STAGES:
        raise InvalidInput(f"promotion target must be 'canary' or 'prod', not {to_stage.value!r}")
    if target.stage == to_stage:
        raise Conflict(f"{target.model_name} {target.version} is already {to_stage.value}")
    if to_stage not in LEGAL_TRANSITIONS[target.stage]:
        raise Conflict(
            f"{target.model_name} {target.version} is {target.stage.value} and cannot move to "
            f"{to_stage.value}; allowed from {target.stage.value}: "
            + ", ".join(sorted(s.value for s in LEGAL_TRANSITIONS[target.stage]))
        )
    holder = holder_of(versions, to_stage)
    changes: list[StageChange] = []
    if holder is not None and to_stage is Stage.CANARY:
        raise Conflict(
            f"{target.model_name} already has canary {holder.version}: promote it to prod or "
            "roll it back before starting another canary"
        )
    if holder is not None:
        changes.append(
            StageChange(
                target.model_name, holder.version, holder.stage, Stage.ARCHIVED, actor,
                f"replaced by {target.version}: {reason}", ChangeAction.ARCHIVE,
            )
        )
    changes.append(
        StageChange(
            target.model_name, target.version, target.stage, to_stage, actor, reason,
            ChangeAction.PROMOTE,
        )
    )
    return changes


def plan_rollback(
    versions: list[ModelVersion], *, actor: str, reason: str, canary_version: str | None = None
) -> list[StageChange]:
    """What a rollback means for a model (pure).

    With a canary: the canary goes back to staging. Without one: prod is archived
    and the version that was prod before it returns to prod.

    `canary_version` names the canary a rollout is rolling back: then only that
    canary moves, and nothing at all when it is no longer canary. A rollout retrying
    a rollback whose first attempt was committed must not take prod back a version.
    """
    if not versions:
        raise Conflict("model has no versions to roll back")
    model_name = versions[0].model_name
    canary = holder_of(versions, Stage.CANARY)
    if canary_version is not None and (canary is None or canary.version != canary_version):
        return []
    if canary is not None:
        return [
            StageChange(
                model_name, canary.version, Stage.CANARY, Stage.STAGING, actor, reason,
                ChangeAction.ROLLBACK,
            )
        ]
    prod = holder_of(versions, Stage.PROD)
    if prod is None:
        raise Conflict(f"{model_name} has neither a canary nor a prod version to roll back")
    previous = previous_prod(versions, current=prod)
    if previous is None:
        raise Conflict(
            f"{model_name} has no earlier prod version to return to; prod {prod.version} is the "
            "first one ever promoted"
        )
    return [
        StageChange(
            model_name, prod.version, Stage.PROD, Stage.ARCHIVED, actor, reason,
            ChangeAction.ROLLBACK,
        ),
        StageChange(
            model_name, previous.version, previous.stage, Stage.PROD, actor, reason,
            ChangeAction.ROLLBACK,
        ),
    ]


def holder_of(versions: list[ModelVersion], stage: Stage) -> ModelVersion | None:
    return next((v for v in versions if v.stage == stage), None)


def previous_prod(versions: list[ModelVersion], *, current: ModelVersion) -> ModelVersion | None:
    """The version that was prod before `current`, read from the history as a stack.

    A promotion to prod pushes a version, a rollback pops one, so rolling back twice
    walks back through earlier prods instead of returning to the version just
    rolled away from.
    """
    arrivals = sorted(
        (entry.at, version.version, entry.action)
        for version in versions
        for entry in version.history
        if entry.to_stage is Stage.PROD
    )
    stack: list[str] = []
    for _, version_name, action in arrivals:
        if action is ChangeAction.ROLLBACK and len(stack) >= 2:
            stack.pop()
        else:
            stack.append(version_name)
    by_name = {v.version: v for v in versions}
    earlier = [name for name in stack[:-1] if name != current.version]
    while earlier:
        candidate = by_name.get(earlier.pop())
        if candidate is not None and candidate.stage is Stage.ARCHIVED:
            return candidate
    return None
