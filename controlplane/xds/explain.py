"""Finds the reason for a rejection Envoy cut short, by running `envoy --mode validate` on it.

Envoy's NACK message quotes the whole rejected proto before the reason and is cut
at 4,096 characters ("...(truncated)"), so with more than a few models the reason
never reaches the control plane. When a NACK arrives cut and the rejected version
is the one published now, Aegis validates that version itself, in the background,
and shows Envoy's reason from that run beside the node. I/O: runs a process.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from typing import Any

from controlplane.xds.cache import XdsCache
from controlplane.xds.nodes import NodeTracker
from controlplane.xds.snapshot import ResourceType
from controlplane.xds.validate import EnvoyUnavailable, validate_with_envoy

log = logging.getLogger(__name__)

TRUNCATION_MARK = "...(truncated)"
# Explanations kept by (type, version): every node rejecting the same version shares one run.
EXPLAINED_SIZE = 32


class RejectionExplainer:
    """Completes cut NACK messages with the reason `envoy --mode validate` gives."""

    def __init__(self, cache: XdsCache, nodes: NodeTracker, *, envoy_binary: str) -> None:
        self.cache = cache
        self.nodes = nodes
        self.envoy_binary = envoy_binary
        self._explained: OrderedDict[tuple[ResourceType, str], str] = OrderedDict()
        self._running: dict[tuple[ResourceType, str], asyncio.Task[None]] = {}
        self._waiting: dict[tuple[ResourceType, str], set[str]] = {}

    def explain(self, node_id: str, kind: ResourceType, version: str, message: str) -> None:
        """Called with each NACK; does something only when the message was cut before its reason."""
        if not message.rstrip().endswith(TRUNCATION_MARK):
            return
        key = (kind, version)
        known = self._explained.get(key)
        if known is not None:
            self.nodes.explain_rejection(node_id, kind, version, known)
            return
        self._waiting.setdefault(key, set()).add(node_id)
        snapshot = self.cache.current
        if key in self._running or version not in (snapshot.ads_versions[kind], snapshot.versions[kind]):
            return  # already being explained, or no longer published: nothing to run it on
        task = asyncio.get_running_loop().create_task(self._run(key, snapshot))
        self._running[key] = task
        task.add_done_callback(lambda _: self._running.pop(key, None))

    async def _run(self, key: tuple[ResourceType, str], snapshot: Any) -> None:
        try:
            result = await validate_with_envoy(snapshot, envoy_binary=self.envoy_binary)
        except EnvoyUnavailable as exc:
            log.warning("could not find why Envoy rejected %s %s: %s", key[0].name, key[1][:12], exc)
            return
        if result.ok:
            text = "envoy --mode validate accepts this version; the reason is in the rejecting Envoy's log"
        else:
            text = f"{result.message} (Envoy cut its own message; reason from envoy --mode validate)"
        self._explained[key] = text
        while len(self._explained) > EXPLAINED_SIZE:
            self._explained.popitem(last=False)
        for node_id in self._waiting.pop(key, set()):
            self.nodes.explain_rejection(node_id, key[0], key[1], text)
        log.warning("Envoy rejected %s version %s: %s", key[0].name, key[1][:12], text)
