"""xds_streams: thousands of simulated Envoys on ADS against a real `aegis serve`: memory and fan-out.

Each simulated Envoy is one gRPC `StreamAggregatedResources` stream that behaves
like Envoy's ADS client: its first request carries the node (the real ~61 KB node
of reference/samples/envoy-1.40-rest-poll.json, with its own node id) and the node
token as `authorization: Bearer` metadata; it subscribes the runtime layer (RTDS,
by the name the bootstrap gives), CDS and LDS (wildcard), ACKs every response with
its version and nonce, and once the listener arrives subscribes RDS by the name the
listener gives. The streams run in several client
processes (multiprocessing, spawn), each with a few `grpc.aio` channels (own
HTTP/2 connections) carrying many streams, so that two cores spend their time in
the server, not in the clients; the details give the clients' CPU time.

Measured: the server's RSS with every stream subscribed (target < 1 GiB) and its
peak, and the time for one weight change (`PUT /v1/traffic`, one model with prod
and canary) to reach every stream: from the PUT to the last stream receiving the
new runtime version, which carries the weights (target <= 1 s), median over several
changes.

Baseline, same run, same node count: REST long-poll. As many simulated Envoys
poll the runtime layer over REST with the full ~80 KB JSON node in every poll (what
Envoy 1.40 sends), wait R..2R after each answer (R: the `refresh_delay` of the REST
bootstrap and of the RDS Aegis gives REST Envoys, AEGIS_XDS_RDS_REFRESH_DELAY_MS,
250 ms by default) and are held by the
server while up to date; the hold is raised to 60 s so that every node sits in a
held poll when the change comes (the kindest case for REST: with the shipped 5 s
hold they would also re-poll every 5 s). Time from the PUT to the last node
answered with the new version, median over the same number of changes.
value = ADS fan-out median (ms), ratio = value / REST fan-out median.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import random
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ADMIN_TOKEN, free_port, report, rss_bytes, running_server
from bench.xds_poll import SAMPLE, BodyMaker, client_session, cpu_seconds, node_template, raise_open_files
from controlplane.settings import load_settings

MIB = 1 << 20
MODEL = "bench-streams"
NODE_TOKEN = "bench-xds-node-token"
CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
LDS = "type.googleapis.com/envoy.config.listener.v3.Listener"
RDS = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
RTDS = "type.googleapis.com/envoy.service.runtime.v3.Runtime"
RUNTIME_LAYER = "aegis_weights"  # the bootstraps' RTDS layer: the weights
TARGET_SECONDS = 1.0
CLIENT_NICENESS = 10
REST_REFRESH_SECONDS = load_settings({}).xds.rds_refresh_delay_ms / 1000
TARGET_RSS_BYTES = 1 << 30

# Events a client process sends up: (kind, stream, version or message, monotonic time).
Event = tuple[str, int, str, float]


@dataclass(frozen=True)
class ClientPlan:
    """What one client process runs: `streams` simulated Envoys from `first_stream` on."""

    transport: str  # "ads" or "rest"
    first_stream: int
    streams: int
    channels: int
    target: str  # host:port of the gRPC listener, or the REST discovery base URL
    node: dict[str, Any] = field(repr=False)
    wave: int = 100
    opening: int = 50


# --- the simulated Envoys (in the client processes) ----------------------------------


def client_main(plan: ClientPlan, conn: Connection) -> None:
    # Below the server's priority: on two shared cores the clients take only what the
    # server leaves, so a slow fan-out is the server's and not the clients' doing.
    os.nice(CLIENT_NICENESS)
    run = ads_client if plan.transport == "ads" else rest_client
    asyncio.run(run(plan, conn))


async def report_events(conn: Connection, events: list[Event], stop: asyncio.Event) -> None:
    """Send the collected events up every 50 ms; a message from the parent means stop.

    Events carry the time they happened, so the batching delays no measurement.
    """
    while not stop.is_set():
        await asyncio.sleep(0.05)
        if events:
            batch = events[:]
            events.clear()
            conn.send(batch)
        if conn.poll():
            stop.set()


def route_names(response: Any) -> list[str]:
    """The route config names an LDS response's listeners ask for over RDS."""
    from envoy.config.listener.v3 import listener_pb2
    from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2

    names = []
    for resource in response.resources:
        listener = listener_pb2.Listener.FromString(resource.value)
        for chain in listener.filter_chains:
            for network_filter in chain.filters:
                manager = http_connection_manager_pb2.HttpConnectionManager.FromString(
                    network_filter.typed_config.value
                )
                if manager.HasField("rds"):
                    names.append(manager.rds.route_config_name)
    return names


