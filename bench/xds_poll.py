"""xds_poll: simulated Envoy nodes polling RDS with real-size bodies, against a bare aiohttp handler.

Each simulated node has its own `node.id` and sends the full ~80 KB node description
Envoy 1.40 puts in every REST poll (the shape of
reference/samples/envoy-1.40-rest-poll.json). Measured in one run against a real
`aegis serve` (one model, prod + canary with endpoints, a 90/10 split):

- the unchanged path: `version_info` is current, hold 0 → 304 at once;
- the changed path: the node has no version yet (`version_info` empty, a fresh or
  restarted Envoy) → 200 with the full route configuration. A node that polls again
  on a *stale non-empty* version after being served the new one has, by the REST
  protocol, rejected it and gets 304, so an empty version is how a benchmark keeps
  hitting the 200 path;
- memory per held long-poll: 5,000 polls on the current version held open at once
  (hold 60 s), the server's RSS before and while they are held, then one change
  that releases all of them. Done twice: with the full ~80 KB node (what Envoy
  sends; the growth includes request bodies buffered while polls arrive) and with
  a node of only id and cluster (the cost of a held poll itself). The polls open
  in waves of 250: 5,000 connects in one instant overflow the server's listen
  backlog (aiohttp's default 128) and some are reset.

Baseline: a bare aiohttp handler in its own process that `json.loads` the same
body and answers 304, driven by the same client. value = Aegis 304 polls/s,
ratio = value / bare polls/s, target 0.7. `--profile` samples the server with
py-spy during an extra 304 run and puts the hottest functions in the details.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ADMIN_TOKEN, free_port, report, rss_bytes, running_server
from controlplane.demo.processes import stop

# A real Envoy 1.40 poll, in the shared reference folder beside the repository.
SAMPLE = Path(__file__).resolve().parents[2] / "shared/reference/samples/envoy-1.40-rest-poll.json"
ROUTE_TYPE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
ROUTE_CONFIG_NAME = "aegis_routes"
MODEL = "bench-xds"
MIB = 1 << 20


# --- poll bodies ----------------------------------------------------------------------


def node_template(sample: Path, target_bytes: int | None) -> dict[str, Any]:
    """The sample's node description, cut to about `target_bytes` of JSON if given.

    Without the sample file (outside this workspace) a node of the same shape is
    synthesised: the bulk of a real one is its `extensions` list.
    """
    if sample.exists():
        node: dict[str, Any] = json.loads(sample.read_text())["node"]
    else:
        node = {
            "id": "x",
            "cluster": "model-gateway",
            "user_agent_name": "envoy",
            "user_agent_build_version": {"version": {"major_number": 1, "minor_number": 40}},
            "extensions": [
                {
                    "name": f"envoy.synthetic.extension_{i}",
                    "category": f"envoy.category_{i % 40}",
                    "type_urls": [f"envoy.extensions.synthetic.v3.Config{i}"],
                }
                for i in range(520)
            ],
        }
    if target_bytes is not None:
        extensions = list(node["extensions"])
        while extensions and len(json.dumps({**node, "extensions": extensions})) > target_bytes:
            extensions.pop()
        node = {**node, "extensions": extensions}
    return node


@dataclass(frozen=True)
class BodyMaker:
    """Poll bodies for many node ids without re-serialising the ~80 KB node each time."""

    prefix: bytes
    suffix: bytes

    @classmethod
    def for_node(
        cls,
        node: dict[str, Any],
        version_info: str,
        *,
        type_url: str = ROUTE_TYPE,
        resource_names: tuple[str, ...] = (ROUTE_CONFIG_NAME,),
    ) -> BodyMaker:
        marker = "@@NODE_ID@@"
        document: dict[str, Any] = {"version_info": version_info, "node": {**node, "id": marker}}
        if not version_info:
            del document["version_info"]  # Envoy's first poll has none
        if resource_names:  # LDS and CDS polls are wildcard: no names
            document["resource_names"] = list(resource_names)
        document["type_url"] = type_url
        prefix, suffix = json.dumps(document).split(marker)
        return cls(prefix.encode(), suffix.encode())

    def body(self, node_id: str) -> bytes:
        return self.prefix + json.dumps(node_id)[1:-1].encode() + self.suffix


# --- the bare baseline server ---------------------------------------------------------


def run_bare_server(port: int) -> None:
    """The baseline: parse the body as Aegis must, answer 304 (200 for a first poll)."""
    from aiohttp import web

    async def discovery(request: web.Request) -> web.Response:
        document = json.loads(await request.read())
        if document.get("version_info"):
            return web.Response(status=304)
        return web.json_response({"version_info": "bare", "resources": []})

    app = web.Application()
    app.router.add_post("/v3/discovery:{type}", discovery)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=lambda _m: None)


@contextmanager
def bare_server() -> Iterator[tuple[str, int]]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, __file__, "--bare-server", str(port)],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the bare baseline server did not start") from None
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}", process.pid
    finally:
        stop(process)


# --- talking to Aegis -----------------------------------------------------------------


def admin_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def api(session: aiohttp.ClientSession, method: str, url: str, body: Any = None) -> Any:
    async with session.request(method, url, json=body, headers=admin_headers()) as response:
        document = await response.json(content_type=None)
        if response.status >= 300:
            raise RuntimeError(f"{method} {url}: {response.status} {document}")
        return document


async def register(
    session: aiohttp.ClientSession, url: str, model: str, version: str, artifact: bytes
) -> None:
    form = aiohttp.FormData()
    form.add_field(
        "metadata", json.dumps({"model_name": model, "version": version}), content_type="application/json"
    )
    form.add_field("artifact", artifact, filename="model.bin", content_type="application/octet-stream")
    async with session.post(f"{url}/v1/registry/register", data=form, headers=admin_headers()) as response:
        if response.status not in (200, 201):
            raise RuntimeError(f"register {model} {version}: {response.status} {await response.text()}")


async def serve_version(
    session: aiohttp.ClientSession, url: str, model: str, version: str, *, stage: str, port: int
) -> None:
    """Register, promote to `stage` and announce one endpoint, as a model server would."""
    await register(session, url, model, version, f"weights {model} {version}".encode())
    await api(session, "POST", f"{url}/v1/registry/{model}/{version}/promote", {"stage": stage})
    await api(
        session,
        "POST",
        f"{url}/v1/endpoints",
        {
            "model_name": model,
            "version": version,
            "address": "127.0.0.1",
            "port": port,
            "ttl_seconds": 3600,
        },
    )


async def prepare_model(url: str) -> str:
    """One model, prod 1 and canary 2 with endpoints, split 90/10; returns the RDS version."""
    async with aiohttp.ClientSession() as session:
        await serve_version(session, url, MODEL, "1", stage="prod", port=9001)
        await serve_version(session, url, MODEL, "2", stage="canary", port=9002)
        await api(session, "PUT", f"{url}/v1/traffic/{MODEL}", {"weights": {"1": 90, "2": 10}})
        return await current_route_version(session, url)


async def current_route_version(session: aiohttp.ClientSession, url: str) -> str:
    body = {"node": {"id": "bench-probe"}, "resource_names": [ROUTE_CONFIG_NAME], "type_url": ROUTE_TYPE}
    async with session.post(f"{url}/v3/discovery:routes", json=body) as response:
        document = await response.json()
    return str(document["version_info"])


# --- load -----------------------------------------------------------------------------


def client_session(timeout: float = 30) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0),
        timeout=aiohttp.ClientTimeout(total=timeout),
    )


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class LoadResult:
    polls: int
    seconds: float
    latencies_ms: list[float]
    statuses: Counter[int]
    response_bytes: int
    server_cpu_share: float
    client_cpu_share: float

    @property
    def per_second(self) -> float:
        return self.polls / self.seconds

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.latencies_ms)
        return {
            "polls_per_s": round(self.per_second, 1),
            "polls": self.polls,
            "p50_ms": round(statistics.median(ordered), 2),
            "p99_ms": round(ordered[int(0.99 * (len(ordered) - 1))], 2),
            "max_ms": round(ordered[-1], 2),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "response_bytes": self.response_bytes,
            "server_cpu_share": round(self.server_cpu_share, 2),
            "client_cpu_share": round(self.client_cpu_share, 2),
        }


async def load(
    url: str,
    maker: BodyMaker,
    *,
    clients: int,
    seconds: float,
    warmup: float,
    server_pid: int,
    node_prefix: str,
) -> LoadResult:
    """`clients` nodes each polling in a loop for `seconds` (after `warmup`), one poll at a time."""
    bodies = [maker.body(f"{node_prefix}-{index}") for index in range(clients)]
    headers = {"Content-Type": "application/json"}
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    sizes: list[int] = []
    phase = {"measuring": False}

    async def node(session: aiohttp.ClientSession, body: bytes, stop_at: float) -> None:
        while time.monotonic() < stop_at:
            started = time.perf_counter()
            async with session.post(f"{url}/v3/discovery:routes", data=body, headers=headers) as response:
                payload = await response.read()
            if phase["measuring"]:
                latencies.append((time.perf_counter() - started) * 1000)
                statuses[response.status] += 1
                if len(sizes) < 1:
                    sizes.append(len(payload))

    async with client_session() as session:
        begin = time.monotonic()
        stop_at = begin + warmup + seconds
        tasks = [asyncio.create_task(node(session, body, stop_at)) for body in bodies]
        await asyncio.sleep(warmup)
        phase["measuring"] = True
        started = time.monotonic()
        server_cpu, client_cpu = cpu_seconds(server_pid), time.process_time()
        await asyncio.gather(*tasks)
        elapsed = time.monotonic() - started
        server_cpu = cpu_seconds(server_pid) - server_cpu
        client_cpu = time.process_time() - client_cpu
    return LoadResult(
        len(latencies),
        elapsed,
        latencies,
        statuses,
        sizes[0] if sizes else 0,
        server_cpu / elapsed,
        client_cpu / elapsed,
    )


# --- held long-polls ------------------------------------------------------------------


def established_connections(port: int) -> int:
    """Server-side TCP connections in ESTABLISHED on `port` (from /proc/net/tcp)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == "01":
            count += 1
    return count


