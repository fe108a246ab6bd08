"""Stage rules as tables: what a promotion or a rollback changes, and what it refuses."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from registry.domain import (
    ChangeAction,
    HistoryEntry,
    ModelVersion,
    Stage,
    check_checksum,
    check_model_name,
    check_version,
    plan_promotion,
    plan_rollback,
)
from registry.errors import Conflict, InvalidInput

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def version(name: str, stage: Stage, *moves: tuple[int, Stage, Stage, ChangeAction]) -> ModelVersion:
    history = tuple(
        HistoryEntry(src, dst, T0 + timedelta(minutes=minute), "op", "r", action)
        for minute, src, dst, action in moves
    )
    return ModelVersion(
        model_name="m", version=name, checksum="0" * 64, size_bytes=1, signature="s", key_id="k",
        algorithm="hmac-sha256", stage=stage, created_at=T0, created_by="op", history=history,
    )


S, C, P, A = Stage.STAGING, Stage.CANARY, Stage.PROD, Stage.ARCHIVED
PROMOTE, ROLLBACK, ARCHIVE = ChangeAction.PROMOTE, ChangeAction.ROLLBACK, ChangeAction.ARCHIVE


@pytest.mark.parametrize(
    ("stages", "target", "to_stage", "expected"),
    [
        ({"1": S}, "1", P, [("1", S, P)]),
        ({"1": P, "2": S}, "2", C, [("2", S, C)]),
        ({"1": P, "2": C}, "2", P, [("1", P, A), ("2", C, P)]),
        ({"1": P, "2": S}, "2", P, [("1", P, A), ("2", S, P)]),
        ({"1": A, "2": P}, "1", C, [("1", A, C)]),
    ],
)
def test_promotion_plans(stages: dict[str, Stage], target: str, to_stage: Stage, expected: list[Any]) -> None:
    versions = [version(name, stage) for name, stage in stages.items()]
    target_version = next(v for v in versions if v.version == target)
    changes = plan_promotion(versions, target_version, to_stage, actor="op", reason="why")
    assert [(c.version, c.from_stage, c.to_stage) for c in changes] == expected


@pytest.mark.parametrize(
    ("stages", "target", "to_stage", "message"),
    [
        ({"1": C, "2": S}, "2", C, "already has canary 1"),
        ({"1": P}, "1", P, "already prod"),
        ({"1": P}, "1", C, "cannot move to canary"),
        ({"1": S}, "1", A, "must be 'canary' or 'prod'"),
        ({"1": S}, "1", S, "must be 'canary' or 'prod'"),
    ],
)
def test_promotions_refused(stages: dict[str, Stage], target: str, to_stage: Stage, message: str) -> None:
    versions = [version(name, stage) for name, stage in stages.items()]
    target_version = next(v for v in versions if v.version == target)
    with pytest.raises((Conflict, InvalidInput), match=message):
        plan_promotion(versions, target_version, to_stage, actor="op", reason="why")


def test_rollback_of_a_canary_returns_it_to_staging() -> None:
    changes = plan_rollback([version("1", P), version("2", C)], actor="op", reason="bad")
    assert [(c.version, c.from_stage, c.to_stage, c.action) for c in changes] == [("2", C, S, ROLLBACK)]


def test_rollback_of_prod_walks_back_through_earlier_prods() -> None:
    # 1 was prod, then 2, then 3; rolling back twice must reach 1, never return to 3.
    v1 = version("1", A, (1, S, P, PROMOTE), (2, P, A, ARCHIVE))
    v2 = version("2", A, (2, S, P, PROMOTE), (3, P, A, ARCHIVE))
    v3 = version("3", P, (3, S, P, PROMOTE))
    first = plan_rollback([v1, v2, v3], actor="op", reason="bad")
    assert [(c.version, c.to_stage) for c in first] == [("3", A), ("2", P)]
    v2 = version("2", P, (2, S, P, PROMOTE), (3, P, A, ARCHIVE), (4, A, P, ROLLBACK))
    v3 = version("3", A, (3, S, P, PROMOTE), (4, P, A, ROLLBACK))
    second = plan_rollback([v1, v2, v3], actor="op", reason="worse")
    assert [(c.version, c.to_stage) for c in second] == [("2", A), ("1", P)]


@pytest.mark.parametrize(
    ("versions", "canary_version", "expected"),
    [
        # The rollout's canary is still canary: it alone goes back to staging.
        ([version("1", P), version("2", C)], "2", [("2", S)]),
        # Already rolled back (a retry after the first attempt was committed): nothing moves,
        # above all prod does not go back to the version before it.
        ([version("1", A, (1, S, P, PROMOTE), (2, P, A, ARCHIVE)), version("2", P, (2, S, P, PROMOTE)),
          version("3", S)], "3", []),
        # Another version became canary meanwhile: it is not this rollout's to move.
        ([version("1", P), version("3", S), version("4", C)], "3", []),
    ],
)
def test_a_rollout_rolls_back_only_its_own_canary(
    versions: list[ModelVersion], canary_version: str, expected: list[tuple[str, Stage]]
) -> None:
    changes = plan_rollback(versions, actor="aegis-rollout", reason="failed", canary_version=canary_version)
    assert [(c.version, c.to_stage) for c in changes] == expected


@pytest.mark.parametrize(
    ("versions", "message"),
    [
        ([], "no versions"),
        ([version("1", S)], "neither a canary nor a prod"),
        ([version("1", P, (1, S, P, PROMOTE))], "no earlier prod"),
    ],
)
def test_rollback_refused(versions: list[ModelVersion], message: str) -> None:
    with pytest.raises(Conflict, match=message):
        plan_rollback(versions, actor="op", reason="r")


@pytest.mark.parametrize("name", ["a|b", "a/b", "..", "a..b", "", "A", "-a", "x" * 129, "register", 7, None])
def test_bad_model_names(name: object) -> None:
    with pytest.raises(InvalidInput):
        check_model_name(name)


@pytest.mark.parametrize("name", ["a", "fraud-model", "m.v2_x", "0" * 128])
def test_good_model_names(name: str) -> None:
    assert check_model_name(name) == name


@pytest.mark.parametrize("value", ["1|2", "1/2", "..", "1..2", "", ".1", "v" * 65, "1 2"])
def test_bad_versions(value: str) -> None:
    with pytest.raises(InvalidInput):
        check_version(value)


@pytest.mark.parametrize("value", ["1", "1.0.0", "2026-11-26+build.7", "V1_rc"])
def test_good_versions(value: str) -> None:
    assert check_version(value) == value


@pytest.mark.parametrize("value", ["A" * 64, "0" * 63, "g" * 64, 5])
def test_bad_checksums(value: object) -> None:
    with pytest.raises(InvalidInput):
        check_checksum(value)
