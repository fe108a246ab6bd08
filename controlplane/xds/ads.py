"""The gRPC ADS server: state-of-the-world and delta aggregated discovery over the published snapshot.

`envoy.service.discovery.v3.AggregatedDiscoveryService` on its own listener
(AEGIS_XDS_GRPC_LISTEN), in the same event loop as the HTTP API (grpc.aio). Each
stream feeds its requests into the protocol state of ads_protocol.py and writes
what that says is due, whenever a request arrives or a snapshot is published:
a change reaches every connected Envoy without waiting for a poll.

Same snapshot, versions and node table as REST: an ACK or NACK is recorded in the
NodeTracker (a NACK with Envoy's message, logged and counted), acknowledgements of
clusters and routes ask the publisher to rebuild (make before break), and a node
is live while its stream is open.

Work per publish, not per stream: responses and maps come from
ads_responses.SharedResponses, made once per version. Who may speak for a node
is decided by ads_admission.StreamGate before anything is recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import grpc
from envoy.service.discovery.v3 import discovery_pb2

from controlplane.xds import ads_messages
from controlplane.xds.ads_admission import Admission, Context, StreamGate
from controlplane.xds.ads_protocol import (
    DeltaChanges,
    DeltaRequest,
    DeltaTypeState,
    PublishedType,
    RequestKind,
    SotwRequest,
    SotwTypeState,
    delta_plan,
    requested_names,
    sotw_plan,
)
from controlplane.xds.ads_responses import SharedResponses
from controlplane.xds.ads_tls import GrpcTls
from controlplane.xds.cache import Publisher, XdsCache
from controlplane.xds.credentials import NodeCredentials
from controlplane.xds.explain import RejectionExplainer
from controlplane.xds.nodes import (
    NodeTracker,
    PollKind,
    PollOutcome,
    Transport,
    clean_message,
)
from controlplane.xds.server import TYPE_LABELS, XdsMetrics
from controlplane.xds.snapshot import Entry, ResourceType

log = logging.getLogger(__name__)

SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
TYPES_BY_URL = {str(kind): kind for kind in ResourceType}
# A reconnecting delta Envoy declares every resource it has: ~100 bytes each, and
# 10,000 models make ~20,000 resources. Far above that, still bounded.
MAX_REQUEST_BYTES = 16 << 20
# Envoy's NACK message in a log line: the node view keeps the longer form.
LOGGED_MESSAGE_CHARS = 300

BASE_GRPC_OPTIONS: tuple[tuple[str, Any], ...] = (
    # Without this, a second process on the same port would silently share its connections.
    ("grpc.so_reuseport", 0),
    ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
    # An idle stream sends nothing: ping, so that a vanished Envoy's stream ends and the
    # node stops holding rollouts, instead of staying "connected" forever.
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
    # Envoy's own keepalive pings (if its bootstrap sets them) must not get it disconnected.
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_ping_strikes", 0),
)


def grpc_options(*, max_nodes: int) -> tuple[tuple[str, Any], ...]:
    """The server's options; `max_nodes`: the fleet the node table is sized for.

    gRPC's core queues a new stream until this event loop takes it (one at a time)
    and past 1,000 queued it refuses a random share of them, all past 3,000: a fleet
    reconnecting after a restart lost most of its streams and retried with backoff.
    The whole fleet may queue instead; a stream waits there about as long as the
    loop takes to admit the ones before it (a few hundred a second).
    """
    queued = max(max_nodes, 1000)
    return (
        *BASE_GRPC_OPTIONS,
        ("grpc.server.max_pending_requests", queued),
        ("grpc.server.max_pending_requests_hard_limit", queued),
    )


class StreamKind(StrEnum):
    SOTW = "sotw"
    DELTA = "delta"


# Each type of the current snapshot as delta streams see it, and its entries by name.
Published = dict[ResourceType, tuple[PublishedType, Mapping[str, Entry]]]
TRANSPORTS = {StreamKind.SOTW: Transport.ADS, StreamKind.DELTA: Transport.DELTA}
ACKNOWLEDGED_TYPES = (ResourceType.CLUSTER, ResourceType.ROUTE)


@dataclass(eq=False)
class _Stream:
    kind: StreamKind
    admission: Admission
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    closed: bool = False
    # Whether a response is due now (the protocol state's plan is not empty); asked after an ACK.
    due: Callable[[], bool] = lambda: True
    nonces: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    # Unknown type URLs this stream asked for, reported once each.
    ignored_types: set[str] = field(default_factory=set)

    @property
    def node_id(self) -> str:
        return self.admission.node_id

    def next_nonce(self) -> str:
        return str(next(self.nonces))


class AdsServer:
    """Serves ADS streams from the published snapshot; `start` binds the gRPC listener."""

    def __init__(
        self, cache: XdsCache, nodes: NodeTracker, publisher: Publisher, metrics: XdsMetrics, *,
        credentials: NodeCredentials, tls: GrpcTls | None = None,
        explainer: RejectionExplainer | None = None,
    ) -> None:
        self.cache = cache
        self.explainer = explainer
        self.nodes = nodes
        self.publisher = publisher
        self.metrics = metrics
        self.tls = tls
        self.gate = StreamGate(
            credentials, tls,
            on_refused=lambda kind, code: metrics.refused_streams.labels(kind, code.name.lower()).inc(),
        )
        self.shared = SharedResponses()
        self.port: int | None = None
        self._server: grpc.aio.Server | None = None
        self._fan_out: asyncio.Task[None] | None = None
        self._streams: set[_Stream] = set()
        # Labelled metric children, looked up once: a fan-out counts thousands of responses.
        self._responses = {
            (kind, stream_kind): metrics.responses.labels(TYPE_LABELS[kind], stream_kind.value)
            for kind in ResourceType for stream_kind in StreamKind
        }

    # --- lifecycle -----------------------------------------------------------------

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
                    self.stream_aggregated_resources,
                    request_deserializer=discovery_pb2.DiscoveryRequest.FromString,
                    response_serializer=_as_bytes,
                ),
                "DeltaAggregatedResources": grpc.stream_stream_rpc_method_handler(
                    self.delta_aggregated_resources,
                    request_deserializer=discovery_pb2.DeltaDiscoveryRequest.FromString,
                    response_serializer=_as_bytes,
                ),
            },
        )

    async def start(self, host: str, port: int) -> int:
        """Bind and serve; returns the port (useful with port 0). Raises OSError if it cannot bind."""
        options = grpc_options(max_nodes=self.nodes.max_nodes)
        server = grpc.aio.server(handlers=[self.handler()], options=options)
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            if self.tls is None:
                bound = server.add_insecure_port(address)
            else:
                credentials = grpc.ssl_server_credentials(
                    [(self.tls.private_key, self.tls.certificate_chain)],
                    root_certificates=self.tls.client_ca,
                    require_client_auth=self.tls.mutual,
                )
                bound = server.add_secure_port(address, credentials)
        except RuntimeError as exc:
            bound = 0
            reason = str(exc)
        else:
            reason = "the port is taken or the address is not this machine's"
        if not bound:
            raise OSError(f"AEGIS_XDS_GRPC_LISTEN={host}:{port}: cannot listen there ({reason})")
        await server.start()
        self._server, self.port = server, int(bound)
        self._fan_out = asyncio.get_running_loop().create_task(self._wake_on_publish())
        mode = "plaintext" if self.tls is None else ("mutual TLS" if self.tls.mutual else "TLS")
        log.info("gRPC ADS (state of the world and delta) on %s:%d, %s", host, self.port, mode)
        return self.port

    async def stop(self, grace: float) -> None:
        """End every stream (Envoy keeps its config and reconnects elsewhere), then the server."""
        for stream in list(self._streams):
            stream.closed = True
            stream.wake.set()
        if self._fan_out is not None:
            self._fan_out.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._fan_out
        if self._server is not None:
            await self._server.stop(grace)

    async def _wake_on_publish(self) -> None:
        """One waiter for every stream: a publish wakes them all."""
        while True:
            if await self.cache.wait_for_change(3600):
                for stream in self._streams:
                    stream.wake.set()

    # --- state of the world --------------------------------------------------------

    async def stream_aggregated_resources(
        self, requests: AsyncIterator[discovery_pb2.DiscoveryRequest], context: Context
    ) -> None:
        token = await self.gate.check_token(context, StreamKind.SOTW)
        first = await anext(aiter(requests), None)
        if first is None:
            return
        admission = await self.gate.admit(context, StreamKind.SOTW, first.node, token)
        stream = _Stream(StreamKind.SOTW, admission)
        states: dict[ResourceType, SotwTypeState] = {}
        rejected = self._rejected_by(stream)

        def take(request: discovery_pb2.DiscoveryRequest) -> RequestKind | None:
            kind = self._known_type(stream, request.type_url)
            if kind is None:
                return None
            state = states.setdefault(kind, SotwTypeState())
            sent_version = state.sent_version
            answer = state.receive(
                SotwRequest(
                    request.version_info,
                    requested_names(kind, list(request.resource_names)),
                    request.response_nonce,
                    request.error_detail.message if request.HasField("error_detail") else None,
                )
            )
            self._record(stream, kind, answer, reported=request.version_info, answered=sent_version,
                         message=request.error_detail.message)
            return answer

        def due() -> bool:
            return bool(sotw_plan(states, self.cache.current.ads_versions, rejected=rejected))

        async def write_due() -> None:
            snapshot = self.cache.current
            versions = snapshot.ads_versions
            for kind in sotw_plan(states, versions, rejected=rejected):
                state = states[kind]
                body = self.shared.sotw_body(snapshot, kind, state.requested)
                nonce = stream.next_nonce()
                state.sent(versions[kind], nonce)
                self._served(stream, kind, versions[kind])
                await context.write(ads_messages.with_nonce(body, nonce))

        # The first request carries the whole node (~50 KB from Envoy): once taken it must
        # not stay referenced from this frame for the stream's life.
        opening = [first]
        del first
        stream.due = due
        await self._serve(stream, opening, requests, take, write_due)

    # --- delta -----------------------------------------------------------------------

    async def delta_aggregated_resources(
        self, requests: AsyncIterator[discovery_pb2.DeltaDiscoveryRequest],
        context: Context,
    ) -> None:
        token = await self.gate.check_token(context, StreamKind.DELTA)
        first = await anext(aiter(requests), None)
        if first is None:
            return
        admission = await self.gate.admit(context, StreamKind.DELTA, first.node, token)
        stream = _Stream(StreamKind.DELTA, admission)
        states: dict[ResourceType, DeltaTypeState] = {}
        rejected = self._rejected_by(stream)

        def take(request: discovery_pb2.DeltaDiscoveryRequest) -> RequestKind | None:
            kind = self._known_type(stream, request.type_url)
            if kind is None:
                return None
            state = states.setdefault(kind, DeltaTypeState())
            pending = state.pending
            answer = state.receive(
                kind,
                DeltaRequest(
                    subscribe=tuple(request.resource_names_subscribe),
                    unsubscribe=tuple(request.resource_names_unsubscribe),
                    initial_versions=dict(request.initial_resource_versions),
                    response_nonce=request.response_nonce,
                    error_message=request.error_detail.message if request.HasField("error_detail") else None,
                ),
            )
            if answer is RequestKind.INITIAL:
                # Delta requests carry no version: a node that declares exactly the current
                # resources runs the current version (a reconnect to a restarted control plane).
                published, _ = self.shared.published(self.cache.current, kind)
                in_sync = (state.wildcard or bool(state.names)) and state.changes(published) is None
                self._record(stream, kind, answer, reported=published.version if in_sync else "", answered="")
                return answer
            answered = pending.system_version if pending is not None else ""
            # An ACK means the node now runs what it was sent; a NACK, whatever it ran before.
            reported = answered if answer is RequestKind.ACK else ""
            self._record(stream, kind, answer, reported=reported, answered=answered,
                         message=request.error_detail.message)
            return answer

        def plan_now() -> tuple[Published, list[tuple[ResourceType, DeltaChanges]]]:
            snapshot = self.cache.current
            published = {kind: self.shared.published(snapshot, kind) for kind in states}
            plan = delta_plan(
                states, {kind: p[0] for kind, p in published.items()},
                rejected=rejected, diffs=self.shared.diffs,
            )
            return published, plan

        def due() -> bool:
            return bool(plan_now()[1])

        async def write_due() -> None:
            published, plan = plan_now()
            for kind, changes in plan:
                current, entries = published[kind]
                nonce = stream.next_nonce()
                body = ads_messages.delta_response(
                    current.version, str(kind),
                    (self.shared.delta_resource(kind, entries[name]) for name in changes.upserts),
                    changes.removals, nonce,
                )
                states[kind].sent(nonce, current, changes)
                self._served(stream, kind, current.version)
                await context.write(body)

        # The first request carries the whole node (~50 KB from Envoy): once taken it must
        # not stay referenced from this frame for the stream's life.
        opening = [first]
        del first
        stream.due = due
        await self._serve(stream, opening, requests, take, write_due)

    # --- both kinds ----------------------------------------------------------------

    async def _serve(
        self, stream: _Stream, opening: list[Any], requests: AsyncIterator[Any],
        take: Callable[[Any], RequestKind | None], write_due: Callable[[], Any],
    ) -> None:
        """Read requests in one task, write what is due in this one, until the stream ends."""
        admission = stream.admission
        self.nodes.stream_opened(
            admission.node_id, admission.cluster, now=time.monotonic(),
            transport=TRANSPORTS[stream.kind], authenticated=admission.authenticated,
        )
        self._streams.add(stream)
        self.metrics.streams.labels(stream.kind.value).inc()
        reader: asyncio.Task[None] | None = None
        try:
            take(opening.pop())
            reader = asyncio.get_running_loop().create_task(self._read(stream, requests, take))
            while not stream.closed:
                stream.wake.clear()
                await write_due()
                await stream.wake.wait()
        finally:
            if reader is not None:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
            self._streams.discard(stream)
            self.metrics.streams.labels(stream.kind.value).dec()
            self.nodes.stream_closed(admission.node_id, now=time.monotonic())

    async def _read(
        self, stream: _Stream, requests: AsyncIterator[Any], take: Callable[[Any], RequestKind | None]
    ) -> None:
        try:
            async for request in requests:
                try:
                    answer = take(request)
                    # Most requests of a fan-out are ACKs of what is current: the writer has
                    # nothing to send, and waking it would cost a task switch per stream.
                    due = answer is not RequestKind.ACK or stream.due()
                except Exception:
                    log.exception("ADS request of node %r not handled; its stream ends", stream.node_id)
                    return
                if due:
                    stream.wake.set()
        except asyncio.CancelledError:
            raise
        except Exception:
            # A broken connection: Envoy reconnects.
            log.debug("ADS stream of node %r ended while reading", stream.node_id, exc_info=True)
        finally:
            stream.closed = True
            stream.wake.set()

    def _known_type(self, stream: _Stream, type_url: str) -> ResourceType | None:
        kind = TYPES_BY_URL.get(type_url)
        if kind is None and type_url not in stream.ignored_types and len(stream.ignored_types) < 8:
            stream.ignored_types.add(type_url)
            log.info("node %r asked for %r over ADS, which Aegis does not serve: ignored",
                     stream.node_id, type_url[:200])
        return kind

    def _rejected_by(self, stream: _Stream) -> Callable[[ResourceType, str], bool]:
        def rejected(kind: ResourceType, version: str) -> bool:
            return self.nodes.has_rejected(stream.node_id, kind, version)

        return rejected

    def _served(self, stream: _Stream, kind: ResourceType, version: str) -> None:
        self.nodes.record_served(stream.node_id, kind, version)
        self._responses[kind, stream.kind].inc()

    def _record(
        self, stream: _Stream, kind: ResourceType, answer: RequestKind, *, reported: str, answered: str,
        message: str = "",
    ) -> None:
        """Tell the node table what a request said. `reported`: the version the node runs;
        `answered`: the version of the response the request answers (ACK or NACK)."""
        admission = stream.admission
        now = time.monotonic()
        if answer is RequestKind.NACK:
            self.nodes.observe_rejection(stream.node_id, kind, answered, message=message, now=now)
            if self.explainer is not None:
                self.explainer.explain(stream.node_id, kind, answered, message)
            self.metrics.rejected.labels(TYPE_LABELS[kind]).inc()
            log.warning(
                "node %r rejected %s version %s over ADS (it keeps %s): %s",
                stream.node_id, TYPE_LABELS[kind], answered[:12], reported[:12] or "its previous config",
                clean_message(message)[:LOGGED_MESSAGE_CHARS] or "(no message)",
            )
            return
        if answer not in (RequestKind.INITIAL, RequestKind.ACK):
            return
        outcome: PollOutcome = self.nodes.observe(
            stream.node_id, admission.cluster, kind, reported, now=now,
            published=self.cache.was_published(kind, reported), authenticated=admission.authenticated,
            transport=TRANSPORTS[stream.kind],
        )
        if outcome.kind is PollKind.UNKNOWN:
            self.metrics.unknown_versions.labels(TYPE_LABELS[kind]).inc()
        if outcome.ack_changed and kind in ACKNOWLEDGED_TYPES:
            self.publisher.request_rebuild(kind, reported)


def _as_bytes(message: bytes) -> bytes:
    """Responses are assembled as bytes already (ads_messages.py)."""
    return message
