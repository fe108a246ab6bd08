"""What one weight change and one new model cost the running app, at scale, on seeded data.

In process, no HTTP and no Envoy: the app is built here (`create_app` + an aiohttp
test server) on a data directory seeded with bench/seed.py, and its own
TrafficService is called as the API handlers call it, so whatever the snapshot
builder does (rebuild or reuse) is what is measured:

(a) `set_traffic` of one model's weights, to the snapshot it published (the
    publisher's listeners see it): no database work happens before that point;
(b) a new model: its version becomes prod (`on_stage_change`), then its model
    server announces an endpoint (`announce`); each step to the snapshot it
    published, minus the time spent inside database transactions before it
    (wrapped at `Database.transaction`, the one place that opens sessions).

Also `TrafficService.runs(model, weights)` for every canary model: the check a
rollout's tick makes for its model (most of a tick, per the scale bench's profile).

The baseline is the full rebuild: the whole desired state built into a checked,
versioned snapshot with no reuse (`build_snapshot` + its versions).
`envoy --mode validate` is off (a new structure would wait for Envoy, not for the
builder) and no node is connected (no make-before-break gating).
"""

from __future__ import annotations

import hashlib
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestServer

from bench.common import ADMIN_TOKEN
from bench.seed import ARTIFACT, desired_state, endpoint, has_canary, model_name, seed_models
from controlplane.app import DATABASE, create_app
from controlplane.settings import Settings, load_settings
from controlplane.traffic import api as traffic_api
from controlplane.traffic.service import EndpointAnnouncement, TrafficRequest
from controlplane.xds.builder import build_snapshot
from controlplane.xds.resources import DesiredState
from controlplane.xds.snapshot import Snapshot
from registry import api as registry_api
from registry.domain import ChangeAction, HistoryEntry, ModelVersion, Stage, StageChange
from registry.store import Database

SIGN_KEY = "bench-sign-key"


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



class DatabaseClock:
    """When the app was inside `Database.transaction()`, so snapshot work can be told from I/O.

    Every store opens its sessions there ("the one place that owns database sessions"),
    so wrapping that one method of the app's `Database` sees all of its reads and writes.
    """

    def __init__(self, database: Database) -> None:
        self.intervals: list[tuple[float, float]] = []
        opened = database.transaction

        @asynccontextmanager
        async def timed() -> AsyncIterator[Any]:
            started = time.perf_counter()
            try:
                async with opened() as session:
                    yield session
            finally:
                self.intervals.append((started, time.perf_counter()))

        database.transaction = timed  # type: ignore[method-assign]

    def seconds_within(self, start: float, end: float) -> float:
        return sum(max(0.0, min(b, end) - max(a, start)) for a, b in self.intervals)


@dataclass
class StepTiming:
    """One call: from its start to the snapshot it published, and the database time before that."""

    to_published_ms: float
    call_ms: float
    database_ms: float

    @property
    def snapshot_work_ms(self) -> float:
        return self.to_published_ms - self.database_ms


async def timed_step(
    step: Awaitable[object], published: list[float], database: DatabaseClock
) -> StepTiming:
    """Run `step`; the time to the first snapshot it published (the whole call if none)."""
    before = len(published)
    started = time.perf_counter()
    await step
    ended = time.perf_counter()
    at = published[before] if len(published) > before else ended
    return StepTiming(
        (at - started) * 1000, (ended - started) * 1000, database.seconds_within(started, at) * 1000
    )


def app_settings(data_dir: Path, **extra: str) -> Settings:
    return load_settings({
        "AEGIS_DATA_DIR": str(data_dir),
        "AEGIS_API_TOKENS": f"admin:{ADMIN_TOKEN}",
        "AEGIS_MODEL_SIGN_KEY": SIGN_KEY,
        # Snapshot work only: `envoy --mode validate` of a new structure is Envoy's time.
        "AEGIS_XDS_VALIDATE": "false",
        # The app's own loop must not tick while we time.
        "AEGIS_ROLLOUT_TICK_SECONDS": "3600",
        "AEGIS_XDS_GRPC_LISTEN": "off",
        **extra,
    })