async def ads_client(plan: ClientPlan, conn: Connection) -> None:
    import grpc
    from envoy.config.core.v3 import base_pb2
    from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
    from google.protobuf import json_format

    base_node = json_format.ParseDict(plan.node, base_pb2.Node(), ignore_unknown_fields=True)
    events: list[Event] = []
    stop = asyncio.Event()
    metadata = (("authorization", f"Bearer {NODE_TOKEN}"),)
    # A local subchannel pool: each channel its own HTTP/2 connection (gRPC shares one otherwise).
    channels = [
        grpc.aio.insecure_channel(plan.target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(plan.channels)
    ]
    stubs = [ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel) for channel in channels]
    # Streams opened and not yet answered, at most: a ramp, so that the subscription phase
    # measures the server rather than these processes (the server also takes a burst:
    # tests/integration/test_xds_ads_burst.py).
    opening = asyncio.Semaphore(plan.opening)

    async def envoy(stream: int) -> None:
        """One Envoy: a stream, and a new one after a failure (backoff 0.25 s doubling to 5 s)."""
        node = base_pb2.Node()
        node.CopyFrom(base_node)
        node.id = f"bench-ads-{stream}"
        acked: dict[str, str] = {}  # type -> last version, sent again on a new stream as Envoy does
        names: dict[str, list[str]] = {RTDS: [RUNTIME_LAYER], CDS: [], LDS: []}
        backoff = 0.25
        while True:
            await opening.acquire()
            waiting = True
            call = stubs[stream % len(stubs)].StreamAggregatedResources(metadata=metadata)
            try:
                for index, type_url in enumerate(names):
                    await call.write(discovery_pb2.DiscoveryRequest(
                        node=node if index == 0 else None, type_url=type_url,
                        version_info=acked.get(type_url, ""), resource_names=names[type_url],
                    ))
                while True:
                    response = await call.read()
                    if waiting:
                        opening.release()
                        waiting = False
                    if response is grpc.aio.EOF:
                        events.append(("error", stream, "stream ended by the server", time.monotonic()))
                        break
                    backoff = 0.25
                    if response.type_url == RTDS:
                        events.append(("weights", stream, response.version_info, time.monotonic()))
                    acked[response.type_url] = response.version_info
                    await call.write(discovery_pb2.DiscoveryRequest(
                        type_url=response.type_url, version_info=response.version_info,
                        response_nonce=response.nonce, resource_names=names.get(response.type_url, []),
                    ))
                    if response.type_url == LDS and RDS not in names:
                        names[RDS] = route_names(response)
                        await call.write(
                            discovery_pb2.DiscoveryRequest(type_url=RDS, resource_names=names[RDS])
                        )
            except grpc.aio.AioRpcError as exc:
                events.append(("error", stream, f"{exc.code().name}: {exc.details()}", time.monotonic()))
            except asyncio.CancelledError:
                call.cancel()
                raise
            finally:
                if waiting:
                    opening.release()
            call.cancel()
            await asyncio.sleep(random.uniform(backoff / 2, backoff))
            backoff = min(backoff * 2, 5.0)

    reporter = asyncio.create_task(report_events(conn, events, stop))
    streams: list[asyncio.Task[None]] = []
    for start in range(0, plan.streams, plan.wave):
        for offset in range(start, min(start + plan.wave, plan.streams)):
            streams.append(asyncio.create_task(envoy(plan.first_stream + offset)))
        await asyncio.sleep(0.05)
    await stop.wait()
    for task in streams:
        task.cancel()
    await asyncio.gather(*streams, return_exceptions=True)
    for channel in channels:
        await channel.close()
    await reporter


