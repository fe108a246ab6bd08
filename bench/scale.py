"""scale: 1,000 models with prod versions and 100 active rollouts.

In-process, pure (the honest measure of the builders): a `DesiredState` of 1,000
`ModelRoute`s, 100 of them with a weighted canary arm, one endpoint per arm.
value = median ms of `build_snapshot` plus the per-type and whole-snapshot
versions the publisher needs (build, consistency check, hashing); target < 100 ms.
Baseline in the same run: building the same resources with the pure builders and
`json.dumps` of them, without the consistency check and hashing (the raw
serialisation cost). Details: the RDS response (bytes, time to build and
serialise it) and a whole `Publisher.publish` of a weight change.

End to end through a real `aegis serve`: the models are registered over HTTP
(concurrent requests; small artifacts; one endpoint per version), promoted to prod,
and 100 of them get a canary under a `setWeight: 10, pause: {}` policy, so 100
rollouts stay active. Then the server restarts with `envoy --mode validate` on
(time to healthy), one RDS and one CDS poll are timed (the 200 path, real-size
request body), and its RSS is read. Last, the app is built in this process on the
same data (`create_app` + an aiohttp test server) and `RolloutRunner.tick_all()`
is timed directly (target < 1 s), with a cProfile of one tick.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ADMIN_TOKEN, report, rss_bytes, running_server
from bench.xds_poll import SAMPLE, BodyMaker, api, client_session, node_template, raise_open_files, register
from controlplane.app import create_app
from controlplane.rollout import api as rollout_api
from controlplane.settings import load_settings
from controlplane.xds import resources
from controlplane.xds.builder import build_snapshot
from controlplane.xds.cache import Publisher, XdsCache
from controlplane.xds.nodes import NodeTracker
from controlplane.xds.resources import Arm, DesiredState, Endpoint, ListenerAddress, ModelRoute
from controlplane.xds.snapshot import ResourceType, Snapshot

MIB = 1 << 20
SIGN_KEY = "bench-sign-key"  # what bench.common.running_server gives the server
POLICY = """\
policies:
  - name: bench-hold
    models: ["*"]
    steps:
      - setWeight: 10
      - pause: {}
