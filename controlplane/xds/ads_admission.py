"""Who an ADS stream speaks for: a node token in gRPC metadata, or a client certificate naming the node.

Checked before anything is recorded: the token before the first request is read,
the node id of the first request against it (or, with mutual TLS, against the
names of the client certificate, which is then the node's credential in place of
a token). A refused stream ends with UNAUTHENTICATED, PERMISSION_DENIED or
INVALID_ARGUMENT and a message that says what to fix; refusals are counted and
logged at most once a minute.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn, TypeAlias

import grpc

from controlplane.xds.ads_tls import GrpcTls, certificate_names
from controlplane.xds.credentials import NodeCredentials, TokenCheck, Verdict
from controlplane.xds.nodes import NODE_CLUSTER_MAX_CHARS, NODE_ID_MAX_CHARS

log = logging.getLogger(__name__)

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
# Seconds between warnings about refused streams (a misconfigured Envoy retries every second or so).
REFUSAL_LOG_INTERVAL = 60.0


@dataclass(frozen=True)
class Admission:
    """Who a stream speaks for, once its credentials and first request were checked."""

    node_id: str
    cluster: str
    authenticated: bool


class StreamGate:
    """Admits ADS streams; `on_refused(kind, status)` counts each refusal."""

    def __init__(
        self, credentials: NodeCredentials, tls: GrpcTls | None, *,
        on_refused: Callable[[str, grpc.StatusCode], None],
    ) -> None:
        self.credentials = credentials
        self.mutual_tls = tls is not None and tls.mutual
        self.on_refused = on_refused
        self._last_refusal_log = -REFUSAL_LOG_INTERVAL

    async def check_token(self, context: Context, kind: str) -> TokenCheck:
        """The stream's node token, before any request is read."""
        token = self.credentials.check(_metadata(context, "authorization"))
        if self.mutual_tls:
            return token  # the certificate is the credential: a token is not consulted
        if token.verdict is Verdict.MISSING:
            await self._refuse(
                context, kind, grpc.StatusCode.UNAUTHENTICATED,
                "this xDS server needs a node token: send gRPC metadata 'authorization: Bearer <token>' "
                "(the bootstrap's grpc_services initial_metadata)",
            )
        if token.verdict is Verdict.UNKNOWN:
            await self._refuse(
                context, kind, grpc.StatusCode.PERMISSION_DENIED,
                "the node token is not one of AEGIS_XDS_NODE_TOKENS",
            )
        return token

    async def admit(self, context: Context, kind: str, node: Any, token: TokenCheck) -> Admission:
        """The node the first request names, if the stream's credentials may speak for it."""
        node_id, cluster = str(node.id), str(node.cluster)
        if not node_id:
            await self._refuse(
                context, kind, grpc.StatusCode.INVALID_ARGUMENT,
                "the first request on an ADS stream must carry node.id",
            )
        if len(node_id) > NODE_ID_MAX_CHARS or len(cluster) > NODE_CLUSTER_MAX_CHARS:
            await self._refuse(
                context, kind, grpc.StatusCode.INVALID_ARGUMENT,
                f"node.id (at most {NODE_ID_MAX_CHARS} characters) or node.cluster "
                f"(at most {NODE_CLUSTER_MAX_CHARS}) is too long to be real",
            )
        if self.mutual_tls:
            names = _certificate_names(context)
            if node_id not in names:
                await self._refuse(
                    context, kind, grpc.StatusCode.PERMISSION_DENIED,
                    f"the client certificate names {sorted(names)!r} (CN, DNS and URI SANs), "
                    f"not node id {node_id!r}",
                )
            return Admission(node_id, cluster, authenticated=True)
        if not token.allows(node_id):
            await self._refuse(
                context, kind, grpc.StatusCode.PERMISSION_DENIED,
                "the node token is not valid for this node id "
                "(AEGIS_XDS_NODE_TOKENS pairs node ids with tokens)",
            )
        return Admission(node_id, cluster, authenticated=token.verdict is Verdict.ACCEPTED)

    async def _refuse(self, context: Context, kind: str, code: grpc.StatusCode, message: str) -> NoReturn:
        self.on_refused(kind, code)
        now = time.monotonic()
        if now - self._last_refusal_log >= REFUSAL_LOG_INTERVAL:
            self._last_refusal_log = now
            log.warning("refused an ADS stream (%s): %s; further refusals are only counted for a minute",
                        code.name, message)
        await context.abort(code, message)
        raise AssertionError("context.abort returns only by raising")


def _metadata(context: Context, key: str) -> str | None:
    for name, value in context.invocation_metadata() or ():
        if name == key:
            return value if isinstance(value, str) else None
    return None


def _certificate_names(context: Context) -> frozenset[str]:
    pems = context.auth_context().get("x509_pem_cert") or []
    if not pems:
        return frozenset()
    try:
        return certificate_names(pems[0])
    except ValueError:
        return frozenset()
