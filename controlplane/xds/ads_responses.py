"""ADS responses made once per published version and shared by every stream: purely computational, no I/O.

Streams ask here instead of encoding: a state-of-the-world response for a (type,
version, names) is assembled once (each stream appends its nonce); a delta
`Resource` once per resource version (kept as long as its ResourceEntry lives);
a published type as a name -> version map once per version, the same object for
every stream, so delta diffs between two of them are shared too.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Mapping
from typing import TypeVar

from controlplane.xds import ads_messages
from controlplane.xds.ads_protocol import WILDCARD, DiffCache, PublishedType
from controlplane.xds.snapshot import Entry, ResourceType, Snapshot

# Shared state-of-the-world responses kept: a few versions of each type and name set.
BODY_CACHE_SIZE = 64
# Published types (name -> version maps) kept for delta streams.
PUBLISHED_CACHE_SIZE = 16

K = TypeVar("K")
V = TypeVar("V")


class SharedResponses:
    """The bytes and maps every ADS stream shares; bounded, newest kept."""

    def __init__(self) -> None:
        self._bodies: OrderedDict[tuple[ResourceType, str, frozenset[str]], bytes] = OrderedDict()
        self._published: OrderedDict[
            tuple[ResourceType, str], tuple[PublishedType, Mapping[str, Entry]]
        ] = OrderedDict()
        # Keyed by the entry itself: an entry a later snapshot reuses keeps its bytes.
        self._delta_resources: weakref.WeakKeyDictionary[Entry, bytes] = weakref.WeakKeyDictionary()
        self.diffs = {kind: DiffCache() for kind in ResourceType}

    def sotw_body(self, snapshot: Snapshot, kind: ResourceType, names: frozenset[str]) -> bytes:
        """The DiscoveryResponse for (type, version, names) without its nonce."""
        version = snapshot.ads_versions[kind]
        key = (kind, version, names)
        body = _get(self._bodies, key)
        if body is None:
            _, entries = self.published(snapshot, kind)
            chosen = entries.keys() if WILDCARD in names else sorted(n for n in names if n in entries)
            body = ads_messages.sotw_response(version, str(kind), (entries[name].encoded for name in chosen))
            _put(self._bodies, key, body, BODY_CACHE_SIZE)
        return body

    def published(
        self, snapshot: Snapshot, kind: ResourceType
    ) -> tuple[PublishedType, Mapping[str, Entry]]:
        """One type of the snapshot by name (entries sorted by name), per version."""
        version = snapshot.ads_versions[kind]
        key = (kind, version)
        hit = _get(self._published, key)
        if hit is None:
            entries = {entry.name: entry for entry in snapshot.entries(kind, ads=True)}
            hit = (PublishedType(version, {name: e.version for name, e in entries.items()}), entries)
            _put(self._published, key, hit, PUBLISHED_CACHE_SIZE)
        return hit

    def delta_resource(self, kind: ResourceType, entry: Entry) -> bytes:
        """A delta Resource (name, version, the resource in an Any)."""
        encoded = self._delta_resources.get(entry)
        if encoded is None:
            encoded = ads_messages.delta_resource(entry.name, entry.version, str(kind), entry.encoded)
            self._delta_resources[entry] = encoded
        return encoded


def _get(store: OrderedDict[K, V], key: K) -> V | None:
    value = store.get(key)
    if value is not None:
        store.move_to_end(key)
    return value


def _put(store: OrderedDict[K, V], key: K, value: V, size: int) -> None:
    store[key] = value
    while len(store) > size:
        store.popitem(last=False)
