"""Change notifications: small payloads that name what changed, and nothing else is taken for one."""

from __future__ import annotations

import pytest

from registry.changes import MAX_PAYLOAD_BYTES, Change, ChangeKind, ChangeNotifier, parse_change


@pytest.mark.parametrize("kind", list(ChangeKind))
def test_a_payload_names_the_change_it_was_made_from(kind: ChangeKind) -> None:
    change = ChangeNotifier("replica-origin").change(kind, "m" * 128)
    assert parse_change(change.payload()) == change
    assert len(change.payload().encode()) < MAX_PAYLOAD_BYTES // 20


@pytest.mark.parametrize(
    "payload",
    ["", "not json", "[]", '{"k": "weights", "m": "x", "o": "a", "s": 1}', '{"k": "traffic", "m": "x"}',
     '{"k": "traffic", "m": "x", "o": "a", "s": "one"}'],
)
def test_a_payload_that_is_not_ours_is_no_change(payload: str) -> None:
    assert parse_change(payload) is None


def test_each_change_of_a_notifier_has_its_own_sequence_number() -> None:
    notifier = ChangeNotifier()
    first, second = (notifier.change(ChangeKind.TRAFFIC, "m") for _ in range(2))
    assert (first.origin, second.sequence) == (second.origin, first.sequence + 1)
    assert first != second and isinstance(first, Change)