async def held_polls(
    url: str,
    maker: BodyMaker,
    warm: BodyMaker,
    *,
    count: int,
    wave: int,
    server_pid: int,
    settle_timeout: float = 60,
) -> dict[str, Any]:
    """Open `count` up-to-date polls, read the server's RSS while they are held, release them.

    Polls open in waves of `wave` (0: all at once), each wave once the previous one's
    connections are accepted: a listen backlog overflows when thousands connect in the
    same instant (reported as errors).
    """
    port = int(url.rsplit(":", 1)[1])
    bodies = [maker.body(f"held-{index}") for index in range(count)]
    headers = {"Content-Type": "application/json"}
    done_at: list[float] = []
    outcomes: Counter[str] = Counter()
    async with client_session() as session:
        # Warm the code paths with first polls (answered at once) before the "before" reading.
        for index in range(20):
            async with session.post(
                f"{url}/v3/discovery:routes", data=warm.body(f"warm-{index}"), headers=headers
            ) as response:
                await response.read()
    await asyncio.sleep(0.5)
    rss_before = rss_bytes(server_pid)
    baseline_connections = established_connections(port)
    async with client_session(timeout=150) as session:

        async def poll(body: bytes) -> None:
            try:
                async with session.post(f"{url}/v3/discovery:routes", data=body, headers=headers) as response:
                    await response.read()
                    outcomes[str(response.status)] += 1
                    done_at.append(time.monotonic())
            except (aiohttp.ClientError, TimeoutError) as exc:
                outcomes[type(exc).__name__] += 1

        opened = time.monotonic()
        tasks: list[asyncio.Task[None]] = []
        step = wave or count
        for start in range(0, count, step):
            tasks += [asyncio.create_task(poll(body)) for body in bodies[start : start + step]]
            for _ in range(100 if wave else 0):  # up to 5 s for this wave to be accepted
                if established_connections(port) - baseline_connections >= len(tasks):
                    break
                await asyncio.sleep(0.05)
        # Held = the connections are up and the server has gone idle (all bodies parsed).
        deadline = opened + settle_timeout
        last_cpu = cpu_seconds(server_pid)
        while time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            cpu = cpu_seconds(server_pid)
            idle = cpu - last_cpu < 0.02
            last_cpu = cpu
            if idle and (
                established_connections(port) - baseline_connections >= count
                or all(task.done() for task in tasks)
            ):
                break
        settled = time.monotonic() - opened
        connections = established_connections(port) - baseline_connections
        rss_held = rss_bytes(server_pid)
        premature = sum(outcomes.values())
        # One change releases every held poll with a 200.
        released = time.monotonic()
        await api(session, "PUT", f"{url}/v1/traffic/{MODEL}", {"weights": {"1": 50, "2": 50}})
        await asyncio.gather(*tasks)
        peak = rss_bytes(server_pid, "VmHWM")
        rss_after = rss_bytes(server_pid)
    growth = rss_held - rss_before
    return {
        "held_polls": count,
        "connections_established": connections,
        "answered_or_failed_before_release": premature,
        "seconds_to_open_and_settle": round(settled, 1),
        "server_rss_before_mib": round(rss_before / MIB, 1),
        "server_rss_held_mib": round(rss_held / MIB, 1),
        "server_peak_rss_mib": round(peak / MIB, 1),
        "server_rss_after_release_mib": round(rss_after / MIB, 1),
        "bytes_per_held_poll": round(growth / count),
        "opened_in_waves_of": wave or count,
        "outcomes": dict(sorted(outcomes.items())),
        "release_all_answered_ms": round((max(done_at) - released) * 1000, 1) if done_at else None,
    }


