"""Applies other replicas' committed changes to this replica's memory, one at a time, in order.

A notification names what changed (kind and model); the follower reads that part
again from the database and republishes only that model (TrafficService passes the
model to the publisher as the one that changed). A full reconcile reads everything:
after every (re)connect of the listener (notifications sent meanwhile are lost),
every `reconcile_seconds` as a backstop, and soon after a change that could not be
applied (the database went away mid-read). Everything runs in one task, so a
reload never races another and later reads see later commits.

This replica's own writes are in its memory already: their notifications are
skipped, except the registry's (a registration reaches no other part in-process).
A stored command reloads nothing: it wakes the leader's pick-up (`on_commands`) at once,
outside this task, so acting on it never holds up the changes behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from registry.changes import Change, ChangeKind

log = logging.getLogger(__name__)

# Seconds between full reconciles when nothing else asks for one.
RECONCILE_SECONDS = 30.0
# Seconds before a reconcile is tried again after one that failed.
RETRY_SECONDS = 1.0
# The changes that reload a model's routing inputs (stages, setting, endpoints).
ROUTING_KINDS = frozenset({ChangeKind.REGISTRY, ChangeKind.TRAFFIC, ChangeKind.ENDPOINTS})

ModelReload = Callable[[str], Awaitable[object]]
FullReload = Callable[[], Awaitable[object]]


class Follower:
    def __init__(
        self, *, origin: str, reload_routing: ModelReload, reload_rollout: ModelReload,
        reconcile_steps: list[FullReload], refresh_nodes: FullReload | None = None,
        on_commands: Callable[[], None] | None = None,
        reconcile_seconds: float = RECONCILE_SECONDS, clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.origin = origin
        self.reload_routing = reload_routing
        self.reload_rollout = reload_rollout
        self.reconcile_steps = reconcile_steps
        self.refresh_nodes = refresh_nodes
        self.on_commands = on_commands
        self.reconcile_seconds = reconcile_seconds
        self.clock = clock
        # What to reload, in arrival order; a repeat before it is applied is one reload.
        self._pending: dict[tuple[ChangeKind, str], None] = {}
        # The first reconcile comes with the listener's first connect (start-up loaded it all).
        self._reconcile_due = False
        self._last_reconcile = clock()
        self._wake = asyncio.Event()
        self.applied = 0  # changes applied (metrics: follow.metrics)
        self.reconciles = 0  # full reconciles that read everything
        self._retry_pending = False  # a read failed: a full reconcile follows in RETRY_SECONDS
        self._reconciling = False

    @property
    def reconcile_pending(self) -> bool:
        """A full reconcile is due or running: after a (re)connect, or soon after a read that failed."""
        return self._reconcile_due or self._reconciling or self._retry_pending

    def on_change(self, change: Change) -> None:
        """A notification arrived (called by the listener; never blocks)."""
        if change.kind is ChangeKind.COMMANDS:
            if self.on_commands is not None:
                self.on_commands()
            return
        if change.origin == self.origin and change.kind is not ChangeKind.REGISTRY:
            return
        self._pending[(change.kind, change.model_name)] = None
        self._wake.set()

    async def request_reconcile(self) -> None:
        """Read everything again soon (the listener calls this after each connect)."""
        self._reconcile_due = True
        self._wake.set()

    async def run(self) -> None:
        while True:
            timeout = max(0.0, self._last_reconcile + self.reconcile_seconds - self.clock())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            if self._reconcile_due or self.clock() - self._last_reconcile >= self.reconcile_seconds:
                await self._reconcile()
            await self._apply_pending()

    async def _reconcile(self) -> None:
        self._reconcile_due = False  # a connect while this one reads asks for another
        self._last_reconcile = self.clock()
        self._pending.clear()  # what was pending is read anyway
        self._reconciling = True
        try:
            for step in self.reconcile_steps:
                await step()
            if self.refresh_nodes is not None:
                await self.refresh_nodes()
        except Exception as exc:
            self._retry_soon(f"reconcile failed: {exc}")
            return
        finally:
            self._reconciling = False
        self.reconciles += 1
        self._retry_pending = False

    async def _apply_pending(self) -> None:
        while self._pending:
            kind, model_name = next(iter(self._pending))
            del self._pending[(kind, model_name)]
            try:
                await self._apply(kind, model_name)
            except Exception as exc:
                self._retry_soon(f"{kind.value} change of {model_name or 'nodes'} not applied: {exc}")
                return
            self.applied += 1

    async def _apply(self, kind: ChangeKind, model_name: str) -> None:
        if kind in ROUTING_KINDS:
            # The model's other routing kinds pending now are read by this same reload.
            for other in ROUTING_KINDS:
                self._pending.pop((other, model_name), None)
            await self.reload_routing(model_name)
        elif kind is ChangeKind.ROLLOUT:
            await self.reload_rollout(model_name)
        elif kind is ChangeKind.NODES and self.refresh_nodes is not None:
            await self.refresh_nodes()

    def _retry_soon(self, problem: str) -> None:
        """The database went away mid-read: a full reconcile in RETRY_SECONDS reads it all."""
        log.warning("follower: %s; reconciling in %.0f s", problem, RETRY_SECONDS)
        self._retry_pending = True
        self._pending.clear()
        self._reconcile_due = False
        self._last_reconcile = self.clock() - self.reconcile_seconds + RETRY_SECONDS
