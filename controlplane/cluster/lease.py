"""When this replica may act as the leader: lease timing and the term after each attempt.

A purely computational module: times are this process's monotonic seconds, passed in.
The lease itself lives in the database and runs on the database's clock; this side
only needs to stop acting *before* the database could hand the lease to another
replica. An attempt sent at `t` that the database answered "yours" made the lease run
until at least `t + lease`, so this replica may act until `t + renew_deadline`
(shorter than the lease, as client-go's RenewDeadline is shorter than its
LeaseDuration): a process frozen past that point wakes up already a follower.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


@dataclass(frozen=True)
class LeaseTiming:
    """AEGIS_LEADER_LEASE_SECONDS and what follows from it (client-go: 15 s, renew 2 s, deadline 10 s)."""

    lease_seconds: float

    @property
    def renew_every(self) -> float:
        """Seconds between attempts: five chances to renew before the lease runs out."""
        return self.lease_seconds / 5

    @property
    def renew_deadline(self) -> float:
        """Seconds after an attempt's start that its success lets this replica act."""
        return self.lease_seconds * 2 / 3


class AttemptKind(StrEnum):
    HELD = "held"  # the conditional UPDATE matched: acquired or renewed, with the row's epoch
    TAKEN = "taken"  # another holder's lease has not expired
    FAILED = "failed"  # no answer from the database: nothing is known


@dataclass(frozen=True)
class Attempt:
    kind: AttemptKind
    started_at: float  # when the attempt was sent, not when it was answered
    epoch: int = 0
    holder: str = ""


@dataclass(frozen=True)
class Term:
    """A stretch of leadership under one epoch (the fencing token of every write in it)."""

    epoch: int
    valid_until: float


def next_term(term: Term | None, attempt: Attempt, timing: LeaseTiming) -> Term | None:
    """The term after an attempt; None: a follower.

    A renewal keeps the epoch and moves the deadline; an acquisition (a new epoch) is a
    new term even when the same replica held the previous one. A failed attempt changes
    nothing: the term still ends at its deadline unless a later attempt succeeds.
    """
    if attempt.kind is AttemptKind.HELD:
        return Term(attempt.epoch, attempt.started_at + timing.renew_deadline)
    if attempt.kind is AttemptKind.TAKEN:
        return None
    return term


def leading(term: Term | None, now: float) -> bool:
    return term is not None and now < term.valid_until


def wait_before_next_attempt(term: Term | None, timing: LeaseTiming, now: float) -> float:
    """Seconds to sleep: the renew period, but never past the moment a term would end."""
    wait = timing.renew_every
    if term is not None and term.valid_until > now:
        wait = min(wait, term.valid_until - now)
    return max(wait, 0.0)