async def changes_in_app(
    data_dir: Path, *, models: int, canaries: int, runs: int, registrations: int
) -> dict[str, Any]:
    """(a) a weight change and (b) adding a model, through TrafficService, on seeded data.

    The app is built here on the seeded directory (`create_app` + an aiohttp test
    server): its TrafficService publishes through its Publisher as for an API call.
    The baseline is the full rebuild: the whole desired state built into a checked,
    versioned snapshot from nothing.
    """
    seeded = seed_models(data_dir, desired_state(models, canaries).routed(), sign_key=SIGN_KEY)
    app = create_app(app_settings(data_dir))
    server = TestServer(app)
    started = time.perf_counter()
    await server.start_server()
    startup_ms = (time.perf_counter() - started) * 1000
    try:
        traffic = app[traffic_api.TRAFFIC]
        registry_store = app[registry_api.SERVICE].store
        database = DatabaseClock(app[DATABASE])
        published: list[float] = []
        traffic.publisher.on_publish(lambda _snapshot: published.append(time.perf_counter()))
        routed = len(traffic.desired().models)

        # (a) one model's weights, a different canary model each time.
        canary_models = [
            model_name(i) for i in range(models) if has_canary(i, models=models, canaries=canaries)
        ]
        weight_changes = []
        for run in range(runs + 1):
            name = canary_models[(run * 37) % len(canary_models)]
            canary_weight = 5 + run % 90
            request = TrafficRequest(weights={"1": 100 - canary_weight, "2": canary_weight})
            weight_changes.append(await timed_step(
                traffic.set_traffic(name, request, actor="bench"), published, database
            ))
        weight_changes = weight_changes[1:]  # the first warms up

        # (b) a new model: its version becomes prod, then its model server announces itself.
        registrations_timed: list[tuple[StepTiming, StepTiming]] = []
        for index in range(registrations + 1):
            name, version = f"bench-new-{index:04d}", "1"
            await registry_store.insert_version(new_prod_version(name, version))
            change = StageChange(
                name, version, Stage.STAGING, Stage.PROD, "bench", "bench", ChangeAction.PROMOTE
            )
            stage_step = await timed_step(traffic.on_stage_change([change]), published, database)
            address = endpoint(models + index, 1)
            announcement = EndpointAnnouncement(
                name, version, address.address, address.port, ttl_seconds=3600
            )
            endpoint_step = await timed_step(
                traffic.announce(announcement, actor="bench"), published, database
            )
            registrations_timed.append((stage_step, endpoint_step))
        registrations_timed = registrations_timed[1:]

        # What a rollout's tick asks the traffic service for each rollout: does Envoy run the
        # model's weights (per the tick profile, most of a tick), at this many models.
        ack_check_ms, _ = median_ms(
            lambda: [traffic.runs(name, traffic.weights(name)) for name in canary_models], min(runs, 3)
        )

        desired_now = traffic.desired()
        # A full rebuild takes seconds at 10,000 models: a few runs.
        rebuild_ms, rebuild_max = median_ms(lambda: publishable_snapshot(traffic.desired()), min(runs, 3))
        build_only_ms, _ = median_ms(lambda: build_snapshot(desired_now), min(runs, 3))
    finally:
        await server.close()

    def medians(timings: list[StepTiming]) -> dict[str, float]:
        return {
            "to_published_median_ms": round(statistics.median(t.to_published_ms for t in timings), 2),
            "to_published_max_ms": round(max(t.to_published_ms for t in timings), 2),
            "database_median_ms": round(statistics.median(t.database_ms for t in timings), 2),
            "snapshot_work_median_ms": round(statistics.median(t.snapshot_work_ms for t in timings), 2),
            "whole_call_median_ms": round(statistics.median(t.call_ms for t in timings), 2),
        }

    per_registration = [stage.snapshot_work_ms + ann.snapshot_work_ms for stage, ann in registrations_timed]
    return {
        "seeded_models": seeded,
        "routed_models_in_app": routed,
        "how_seeded": "rows written straight into SQLite (bench/seed.py), then the app started on them",
        "app_startup_with_full_publish_ms": round(startup_ms, 1),
        "weight_change": {"runs": len(weight_changes), **medians(weight_changes)},
        "weight_change_to_published_ms": statistics.median(t.to_published_ms for t in weight_changes),
        "registration": {
            "models_added": len(registrations_timed),
            "stage_change_to_prod": medians([stage for stage, _ in registrations_timed]),
            "first_endpoint": medians([ann for _, ann in registrations_timed]),
            "snapshot_work_per_registration_median_ms": round(statistics.median(per_registration), 2),
            "snapshot_work_per_registration_max_ms": round(max(per_registration), 2),
            "target_ms": 10,
            "meets_target": statistics.median(per_registration) <= 10,
        },
        "rollout_ack_check_per_model_ms": round(ack_check_ms / len(canary_models), 3),
        "full_rebuild_ms": round(rebuild_ms, 2),
        "full_rebuild_max_ms": round(rebuild_max, 2),
        "full_rebuild_build_snapshot_only_ms": round(build_only_ms, 2),
    }


def new_prod_version(name: str, version: str) -> ModelVersion:
    """A version as registration leaves it, already at prod (the registry's own part, untimed)."""
    now = datetime.now(UTC)
    checksum = hashlib.sha256(ARTIFACT).hexdigest()
    signature = app_settings(Path(".")).security.keyring.sign(name, version, checksum)
    return ModelVersion(
        model_name=name, version=version, checksum=checksum, size_bytes=len(ARTIFACT),
        signature=signature.signature, key_id=signature.key_id, algorithm=signature.algorithm.value,
        stage=Stage.PROD, created_at=now, created_by="bench",
        history=(HistoryEntry(Stage.STAGING, Stage.PROD, now, "bench", "bench", ChangeAction.PROMOTE),),
    )