async def rest_client(plan: ClientPlan, conn: Connection) -> None:
    events: list[Event] = []
    stop = asyncio.Event()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {NODE_TOKEN}"}
    makers: dict[str, BodyMaker] = {}

    def body(node_id: str, version: str) -> bytes:
        if version not in makers:
            makers[version] = BodyMaker.for_node(
                plan.node, version, type_url=RTDS, resource_names=(RUNTIME_LAYER,)
            )
        return makers[version].body(node_id)

    async def envoy(session: Any, stream: int) -> None:
        node_id, version = f"bench-rest-{stream}", ""
        while True:
            events.append(("polled", stream, version, time.monotonic()))
            try:
                async with session.post(
                    f"{plan.target}/v3/discovery:runtime", data=body(node_id, version), headers=headers
                ) as response:
                    payload = await response.read()
                    status = response.status
            except Exception as exc:  # any failure is counted, then polled again, as Envoy does
                events.append(("error", stream, type(exc).__name__, time.monotonic()))
                await asyncio.sleep(1)
                continue
            if status == 200:
                version = json.loads(payload)["version_info"]
                events.append(("weights", stream, version, time.monotonic()))
            elif status != 304:
                events.append(("error", stream, f"HTTP {status}", time.monotonic()))
            # Envoy waits R..2R after each answer (R: the bootstrap's refresh_delay).
            await asyncio.sleep(random.uniform(REST_REFRESH_SECONDS, 2 * REST_REFRESH_SECONDS))

    reporter = asyncio.create_task(report_events(conn, events, stop))
    async with client_session(timeout=180) as session:
        nodes: list[asyncio.Task[None]] = []
        for start in range(0, plan.streams, plan.wave):
            for offset in range(start, min(start + plan.wave, plan.streams)):
                nodes.append(asyncio.create_task(envoy(session, plan.first_stream + offset)))
            await asyncio.sleep(0.2)
        await stop.wait()
        for task in nodes:
            task.cancel()
        await asyncio.gather(*nodes, return_exceptions=True)
    await reporter


# --- the parent: collecting what the streams saw -------------------------------------


