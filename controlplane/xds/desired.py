"""From registry stages, traffic settings and live endpoints to a `DesiredState`: pure.

The rules a user relies on:
- a model is routed once it has a prod (or, lacking one, a canary) version;
- with no traffic setting, prod takes 100;
- weights naming a version that is no longer prod or canary are dropped, and if
  nothing positive remains, prod takes 100 again (a promotion or a rollback never
  leaves a model with a stale split);
- an arm without endpoints gets no traffic (the builders move its weight).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from controlplane.xds.resources import (
    Arm,
    DesiredState,
    Endpoint,
    HeaderMatch,
    ListenerAddress,
    ModelRoute,
    RdsPolling,
)


@dataclass(frozen=True)
class ModelStages:
    """A model's live versions as the registry has them."""

    model_name: str
    prod: str | None = None
    canary: str | None = None


@dataclass(frozen=True)
class TrafficSetting:
    """An operator's or a rollout's split for one model."""

    weights: Mapping[str, int] = field(default_factory=dict)
    match: tuple[Mapping[str, str], ...] = ()
    mirror_percent: int = 0


DEFAULT_RDS_POLLING = RdsPolling()

EndpointMap = Mapping[tuple[str, str], tuple[Endpoint, ...]]


def effective_weights(stages: ModelStages, setting: TrafficSetting | None) -> dict[str, int]:
    """The weights that apply now, per live version (pure)."""
    live = [v for v in (stages.prod, stages.canary) if v is not None]
    if not live:
        return {}
    stable = live[0]
    requested = dict(setting.weights) if setting else {}
    weights = {version: max(0, int(requested.get(version, 0))) for version in live}
    if sum(weights.values()) <= 0:
        weights = dict.fromkeys(live, 0)
        weights[stable] = 100
    return weights


def model_route(
    stages: ModelStages, setting: TrafficSetting | None, endpoints: EndpointMap
) -> ModelRoute | None:
    """How one model is routed, or None when it has no live version (pure)."""
    weights = effective_weights(stages, setting)
    if not weights:
        return None
    stable_version = stages.prod or stages.canary
    assert stable_version is not None
    stable = Arm(
        stable_version, weights[stable_version], endpoints.get((stages.model_name, stable_version), ())
    )
    canary: Arm | None = None
    if stages.prod is not None and stages.canary is not None:
        canary = Arm(
            stages.canary, weights[stages.canary], endpoints.get((stages.model_name, stages.canary), ())
        )
    setting = setting or TrafficSetting()
    return ModelRoute(
        model_name=stages.model_name,
        stable=stable,
        canary=canary,
        canary_matches=tuple(HeaderMatch.of(match) for match in setting.match if match),
        mirror_percent=setting.mirror_percent if canary is not None else 0,
    )


def desired_state(
    listener: ListenerAddress,
    models: Mapping[str, ModelStages],
    traffic: Mapping[str, TrafficSetting],
    endpoints: EndpointMap,
    *,
    rds_polling: RdsPolling = DEFAULT_RDS_POLLING,
) -> DesiredState:
    """The whole routing state Envoy should run (pure)."""
    routes = (model_route(stages, traffic.get(name), endpoints) for name, stages in sorted(models.items()))
    return DesiredState(
        listener=listener,
        models=tuple(route for route in routes if route is not None),
        rds_polling=rds_polling,
    )