"""

REPO_ROOT = Path(__file__).resolve().parent.parent


# --- in-process: the pure builders ----------------------------------------------------


def model_name(index: int) -> str:
    return f"model-{index:04d}"


def has_canary(index: int, *, models: int, canaries: int) -> bool:
    """Canaries spread evenly over the models."""
    if canaries <= 0:
        return False
    spacing = max(1, models // canaries)
    return index % spacing == 0 and index // spacing < canaries


def endpoint(index: int, arm: int) -> Endpoint:
    return Endpoint(f"10.{arm}.{index // 250}.{index % 250 + 1}", 8000)


def desired_state(models: int, canaries: int, *, shift: int = 0) -> DesiredState:
    """`models` routed models, `canaries` of them split stable/canary; `shift` moves the weights."""
    routes = []
    for index in range(models):
        stable = Arm("1", 100, (endpoint(index, 1),))
        if has_canary(index, models=models, canaries=canaries):
            weight = 10 + (index + shift) % 9 * 10
            routes.append(
                ModelRoute(
                    model_name(index),
                    Arm("1", 100 - weight, stable.endpoints),
                    Arm("2", weight, (endpoint(index, 2),)),
                )
            )
        else:
            routes.append(ModelRoute(model_name(index), stable))
    return DesiredState(ListenerAddress("127.0.0.1", 10000), tuple(routes))


def median_ms(action: Callable[[], object], runs: int) -> tuple[float, float]:
    """(median, max) milliseconds of `action` over `runs`, after one warm-up call."""
    action()
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        timings.append((time.perf_counter() - started) * 1000)
    return statistics.median(timings), max(timings)


def publishable_snapshot(desired: DesiredState) -> Snapshot:
    """What publishing needs: the checked snapshot and its versions (per type and whole)."""
    snapshot = build_snapshot(desired)
    _ = snapshot.versions, snapshot.version
    return snapshot


def raw_serialisation(desired: DesiredState) -> str:
    """The baseline: the same resources, built and dumped; no check, no canonical form, no hash."""
    built_clusters = resources.clusters(desired)
    return json.dumps(
        [
            [resources.listener(desired)],
            list(built_clusters),
            [resources.route_configuration(desired)],
            [cluster["load_assignment"] for cluster in built_clusters],
        ]
    )


def publish_ms(models: int, canaries: int, runs: int) -> float:
    """Median ms of `Publisher.publish` for a weight change (no validator, no nodes)."""
    states = [desired_state(models, canaries, shift=shift) for shift in range(runs + 1)]

    async def measure() -> float:
        publisher = Publisher(
            XdsCache(build_snapshot(states[0])), NodeTracker(stale_after=30), validator=None
        )
        await publisher.publish(states[0])
        timings = []
        for state in states[1:]:
            started = time.perf_counter()
            result = await publisher.publish(state)
            timings.append((time.perf_counter() - started) * 1000)
            assert result.published, result.error
        return statistics.median(timings)

    return asyncio.run(measure())


def in_process(models: int, canaries: int, runs: int) -> tuple[float, float, dict[str, Any]]:
    desired = desired_state(models, canaries)
    snapshot = publishable_snapshot(desired)
    value, value_max = median_ms(lambda: publishable_snapshot(desired), runs)
    check_only, _ = median_ms(lambda: build_snapshot(desired), runs)
    baseline, _ = median_ms(lambda: raw_serialisation(desired), runs)

    def rds_body() -> str:
        return json.dumps(snapshot.discovery_response(ResourceType.ROUTE, (resources.ROUTE_CONFIG_NAME,)))

    rds_ms, _ = median_ms(rds_body, runs)
    cds_ms, _ = median_ms(lambda: json.dumps(snapshot.discovery_response(ResourceType.CLUSTER)), runs)
    details = {
        "models": models,
        "canaries": canaries,
        "runs": runs,
        "snapshot_ms_max": round(value_max, 2),
        "build_snapshot_ms_without_versions": round(check_only, 2),
        "versions_hashing_ms": round(value - check_only, 2),
        "rds_response_bytes": len(rds_body()),
        "rds_response_build_and_dumps_ms": round(rds_ms, 2),
        "cds_response_bytes": len(json.dumps(snapshot.discovery_response(ResourceType.CLUSTER))),
        "cds_response_build_and_dumps_ms": round(cds_ms, 2),
        "routes": len(snapshot.routes[0]["virtual_hosts"][0]["routes"]),
        "clusters": len(snapshot.clusters),
        "publisher_publish_weight_change_ms": round(publish_ms(models, canaries, min(runs, 10)), 2),
    }
    return value, baseline, details


# --- end to end: a real aegis serve ---------------------------------------------------


async def populate(
    url: str, models: int, canaries: int, *, concurrency: int, budget: float
) -> dict[str, Any]:
    """Register, announce and promote every model (canaries start rollouts); stop at `budget` s."""
    started = time.monotonic()
    done = {"models": 0, "canaries": 0}
    gate = asyncio.Semaphore(concurrency)

    async def one(session: aiohttp.ClientSession, index: int) -> None:
        async with gate:
            if time.monotonic() - started > budget:
                return
            name = model_name(index)
            versions = ["1", "2"] if has_canary(index, models=models, canaries=canaries) else ["1"]
            for version in versions:
                await register(session, url, name, version, f"weights {name} {version}".encode())
                address = endpoint(index, int(version))
                await api(
                    session,
                    "POST",
                    f"{url}/v1/endpoints",
                    {
                        "model_name": name,
                        "version": version,
                        "address": address.address,
                        "port": address.port,
                        "ttl_seconds": 3600,
                    },
                )
                stage = "prod" if version == "1" else "canary"
                await api(session, "POST", f"{url}/v1/registry/{name}/{version}/promote", {"stage": stage})
            done["models"] += 1
            done["canaries"] += len(versions) - 1

    async with client_session(timeout=120) as session:
        await asyncio.gather(*(one(session, index) for index in range(models)))
        rollouts = await api(session, "GET", f"{url}/v1/rollouts")
    elapsed = time.monotonic() - started
    active = [r for r in rollouts["rollouts"] if r["phase"] in ("progressing", "paused")]
    return {
        "models_registered": done["models"],
        "canaries_registered": done["canaries"],
        "active_rollouts": len(active),
        "populate_seconds": round(elapsed, 1),
        "models_per_second": round(done["models"] / elapsed, 1),
        "stopped_by_budget": done["models"] < models,
    }


async def timed_polls(url: str, kind: str, names: tuple[str, ...], polls: int) -> dict[str, Any]:
    """First polls (no version: the 200 path) with a real-size node, each from a new node id."""
    type_url = {"routes": ResourceType.ROUTE, "clusters": ResourceType.CLUSTER}[kind]
    maker = BodyMaker.for_node(node_template(SAMPLE, None), "", type_url=type_url, resource_names=names)
    timings, size = [], 0
    async with client_session() as session:
        for index in range(polls):
            started = time.perf_counter()
            async with session.post(
                f"{url}/v3/discovery:{kind}",
                data=maker.body(f"scale-{kind}-{index}"),
                headers={"Content-Type": "application/json"},
            ) as response:
                payload = await response.read()
                assert response.status == 200, response.status
            timings.append((time.perf_counter() - started) * 1000)
            size = len(payload)
    return {
        "first_ms": round(timings[0], 1),
        "median_ms": round(statistics.median(timings), 1),
        "response_bytes": size,
    }


def server_env(policy: Path, **extra: str) -> dict[str, str]:
    return {"AEGIS_POLICIES": str(policy), **extra}


async def tick_in_process(data_dir: Path, policy: Path, runs: int) -> dict[str, Any]:
    """Build the app here on the same data and time `tick_all()` directly."""
    settings = load_settings(
        {
            "AEGIS_DATA_DIR": str(data_dir),
            "AEGIS_API_TOKENS": f"admin:{ADMIN_TOKEN}",
            "AEGIS_MODEL_SIGN_KEY": SIGN_KEY,
            "AEGIS_POLICIES": str(policy),
            "AEGIS_XDS_VALIDATE": "false",
            # The app's own loop must not tick while we time ticks.
            "AEGIS_ROLLOUT_TICK_SECONDS": "3600",
        }
    )
    app = create_app(settings)
    server = TestServer(app)
    started = time.perf_counter()
    await server.start_server()
    startup_ms = (time.perf_counter() - started) * 1000
    try:
        runner = app[rollout_api.RUNNER]
        await runner.tick_all()
        timings = []
        for _ in range(runs):
            started = time.perf_counter()
            await runner.tick_all()
            timings.append((time.perf_counter() - started) * 1000)
        profiler = cProfile.Profile()
        profiler.enable()
        await runner.tick_all()
        profiler.disable()
        active = len(runner.active)
    finally:
        await server.close()
    return {
        "active_rollouts_in_runner": active,
        "tick_all_median_ms": round(statistics.median(timings), 1),
        "tick_all_max_ms": round(max(timings), 1),
        "tick_per_rollout_ms": round(statistics.median(timings) / max(active, 1), 2),
        "in_process_startup_ms": round(startup_ms, 1),
        "tick_profile_cumulative_top": top_functions(profiler),
    }


def top_functions(profiler: cProfile.Profile, count: int = 12) -> list[list[Any]]:
    """The functions under one tick with the most cumulative time: [name, ms, calls]."""
    stats = pstats.Stats(profiler, stream=io.StringIO())
    rows = []
    for (path, line, name), (_cc, calls, _tt, cumulative, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        if not path.startswith(str(REPO_ROOT)) and "json" not in path:
            continue
        short = "/".join(Path(path).parts[-2:])
        rows.append([f"{name} ({short}:{line})", round(cumulative * 1000, 1), calls])
    rows.sort(key=lambda row: -row[1])
    return rows[:count]


def end_to_end(
    models: int, canaries: int, *, concurrency: int, budget: float, tick_runs: int
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="aegis-bench-scale-") as scratch:
        root = Path(scratch)
        policy = root / "policies.yaml"
        policy.write_text(POLICY)
        data = root / "data"
        # Registering runs without `envoy --mode validate` (each new cluster would be one
        # validate of the whole config); the restart below validates the result once.
        with running_server(data, **server_env(policy, AEGIS_XDS_VALIDATE="false")) as (url, _process):
            details = asyncio.run(populate(url, models, canaries, concurrency=concurrency, budget=budget))
        started = time.monotonic()
        with running_server(data, **server_env(policy)) as (url, process):
            details["restart_to_healthy_with_validate_s"] = round(time.monotonic() - started, 2)
            details["rds_poll_200"] = asyncio.run(
                timed_polls(url, "routes", (resources.ROUTE_CONFIG_NAME,), 10)
            )
            details["cds_poll_200"] = asyncio.run(timed_polls(url, "clusters", (), 5))
            details["server_rss_mib"] = round(rss_bytes(process.pid) / MIB, 1)
            details["server_peak_rss_mib"] = round(rss_bytes(process.pid, "VmHWM") / MIB, 1)
        details.update(asyncio.run(tick_in_process(data, policy, tick_runs)))
    return details


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--canaries", type=int, default=100)
    parser.add_argument("--runs", type=int, default=15, help="timed runs of each in-process measure")
    parser.add_argument(
        "--e2e-models", type=int, default=None, help="models registered through the API (default: --models)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=16, help="concurrent API clients while registering"
    )
    parser.add_argument(
        "--budget-seconds",
        type=float,
        default=180,
        help="stop registering new models after this long; the figures then say how many",
    )
    parser.add_argument("--tick-runs", type=int, default=10)
    parser.add_argument("--skip-e2e", action="store_true")
    args = parser.parse_args()
    raise_open_files()
    value, baseline, details = in_process(args.models, args.canaries, args.runs)
    if not args.skip_e2e:
        e2e_models = args.e2e_models or args.models
        e2e_canaries = args.canaries * e2e_models // args.models
        e2e = end_to_end(
            e2e_models,
            e2e_canaries,
            concurrency=args.concurrency,
            budget=args.budget_seconds,
            tick_runs=args.tick_runs,
        )
        registered, active = e2e["models_registered"], e2e["active_rollouts_in_runner"]
        tick_ms = e2e["tick_all_median_ms"]
        if (registered, active) != (args.models, args.canaries) and registered and active:
            # Each rollout's tick rebuilds the desired state of every model (see the tick
            # profile), so a tick grows with rollouts x models.
            tick_ms = tick_ms * (args.canaries / active) * (args.models / registered)
            e2e["extrapolated"] = {
                "note": (
                    f"EXTRAPOLATED: only {registered} models and {active} rollouts went through the API; "
                    f"tick scaled linearly in rollouts x models to {args.models} and {args.canaries}; "
                    "the poll and RSS figures are for the registered models"
                ),
                "tick_all_ms": round(tick_ms, 1),
            }
        e2e["tick_target_ms"] = 1000
        e2e["tick_meets_target"] = tick_ms < 1000
        details["e2e"] = e2e
    report(
        "scale",
        value=value,
        unit="ms",
        baseline="same resources built and json.dumps'd, no check, no hashing",
        baseline_value=baseline,
        target=100.0,
        higher_is_better=False,
        details=details,
    )


if __name__ == "__main__":
    main()
