"""Many routed models for the scale benchmarks: their layout, and seeding them into a data directory.

The layout (`desired_state`): `models` models, `canaries` of them spread evenly
with a weighted canary arm, one endpoint per arm on made-up addresses.

Registering 10,000 models over HTTP takes most of an hour here (about 6 models/s
with their endpoints and promotions), so the scale benchmarks seed the database
instead: for each `ModelRoute` the rows `aegis serve` itself writes, in a few bulk
inserts (about a second for 10,000 models):

- the model, its stable version at `prod` and its canary (if any) at `canary`, each
  with a history entry and a real HMAC signature by the server's sign key over one
  shared artifact, which is stored as a blob (so downloads still verify);
- one endpoint row per arm endpoint, alive for `ttl_seconds`;
- for a model with a canary, an operator traffic setting with the arms' weights.

No rollout rows: a seeded canary is split by hand, not driven by a policy. The
schema comes from the app's own table definitions; `aegis serve` creates the
tables it misses (rollouts, alerts) when it starts on the seeded directory.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Table, create_engine, insert
from sqlmodel import SQLModel

from controlplane.migrations import upgrade_schema
from controlplane.settings import load_settings
from controlplane.traffic.store import EndpointRow, TrafficRow
from controlplane.xds.resources import Arm, DesiredState, Endpoint, ListenerAddress, ModelRoute
from registry.blob_directory import DirectoryBlobStore
from registry.store import HistoryRow, ModelRow, VersionRow

__all__ = ["desired_state", "endpoint", "has_canary", "model_name", "seed_models"]

ARTIFACT = b"aegis bench seeded artifact\n" * 64
ACTOR = "bench-seed"


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


def seed_models(
    data_dir: Path, routes: Iterable[ModelRoute], *, sign_key: str, ttl_seconds: int = 3600
) -> int:
    """Seed `routes` into `data_dir` (SQLite, created if missing); returns how many models."""
    data_dir.mkdir(parents=True, exist_ok=True)
    server_settings = load_settings({"AEGIS_MODEL_SIGN_KEY": sign_key, "AEGIS_DATA_DIR": str(data_dir)})
    keyring = server_settings.security.keyring
    checksum = hashlib.sha256(ARTIFACT).hexdigest()
    blob = DirectoryBlobStore(data_dir / "blobs").path_for(checksum)
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(ARTIFACT)

    now = datetime.now(UTC)
    expires_at = now + timedelta(seconds=ttl_seconds)
    models: list[dict[str, Any]] = []
    versions: list[dict[str, Any]] = []
    history: list[dict[str, Any]] = []
    endpoints: list[dict[str, Any]] = []
    settings: list[dict[str, Any]] = []
    for route in routes:
        name = route.model_name
        models.append({"name": name, "created_at": now})
        arms: list[tuple[Arm, str]] = [(route.stable, "prod")]
        if route.canary is not None:
            arms.append((route.canary, "canary"))
            settings.append({
                "model_name": name, "weights": {arm.version: arm.weight for arm, _ in arms}, "match": [],
                "mirror_percent": 0, "owner": "operator", "updated_by": ACTOR, "updated_at": now,
            })
        for arm, stage in arms:
            signature = keyring.sign(name, arm.version, checksum)
            versions.append({
                "model_name": name, "version": arm.version, "checksum": checksum,
                "size_bytes": len(ARTIFACT), "signature": signature.signature, "key_id": signature.key_id,
                "algorithm": signature.algorithm.value, "stage": stage, "created_at": now,
                "created_by": ACTOR, "extra": {},
            })
            history.append({
                "model_name": name, "version": arm.version, "from_stage": "staging", "to_stage": stage,
                "action": "promote", "at": now, "actor": ACTOR, "reason": "seeded by the benchmark",
            })
            endpoints += [
                {
                    "model_name": name, "version": arm.version, "address": endpoint.address,
                    "port": endpoint.port, "ttl_seconds": ttl_seconds, "expires_at": expires_at,
                    "registered_by": ACTOR,
                }
                for endpoint in arm.endpoints
            ]

    engine = create_engine(f"sqlite:///{data_dir / 'aegis.db'}")
    try:
        with engine.connect() as connection:
            upgrade_schema(connection)  # the schema `aegis serve` expects, at its revision
        with engine.begin() as connection:
            for row_type, rows in (
                (ModelRow, models), (VersionRow, versions), (HistoryRow, history),
                (EndpointRow, endpoints), (TrafficRow, settings),
            ):
                if rows:
                    connection.execute(insert(_table(row_type)), rows)
    finally:
        engine.dispose()
    return len(models)


def _table(row_type: type[SQLModel]) -> Table:
    return SQLModel.metadata.tables[str(row_type.__tablename__)]
