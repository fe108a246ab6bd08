"""The leader's term as a table: acquire, renew, lose, fail to renew, frozen past the lease."""

from __future__ import annotations

import pytest

from controlplane.cluster.lease import (
    Attempt,
    AttemptKind,
    LeaseTiming,
    Term,
    leading,
    next_term,
    wait_before_next_attempt,
)

TIMING = LeaseTiming(lease_seconds=15)  # client-go's figures: renew every 3 s here, deadline 10 s
HELD, TAKEN, FAILED = AttemptKind.HELD, AttemptKind.TAKEN, AttemptKind.FAILED


def test_timing_follows_the_lease_like_client_go() -> None:
    assert (TIMING.renew_every, TIMING.renew_deadline) == (3, 10)
    assert LeaseTiming(10).renew_every == 2
    assert LeaseTiming(3).renew_deadline == 2


@pytest.mark.parametrize(
    ("case", "term", "attempt", "expected"),
    [
        ("a follower acquires: a term until the deadline after the attempt's start",
         None, Attempt(HELD, 100.0, epoch=4), Term(4, 110.0)),
        ("a renewal keeps the epoch and moves the deadline",
         Term(4, 110.0), Attempt(HELD, 103.0, epoch=4), Term(4, 113.0)),
        ("a late answer counts from when it was sent, not when it came",
         Term(4, 110.0), Attempt(HELD, 103.0, epoch=4), Term(4, 113.0)),
        ("the lease taken again after it lapsed is a new term with a new epoch",
         Term(4, 110.0), Attempt(HELD, 120.0, epoch=5), Term(5, 130.0)),
        ("another holder: a follower at once",
         Term(4, 110.0), Attempt(TAKEN, 103.0, epoch=5, holder="b#1"), None),
        ("a failed renewal keeps the term, and its deadline",
         Term(4, 110.0), Attempt(FAILED, 103.0), Term(4, 110.0)),
        ("a failed attempt leaves a follower a follower",
         None, Attempt(FAILED, 103.0), None),
    ],
)
def test_the_term_after_an_attempt(
    case: str, term: Term | None, attempt: Attempt, expected: Term | None
) -> None:
    assert next_term(term, attempt, TIMING) == expected, case


@pytest.mark.parametrize(
    ("case", "term", "now", "expected"),
    [
        ("within the deadline", Term(4, 110.0), 109.9, True),
        ("at the deadline: stopped, 5 s before the lease could lapse", Term(4, 110.0), 110.0, False),
        ("frozen (SIGSTOP) past the lease: wakes up a follower", Term(4, 110.0), 140.0, False),
        ("no term", None, 100.0, False),
    ],
)
def test_leading_only_until_the_renew_deadline(
    case: str, term: Term | None, now: float, expected: bool
) -> None:
    assert leading(term, now) is expected, case


def test_renewals_fail_until_the_deadline_then_it_stops_before_the_lease_lapses() -> None:
    """Renewals every 3 s all fail from t=103: acting stops at 110, before the lease can lapse at 115."""
    term = next_term(None, Attempt(HELD, 100.0, epoch=1), TIMING)
    now, leading_at = 100.0, []
    while now < 116:
        now += wait_before_next_attempt(term, TIMING, now)
        term = next_term(term, Attempt(FAILED, now), TIMING)
        leading_at.append((now, leading(term, now)))
    assert leading_at[:4] == [(103.0, True), (106.0, True), (109.0, True), (110.0, False)]
    assert all(not is_leading for at, is_leading in leading_at if at >= 110)


def test_the_next_attempt_never_sleeps_past_the_end_of_a_term() -> None:
    assert wait_before_next_attempt(None, TIMING, 0.0) == 3
    assert wait_before_next_attempt(Term(1, 101.0), TIMING, 100.0) == 1
    assert wait_before_next_attempt(Term(1, 90.0), TIMING, 100.0) == 3