class Collector:
    """Reads the client processes' events on a thread; answers "has every stream seen X"."""

    def __init__(self, conns: list[Connection], streams: int) -> None:
        self.conns = conns
        self.streams = streams
        self.lock = threading.Lock()
        self.latest: dict[int, str] = {}  # stream -> last runtime version received
        self.arrivals: dict[tuple[int, str], float] = {}  # (stream, version) -> first received
        self.polled: dict[int, str] = {}  # REST: the version of each node's last poll
        self.errors: Counter[str] = Counter()
        self.closed = False
        self.workers: list[Any] = []  # the client processes, to stop waiting when one died
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        open_conns = list(self.conns)
        while open_conns and not self.closed:
            for conn in wait(open_conns, timeout=0.1):
                assert isinstance(conn, Connection)
                try:
                    batch: list[Event] = conn.recv()
                except (EOFError, OSError):  # the client process has ended
                    open_conns.remove(conn)
                    continue
                with self.lock:
                    for kind, stream, text, at in batch:
                        if kind == "weights":
                            self.latest[stream] = text
                            self.arrivals.setdefault((stream, text), at)
                        elif kind == "polled":
                            self.polled[stream] = text
                        else:
                            self.errors[text] += 1

    def until(self, condition: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.clients_failed():
            with self.lock:
                if condition():
                    return True
            time.sleep(0.01)
        with self.lock:
            return condition()

    def clients_failed(self) -> bool:
        return any(worker.exitcode not in (None, 0) for worker in self.workers)

    def moved_on(self, before: str) -> bool:
        """Every stream has received one same runtime version, other than `before`."""
        version = self.common_version()
        return version is not None and version != before

    def all_polled(self, version: str) -> bool:
        """REST: every node's last poll carried `version` (so it is held, up to date)."""
        return len(self.polled) == self.streams and set(self.polled.values()) == {version}

    def common_version(self) -> str | None:
        """The runtime version every stream has last received, if they all agree."""
        versions = set(self.latest.values())
        if len(self.latest) == self.streams and len(versions) == 1:
            return versions.pop()
        return None


class CpuSampler:
    """CPU time of the server and of the client processes, sampled every 20 ms on a thread."""

    def __init__(self, server: int, clients: list[int]) -> None:
        self.server, self.clients = server, clients
        self.samples: list[tuple[float, float, float]] = []
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while self.running:
            clients = sum(cpu_seconds(pid) for pid in self.clients)
            self.samples.append((time.monotonic(), cpu_seconds(self.server), clients))
            time.sleep(0.02)

    def between(self, start: float, end: float) -> tuple[float, float]:
        """(server, clients) CPU seconds from the sample before `start` to the one after `end`."""
        samples = list(self.samples)
        first = max((s for s in samples if s[0] <= start), default=samples[0])
        last = min((s for s in samples if s[0] >= end), default=samples[-1])
        return last[1] - first[1], last[2] - first[2]

    def stop(self) -> None:
        self.running = False
        self.thread.join()


def settle(pids: list[int], *, timeout: float = 60) -> None:
    """Until these processes have been idle for a second (under 6 % of a core each half second).

    CPU time comes in 10 ms ticks, and an idle client process still wakes to report.
    """
    deadline = time.monotonic() + timeout
    last = [cpu_seconds(pid) for pid in pids]
    quiet = 0
    while time.monotonic() < deadline and quiet < 2:
        time.sleep(0.5)
        now = [cpu_seconds(pid) for pid in pids]
        busiest = max(b - a for a, b in zip(last, now, strict=True))
        quiet = quiet + 1 if busiest < 0.03 else 0
        last = now
    if quiet < 2:
        print(f"not quiet after {timeout} s: {busiest:.3f} s of CPU in the last 0.5 s", file=sys.stderr)


def server_log_tail(data_dir: Path, lines: int = 8) -> list[str]:
    """The server's last warnings and errors, shortened (why streams failed, if it says)."""
    log = data_dir / "aegis.log"
    if not log.exists():
        return []
    notable = [line[:300] for line in log.read_text(errors="replace").splitlines()
               if "WARNING" in line or "ERROR" in line]
    return notable[-lines:]


def api(url: str, method: str, path: str, body: Any = None) -> Any:
    request = urllib.request.Request(
        url + path, method=method, data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read() or b"null")


def prepare_model(url: str) -> None:
    """One model: prod 1 and canary 2, each with an endpoint, split 90/10."""
    for version, stage, port in (("1", "prod", 9001), ("2", "canary", 9002)):
        boundary = "bench-boundary"
        metadata = json.dumps({"model_name": MODEL, "version": version})
        body = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="metadata"\r\n'
            f"Content-Type: application/json\r\n\r\n{metadata}\r\n"
            f'--{boundary}\r\nContent-Disposition: form-data; name="artifact"; filename="m.bin"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\nweights {version}\r\n--{boundary}--\r\n"
        ).encode()
        request = urllib.request.Request(
            f"{url}/v1/registry/register", data=body, method="POST",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}",
                     "Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        urllib.request.urlopen(request, timeout=60).close()
        api(url, "POST", f"/v1/registry/{MODEL}/{version}/promote", {"stage": stage})
        api(url, "POST", "/v1/endpoints", {"model_name": MODEL, "version": version,
                                           "address": "127.0.0.1", "port": port, "ttl_seconds": 3600})
    api(url, "PUT", f"/v1/traffic/{MODEL}", {"weights": {"1": 90, "2": 10}})


