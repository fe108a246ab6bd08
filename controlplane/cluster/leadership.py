"""The elector: takes and renews the lease, heartbeats this replica, and tells the leader's work when to act.

Every `renew_every` seconds (lease / 5) it makes one attempt on the lease row and one
heartbeat. `lease.next_term` decides what the answer means; this module only does the
I/O and calls the followers of the term (`Follower.elected` with the term's fence,
`Follower.deposed`) when the term they act under changes. A fenced write that was
refused ends the term at once, without waiting for the next attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Protocol

from controlplane.cluster.lease import (
    Attempt,
    AttemptKind,
    LeaseTiming,
    Term,
    leading,
    next_term,
    wait_before_next_attempt,
)
from controlplane.cluster.store import EpochFence, LeaseStore, ReplicaRow, ReplicaStore, live
from registry.store import Database

log = logging.getLogger(__name__)


class Follower(Protocol):
    """Work that only the leader does, told when a term starts and ends."""

    async def elected(self, fence: EpochFence) -> None: ...

    async def deposed(self) -> None: ...


class Elector:
    def __init__(
        self,
        database: Database,
        *,
        replica: ReplicaRow,
        holder: str,
        timing: LeaseTiming,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.database = database
        self.leases = LeaseStore(database)
        self.replicas = ReplicaStore(database)
        self.replica = replica
        self.holder = holder
        self.timing = timing
        self.clock = clock
        self.term: Term | None = None
        self.live_replicas = 0
        self._followers: list[Follower] = []
        self._fence: EpochFence | None = None  # of the term the followers act under
        self._wake = asyncio.Event()

    @property
    def replica_id(self) -> str:
        return self.replica.replica_id

    @property
    def leading(self) -> bool:
        """True while this replica may act as the leader (checked against the clock, every time)."""
        return self._fence is not None and leading(self.term, self.clock())

    @property
    def fence(self) -> EpochFence | None:
        return self._fence if self.leading else None

    def follow(self, follower: Follower) -> None:
        self._followers.append(follower)

    async def run(self) -> None:
        """Sleep, attempt, settle, heartbeat; until cancelled (start-up makes the first `step`)."""
        while True:
            wait = wait_before_next_attempt(self.term, self.timing, self.clock())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)
            self._wake.clear()
            await self.step()

    async def step(self) -> None:
        started = self.clock()
        try:
            # Never wait on the database past the next attempt: the term's deadline is what counts.
            attempt = await asyncio.wait_for(
                self.leases.attempt(
                    self.holder, lease_seconds=self.timing.lease_seconds, started_at=started
                ),
                self.timing.renew_every,
            )
        except Exception as exc:
            log.warning("leader lease attempt failed: %s", exc or type(exc).__name__)
            attempt = Attempt(AttemptKind.FAILED, started)
        previous = self.term
        self.term = next_term(self.term, attempt, self.timing)
        if attempt.kind is AttemptKind.TAKEN and previous is not None:
            log.warning("replica %s lost the lease to %s", self.replica_id, attempt.holder)
        await self.settle()
        await self._heartbeat()

    async def settle(self) -> None:
        """Tell the followers when the term they act under is not the current one any more."""
        acting = self._fence.epoch if self._fence is not None else None
        term = self.term
        current = term.epoch if term is not None and leading(term, self.clock()) else None
        if acting == current:
            return
        if self._fence is not None:
            self._fence = None
            log.warning("replica %s stops acting as the leader (epoch %s)", self.replica_id, acting)
            for follower in self._followers:
                await follower.deposed()
        if current is None:
            return
        fence = EpochFence(self.database, holder=self.holder, epoch=current, on_refused=self._refused)
        try:
            for follower in self._followers:
                await follower.elected(fence)
        except Exception:
            # Not acting: the next step tries again (the lease is still ours meanwhile).
            log.exception("replica %s could not take up leadership (epoch %d)", self.replica_id, current)
            for follower in self._followers:
                await follower.deposed()
            return
        self._fence = fence
        log.info("replica %s leads (epoch %d)", self.replica_id, current)

    def _refused(self, epoch: int) -> None:
        """A fenced write found the lease gone: end the term now, and settle in the loop."""
        if self.term is not None and self.term.epoch == epoch:
            self.term = None
        self._wake.set()

    async def _heartbeat(self) -> None:
        try:
            await self.replicas.heartbeat(self.replica)
            rows, now = await self.replicas.all()
        except Exception as exc:
            log.warning("replica heartbeat failed: %s", exc or type(exc).__name__)
            return
        self.live_replicas = sum(live(row, now, within_seconds=self.timing.lease_seconds) for row in rows)

    async def resign(self) -> None:
        """On shutdown: stop acting, and give the lease back so another replica leads at once."""
        if self._fence is not None:
            self._fence = None
            for follower in self._followers:
                await follower.deposed()
        self.term = None
        with contextlib.suppress(Exception):
            await self.leases.release(self.holder)
