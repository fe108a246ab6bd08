"""The documents behind each console page, built by the same services and response models as the API.

A page shows what `GET /v1/...` answers, because it is built here from the same
service calls and the same response models, then dumped to JSON-shaped values for
the pure view functions in `views.py`.
"""

from __future__ import annotations

from typing import Any

from aiohttp.helpers import ChainMapProxy

from controlplane import alerts
from controlplane.cluster import api as cluster_api
from controlplane.rollout import api as rollout_api
from controlplane.rollout.schemas import (
    DecisionDocument,
    RolloutDocument,
    RolloutHistoryEntry,
    RolloutSummary,
)
from controlplane.traffic import api as traffic_api
from controlplane.traffic.schemas import TrafficDocument
from controlplane.xds import server as xds_server
from registry import api as registry_api
from registry.errors import NotFound
from registry.schemas import ModelSummary, StagePointers, VersionDocument
from registry.store import as_utc

Json = dict[str, Any]
HISTORY_ROLLOUTS = 20  # past rollouts on a model's page
ALERTS_SHOWN = 100
ROLLOUT_DECISIONS = 50


def _json(document: Any) -> Json:
    dumped: Json = document.model_dump(mode="json", by_alias=True)
    return dumped


async def models(app: ChainMapProxy) -> list[Json]:
    """`GET /v1/registry/models`."""
    listed = await app[registry_api.SERVICE].store.list_models()
    return [
        _json(ModelSummary(model_name=name, created_at=created_at, versions=len(stages),
                           stages=StagePointers.of(stages)))
        for name, created_at, stages in listed
    ]


def traffic(app: ChainMapProxy, model_name: str) -> Json | None:
    """`GET /v1/traffic/{model}`: in memory, cheap enough to take on every live tick.

    None for a model with no version in prod or canary yet: nothing routes to it.
    """
    try:
        return _json(TrafficDocument.of(app[traffic_api.TRAFFIC], model_name))
    except NotFound:
        return None


async def rollout_summaries(app: ChainMapProxy) -> dict[str, Json]:
    """`GET /v1/rollouts`: each model's latest rollout."""
    runner = app[rollout_api.RUNNER]
    rows = await runner.store.latest_per_model()
    return {row.model_name: _json(RolloutSummary.of(row, runner)) for row in rows}


async def model(app: ChainMapProxy, model_name: str) -> tuple[Json, dict[str, bool]]:
    """`GET /v1/registry/{model}` and whether each version's signature verifies with its key.

    The signature is checked without re-hashing the artifact (that is `validate`'s job, which
    reads every byte): the page shows whether the recorded checksum is signed by a known key.
    """
    service = app[registry_api.SERVICE]
    versions = await service.list_versions(model_name)
    document = {
        "model_name": model_name,
        "stages": _json(StagePointers.of([(v.version, v.stage.value) for v in versions])),
        "versions": [_json(VersionDocument.of(v)) for v in versions],
    }
    signatures = {
        v.version: service.keyring.verify(
            v.model_name, v.version, v.checksum, signature=v.signature, key_id=v.key_id
        )
        for v in versions
    }
    return document, signatures


async def rollout_history(app: ChainMapProxy, model_name: str) -> Json:
    """`GET /v1/rollouts/{model}/history`, the first page."""
    runner = app[rollout_api.RUNNER]
    history = await runner.store.history(model_name, limit=HISTORY_ROLLOUTS, before=None)
    return {
        "model_name": model_name,
        "rollouts": [
            _json(RolloutHistoryEntry.model_validate({
                **RolloutSummary.fields_of(row, runner), "decision_count": count, "last_decision_at": last_at,
            }))
            for row, count, last_at in history
        ],
    }


async def latest_rollout(app: ChainMapProxy, model_name: str) -> Json:
    """`GET /v1/rollouts/{model}` (404 when the model never had one)."""
    runner = app[rollout_api.RUNNER]
    found = await runner.store.latest(model_name, decisions=ROLLOUT_DECISIONS)
    if found is None:
        raise NotFound(f"{model_name} has no rollout yet: promoting a version to canary starts one")
    return _json(RolloutDocument.latest(*found, runner))


async def past_rollout(app: ChainMapProxy, model_name: str, rollout_id: int) -> Json:
    """`GET /v1/rollouts/{model}/history/{id}` with its first page of decisions."""
    runner = app[rollout_api.RUNNER]
    row = await runner.store.one(model_name, rollout_id)
    if row is None or row.id is None:
        raise NotFound(f"{model_name} has no rollout {rollout_id}")
    decisions = await runner.store.decisions(row.id, limit=ROLLOUT_DECISIONS, before=None)
    return {
        **_json(RolloutSummary.of(row, runner)),
        "decisions": [_json(DecisionDocument.of(d)) for d in decisions],
        "served_canary_weights": None,
    }


async def received_alerts(app: ChainMapProxy) -> list[Json]:
    rows = await app[alerts.INTAKE].store.recent(limit=ALERTS_SHOWN)
    return [
        {
            "received_at": as_utc(row.received_at).isoformat(), "alertname": row.alertname,
            "model_name": row.model_name, "status": row.status, "action": row.action,
            "starts_at": row.starts_at,
        }
        for row in rows
    ]


def xds_nodes(app: ChainMapProxy) -> Json:
    """`GET /v1/xds/nodes`."""
    return _json(app[xds_server.SERVER].node_view())


async def cluster(app: ChainMapProxy) -> Json:
    """`GET /v1/cluster`."""
    return _json(await cluster_api.cluster_document(app[cluster_api.ELECTOR]))