def run_transport(
    transport: str, *, streams: int, clients: int, channels: int, changes: int, node: dict[str, Any]
) -> dict[str, Any]:
    """Start a server and the simulated Envoys on `transport`; memory and fan-out of `changes` changes."""
    grpc_port, rest_port = free_port(), free_port()
    env = {
        "AEGIS_XDS_GRPC_LISTEN": f"127.0.0.1:{grpc_port}",
        # REST polls on their own listener: its listen backlog is 4,096, the API's 128.
        "AEGIS_XDS_LISTEN": f"127.0.0.1:{rest_port}",
        "AEGIS_XDS_NODE_TOKENS": f"*:{NODE_TOKEN}",
        "AEGIS_XDS_MAX_NODES": str(streams + 1000),
        "AEGIS_XDS_NODE_STALE_SECONDS": "600",
        "AEGIS_XDS_HOLD_SECONDS": "60",
        "AEGIS_XDS_RDS_REQUEST_TIMEOUT_MS": "120000",
        "AEGIS_XDS_VALIDATE": "false",
    }
    target = f"127.0.0.1:{grpc_port}" if transport == "ads" else f"http://127.0.0.1:{rest_port}"
    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="aegis-bench-streams-") as scratch, running_server(
        Path(scratch) / "data", **env
    ) as (url, server):
        prepare_model(url)
        settle([server.pid], timeout=10)
        rss_before = rss_bytes(server.pid)
        per_client = -(-streams // clients)
        workers, conns = [], []
        for index in range(clients):
            first = index * per_client
            plan = ClientPlan(transport, first, min(per_client, streams - first), channels, target, node)
            parent_end, child_end = context.Pipe()
            worker = context.Process(target=client_main, args=(plan, child_end), daemon=True)
            worker.start()
            workers.append(worker)
            conns.append(parent_end)
        collector = Collector(conns, streams)
        collector.workers = workers
        try:
            opened = time.monotonic()
            # The server takes new streams at a few dozen per second here: allow for it.
            subscribed = collector.until(
                lambda: collector.common_version() is not None, max(120, streams / 10)
            )
            if transport == "rest":  # and every node back in a held poll on that version
                collector.until(lambda: collector.all_polled(collector.common_version() or ""), 60)
            seconds_to_subscribe = time.monotonic() - opened
            settle([server.pid, *(worker.pid or 0 for worker in workers)])
            rss_held = rss_bytes(server.pid)
            fanouts, halves, reached, server_cpu, client_cpu, busy = [], [], [], [], [], []
            sampler = CpuSampler(server.pid, [worker.pid or 0 for worker in workers])
            for change in range(changes if subscribed else 0):
                with collector.lock:
                    before = collector.common_version() or ""
                started = time.monotonic()
                api(url, "PUT", f"/v1/traffic/{MODEL}", {"weights": {"1": 80 - change, "2": 20 + change}})
                collector.until(partial(collector.moved_on, before), 60)
                with collector.lock:
                    after = collector.common_version() or ""
                    times = sorted(
                        at - started for (_, version), at in collector.arrivals.items() if version == after
                    )
                    reached.append(sum(1 for v in collector.latest.values() if v == after))
                if times and reached[-1] == streams:
                    # CPU within the fan-out itself (the events reach this process later).
                    server_seconds, client_seconds = sampler.between(started, started + times[-1])
                    server_cpu.append(server_seconds)
                    client_cpu.append(client_seconds)
                    busy.append(server_seconds / times[-1])
                    fanouts.append(times[-1] * 1000)
                    halves.append(times[len(times) // 2] * 1000)
                if transport == "rest":
                    collector.until(partial(collector.all_polled, after), 60)
                settle([server.pid, *(worker.pid or 0 for worker in workers)])
            sampler.stop()
            peak = max(rss_bytes(server.pid, "VmHWM"), rss_held)
            rss_after = rss_bytes(server.pid)
            log_tail = server_log_tail(Path(scratch) / "data") if collector.errors else []
        finally:
            for conn in conns:
                with contextlib.suppress(OSError):
                    conn.send("stop")
            for worker in workers:
                worker.join(timeout=20)
                if worker.is_alive():
                    worker.terminate()
                    worker.join()
            collector.closed = True
    return {
        "streams": streams,
        "client_processes": clients,
        "client_niceness": CLIENT_NICENESS,
        "channels_per_process": channels if transport == "ads" else "one TCP connection per node",
        "all_subscribed": subscribed,
        "streams_subscribed": len(collector.latest),
        "seconds_to_subscribe_all": round(seconds_to_subscribe, 1),
        "subscribed_per_second": round(len(collector.latest) / seconds_to_subscribe, 1),
        "server_rss_before_mib": round(rss_before / MIB, 1),
        "server_rss_subscribed_mib": round(rss_held / MIB, 1),
        "server_rss_after_changes_mib": round(rss_after / MIB, 1),
        "server_peak_rss_mib": round(peak / MIB, 1),
        "bytes_per_stream": round((rss_held - rss_before) / streams),
        "changes": changes,
        "changes_reaching_all": len(fanouts),
        "streams_reached_per_change": reached,
        "fanout_ms": [round(ms, 1) for ms in fanouts],
        "fanout_median_ms": round(statistics.median(fanouts), 1) if fanouts else None,
        "half_reached_median_ms": round(statistics.median(halves), 1) if halves else None,
        "server_cpu_s_per_fanout": [round(s, 2) for s in server_cpu],
        "clients_cpu_s_per_fanout": [round(s, 2) for s in client_cpu],
        # Near 1: the server's one event loop was busy the whole fan-out (the server is the limit).
        "server_busy_share_of_fanout": [round(share, 2) for share in busy],
        "errors": dict(collector.errors.most_common(5)),
        "client_exit_codes": [worker.exitcode for worker in workers],
        "server_log_tail": log_tail,
    }


def node_protobuf_bytes(node: dict[str, Any]) -> int:
    from envoy.config.core.v3 import base_pb2
    from google.protobuf import json_format

    size: int = json_format.ParseDict(node, base_pb2.Node(), ignore_unknown_fields=True).ByteSize()
    return size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--streams", type=int, default=5000, help="simulated Envoys (streams, REST nodes)")
    parser.add_argument("--clients", type=int, default=4, help="client processes")
    parser.add_argument(
        "--channels", type=int, default=16, help="gRPC channels (HTTP/2 connections) per client process"
    )
    parser.add_argument("--changes", type=int, default=5, help="weight changes timed")
    parser.add_argument("--no-rest", dest="rest", action="store_false", help="skip the REST baseline")
    parser.add_argument("--sample", type=Path, default=SAMPLE)
    args = parser.parse_args()
    open_files = raise_open_files()  # before any spawn: the server and the clients inherit it
    node = node_template(args.sample, None)
    common = {"streams": args.streams, "clients": args.clients, "channels": args.channels,
              "changes": args.changes, "node": node}
    ads = run_transport("ads", **common)
    rest = run_transport("rest", **common) if args.rest else {}
    value = ads["fanout_median_ms"] or float("nan")
    report(
        "xds_streams",
        value=value,
        unit="ms",
        baseline=f"REST long-poll, the same {args.streams} nodes (80 KB node per poll, hold 60 s, "
        f"refresh_delay {REST_REFRESH_SECONDS:g} s)",
        baseline_value=rest.get("fanout_median_ms") or float("nan"),
        target=TARGET_SECONDS * 1000,
        higher_is_better=False,
        details={
            "value_is": "ms from PUT /v1/traffic to the last ADS stream getting the new runtime version "
                        "(the weights; median)",
            "node_bytes": {"protobuf_in_first_ads_request": node_protobuf_bytes(node),
                           "json_in_every_rest_poll": len(json.dumps(node)), "sample": args.sample.name},
            "open_files_limit": open_files,
            "rss_target_mib": TARGET_RSS_BYTES // MIB,
            "rss_meets_target": ads["server_peak_rss_mib"] * MIB < TARGET_RSS_BYTES,
            "ads": ads,
            "rest_long_poll": rest,
            "cpus": os.cpu_count(),
        },
    )


if __name__ == "__main__":
    main()
