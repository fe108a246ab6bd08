"""Node tokens for the xDS endpoints: which bearer token may speak for which Envoy node.

Envoy's xDS clients send no credential of their own, but an upstream
`header_mutation` filter on the bootstrap's `xds_cluster` adds
`Authorization: Bearer %ENVIRONMENT(AEGIS_XDS_NODE_TOKEN)%` to every REST poll and
to the ADS stream's headers, which gRPC reads as metadata (see envoy/envoy.yaml and
envoy/envoy-rest.yaml), so the token lives in Envoy's environment, not in its config.
Pure: no I/O; tokens are kept as SHA-256 digests and compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from enum import StrEnum

ANY_NODE = "*"
# What Envoy's %ENVIRONMENT(NAME)% becomes when NAME is not set.
ENVOY_UNSET_VALUE = "-"


class NodeTokenConfigError(ValueError):
    """AEGIS_XDS_NODE_TOKENS cannot be parsed; the message names the entry, never the secret."""


class Verdict(StrEnum):
    OPEN = "open"            # no tokens configured: every poll is taken, none is authenticated
    MISSING = "missing"      # tokens configured, none presented: 401
    UNKNOWN = "unknown"      # a token no entry has: 403
    ACCEPTED = "accepted"    # a configured token (which nodes it may speak for is checked apart)


@dataclass(frozen=True)
class TokenCheck:
    verdict: Verdict
    nodes: frozenset[str] = frozenset()

    def allows(self, node_id: str) -> bool:
        """Whether the presented token may speak for `node_id`."""
        if self.verdict is Verdict.OPEN:
            return True
        return self.verdict is Verdict.ACCEPTED and (ANY_NODE in self.nodes or node_id in self.nodes)


@dataclass(frozen=True)
class NodeCredentials:
    entries: tuple[tuple[bytes, str], ...] = field(repr=False, default=())

    @property
    def required(self) -> bool:
        return bool(self.entries)

    @classmethod
    def parse(cls, spec: str) -> NodeCredentials:
        """`node_id:token` pairs, comma-separated; `*:token` may speak for any node id."""
        entries: list[tuple[bytes, str]] = []
        for index, item in enumerate(part.strip() for part in spec.split(",")):
            if not item:
                continue
            node_id, sep, token = item.partition(":")
            if not sep or not node_id.strip():
                raise NodeTokenConfigError(
                    f"AEGIS_XDS_NODE_TOKENS entry {index + 1} is not 'node_id:token' or '*:token'"
                )
            token = token.strip()
            if not token or token == ENVOY_UNSET_VALUE:
                raise NodeTokenConfigError(f"AEGIS_XDS_NODE_TOKENS entry {index + 1} has an empty token")
            entries.append((_digest(token), node_id.strip()))
        return cls(tuple(entries))

    def check(self, authorization: str | None) -> TokenCheck:
        """What the poll's Authorization header proves (pure; constant time over all entries)."""
        if not self.entries:
            return TokenCheck(Verdict.OPEN)
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or token == ENVOY_UNSET_VALUE:
            return TokenCheck(Verdict.MISSING)
        presented = _digest(token)
        nodes = set()
        # Compare against every entry so the time taken does not reveal which matched.
        for digest, node_id in self.entries:
            if hmac.compare_digest(digest, presented):
                nodes.add(node_id)
        return TokenCheck(Verdict.ACCEPTED, frozenset(nodes)) if nodes else TokenCheck(Verdict.UNKNOWN)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()