# --- profiling ------------------------------------------------------------------------


# Inclusive shares are listed for these (our code and the libraries a poll goes through);
# the event loop and aiohttp's own frames sit under every sample and say nothing.
_INCLUSIVE_OF = ("/controlplane/", "/registry/", "/json/", "/prometheus_client/", "/logging/")


def profile_hot_spots(raw: Path, top: int = 12) -> dict[str, Any]:
    """Self and inclusive shares per function from py-spy's collapsed stacks (`--format raw`)."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        if not stack:
            continue
        count = int(samples)
        frames = stack.split(";")
        total += count
        own[_short_frame(frames[-1])] += count
        for frame in {_short_frame(f) for f in frames if any(part in f for part in _INCLUSIVE_OF)}:
            inclusive[frame] += count

    def share(counter: Counter[str]) -> list[list[Any]]:
        return [[frame, round(100 * n / total, 1)] for frame, n in counter.most_common(top)]

    return {"samples": total, "self_percent": share(own), "inclusive_percent": share(inclusive)}


def _short_frame(frame: str) -> str:
    """`name (path/to/file.py:123)` → `name (to/file.py)`: lines vary, functions do not."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = Path(path).parts
    short = "/".join(parts[-2:]) if parts else path
    return f"{name} ({short})"


def profile_server(
    pid: int, seconds: float, out: Path, workload: Callable[[], object]
) -> dict[str, Any] | str:
    """Sample `pid` with py-spy while `workload` runs; the hot spots, or why there are none."""
    binary = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(binary).exists():
        return "py-spy is not installed: .venv/bin/pip install py-spy"
    command = [binary, "record", "-p", str(pid), "-d", str(int(seconds)), "-r", "200", "--nonblocking"]
    command += ["--full-filenames", "--format", "raw", "-o", str(out)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        workload()
        _, stderr = process.communicate(timeout=seconds + 30)
    except subprocess.TimeoutExpired:
        process.kill()
        _, stderr = process.communicate()
    if process.returncode != 0 or not out.exists():
        return f"py-spy failed: {stderr.decode()[-500:]}"
    return profile_hot_spots(out)


def held_run(node: dict[str, Any], *, count: int, wave: int) -> dict[str, Any]:
    with (
        tempfile.TemporaryDirectory(prefix="aegis-bench-xds-held-") as scratch,
        running_server(
            Path(scratch) / "data",
            AEGIS_XDS_HOLD_SECONDS="60",
            AEGIS_XDS_RDS_REQUEST_TIMEOUT_MS="120000",
        ) as (url, process),
    ):
        version = asyncio.run(prepare_model(url))
        maker = BodyMaker.for_node(node, version)
        warm = BodyMaker.for_node(node, "")
        held = asyncio.run(held_polls(url, maker, warm, count=count, wave=wave, server_pid=process.pid))
        held["poll_body_bytes"] = len(maker.body("held-0"))
        return held


def raise_open_files() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return wanted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bare-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--clients", type=int, default=100, help="concurrent simulated nodes")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured duration of each load phase")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--held", type=int, default=5000, help="long-polls held at once (0 skips)")
    parser.add_argument(
        "--held-wave",
        type=int,
        default=250,
        help="open the held polls in waves of this many (0: all at once)",
    )
    parser.add_argument(
        "--held-body-kib",
        type=int,
        default=0,
        help="cut the held polls' node to this size (0: the full ~80 KB)",
    )
    parser.add_argument(
        "--no-held-tiny",
        dest="held_tiny",
        action="store_false",
        help="skip the second held run with a minimal node (id and cluster only)",
    )
    parser.add_argument("--sample", type=Path, default=SAMPLE)
    parser.add_argument(
        "--profile",
        choices=["auto", "always", "never"],
        default="auto",
        help="py-spy the server during an extra 304 run (auto: when the target is missed)",
    )
    args = parser.parse_args()
    if args.bare_server:
        run_bare_server(args.bare_server)
        return

    open_files = raise_open_files()  # before any spawn: the servers inherit it
    node = node_template(args.sample, None)
    maker_current_size = len(BodyMaker.for_node(node, "x" * 64).body("node-0"))
    common = {"clients": args.clients, "seconds": args.seconds, "warmup": args.warmup}
    target = 0.7
    details: dict[str, Any] = {
        "clients": args.clients,
        "seconds_per_phase": args.seconds,
        "poll_body_bytes": maker_current_size,
        "sample": args.sample.name if args.sample.exists() else "synthetic",
        "open_files_limit": open_files,
    }

    with bare_server() as (bare_url, bare_pid):
        bare = asyncio.run(
            load(
                bare_url,
                BodyMaker.for_node(node, "bare-version"),
                server_pid=bare_pid,
                node_prefix="bare",
                **common,
            )
        )
    details["bare_304"] = bare.summary()

    with (
        tempfile.TemporaryDirectory(prefix="aegis-bench-xds-") as scratch,
        running_server(Path(scratch) / "data", AEGIS_XDS_HOLD_SECONDS="0") as (url, process),
    ):
        version = asyncio.run(prepare_model(url))
        current = BodyMaker.for_node(node, version)
        aegis_304 = asyncio.run(load(url, current, server_pid=process.pid, node_prefix="env", **common))
        aegis_200 = asyncio.run(
            load(url, BodyMaker.for_node(node, ""), server_pid=process.pid, node_prefix="fresh", **common)
        )
        details["aegis_304"] = aegis_304.summary()
        details["aegis_200"] = aegis_200.summary()
        details["aegis_rss_after_load_mib"] = round(rss_bytes(process.pid) / MIB, 1)
        missed = aegis_304.per_second / bare.per_second < target
        if args.profile == "always" or (args.profile == "auto" and missed):
            details["profile_304"] = profile_server(
                process.pid,
                args.seconds,
                Path(scratch) / "profile.txt",
                lambda: asyncio.run(
                    load(url, current, server_pid=process.pid, node_prefix="env", **{**common, "warmup": 0.0})
                ),
            )

    if args.held:
        held_node = node if not args.held_body_kib else node_template(args.sample, args.held_body_kib * 1024)
        details["held"] = held_run(held_node, count=args.held, wave=args.held_wave)
        if args.held_tiny:
            # The same with a node of just id and cluster: what a held poll itself costs,
            # apart from the request bodies buffered while the polls arrive.
            tiny = {"id": "x", "cluster": str(node.get("cluster", "model-gateway"))}
            details["held_tiny_body"] = held_run(tiny, count=args.held, wave=args.held_wave)

    report(
        "xds_poll",
        value=aegis_304.per_second,
        unit="polls/s",
        baseline="bare aiohttp handler: json.loads of the same body, 304",
        baseline_value=bare.per_second,
        target=target,
        details=details,
    )


if __name__ == "__main__":
    main()
