"""Envoy v3 resources built from the desired routing state: purely computational, no I/O.

The input is a frozen `DesiredState` (the listener address and, per model, a
stable arm and an optional canary arm with weights and endpoints); the output is
plain JSON-ready dicts in proto3 JSON form, without `"@type"` (the discovery
response wraps them; a static bootstrap embeds them as they are).

Routing rules, each for a reason:
- One STATIC cluster per (model, version) with its endpoints inline, so Envoy
  needs no EDS round trip and a cluster never waits for warming.
- No weight goes to an arm without endpoints (or, during make-before-break, to a
  cluster that Envoy has not acknowledged yet): its weight moves to the other arm.
- A model with no arm to serve it answers a direct 503 with a JSON error body
  rather than losing its route: a 404 would tell clients the model does not exist,
  while a 503 says "try again" and shows up as such in the 5xx metrics.
- `total_weight` is never sent (deprecated; Envoy sums the weights itself).
- Weights live in the runtime layer (RTDS), not in the routes: a model whose
  split has two arms gets a `weighted_clusters` route with a
  `runtime_key_prefix`, and Envoy reads each arm's weight from the runtime key
  `<prefix>.<cluster>` on every request (summing them per request). The routes
  then change only when a model's set of arms changes, and a weight change is a
  small runtime update instead of Envoy re-applying every model's routes (385 ms
  at 10,000 models, measured). The prefix names the model and hashes the rest of
  its routes, so each version of a model's routes reads its own keys: a node
  still on older routes (or one that rejected the new ones) reads the weights
  they were published with (builder.py keeps them), never a mix. The weights in
  the route are the fallback for keys Envoy does not have: all to the stable
  arm, the one split that is safe whatever the runtime layer holds.
- No retry policy: a retry stays on the same weighted cluster and would hide
  canary errors from the analysis (and overflow the default retry breaker).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any, NamedTuple

Resource = dict[str, Any]

LISTENER_NAME = "aegis_ingress"
ROUTE_CONFIG_NAME = "aegis_routes"
# The RTDS resource with every weight, and the bootstraps' runtime layer that asks for it.
RUNTIME_LAYER_NAME = "aegis_weights"
VIRTUAL_HOST_NAME = "models"
XDS_CLUSTER_NAME = "xds_cluster"
STAT_PREFIX = "ingress_http"
HCM_FILTER = "envoy.filters.network.http_connection_manager"
HCM_TYPE = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)
ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
UPSTREAM_CONNECT_TIMEOUT = "1s"

# The model name becomes part of a path prefix: a `/`, `:` or `?` in it would let
# one model's routes catch another model's requests.
_PATH_SAFE_NAME = re.compile(r"^[A-Za-z0-9._-]+$")
# Dots are out: Envoy's stats tag extraction splits cluster stat names on them.
_CLUSTER_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


class Endpoint(NamedTuple):
    """One model server instance: an IP address (not a DNS name) and a port."""

    address: str
    port: int


class WeightedTarget(NamedTuple):
    """A cluster and the weight Envoy is told to send it."""

    cluster: str
    weight: int


@dataclass(frozen=True)
class ListenerAddress:
    """Where Envoy's model listener binds (the address it gets in LDS)."""

    host: str
    port: int


@dataclass(frozen=True)
class RdsPolling:
    """How Envoy polls for routes; it lives inside the listener, so a change re-creates it.

    `refresh_delay_ms`: Envoy waits uniformly 1-2x this after each answer before it
    polls again, so a change made in that window waits for the poll; the control
    plane long-polls, so idle polling stays cheap whatever the delay. 250 ms (the
    trade-off measured in envoy/envoy-rest.yaml). `request_timeout_ms`: must exceed
    the control plane's long-poll hold (5 s by default), else every held poll counts
    as a failure. Envoys on ADS do not poll: none of this applies to them.
    """

    refresh_delay_ms: int = 250
    request_timeout_ms: int = 10000


@dataclass(frozen=True)
class Arm:
    """One version of a model that may receive traffic: its weight and where it runs."""

    version: str
    weight: int
    endpoints: tuple[Endpoint, ...] = ()


@dataclass(frozen=True)
class HeaderMatch:
    """Requests that carry every one of these headers with exactly these values."""

    headers: tuple[tuple[str, str], ...]

    def __post_init__(self) -> None:
        if not self.headers:
            raise ValueError("a header match needs at least one header")

    @classmethod
    def of(cls, headers: Mapping[str, str]) -> HeaderMatch:
        """Build from a mapping such as a policy's `match: [{headers: {...}}]` entry."""
        return cls(tuple(sorted(headers.items())))


@dataclass(frozen=True)
class ModelRoute:
    """How one model's requests are split between its stable and canary versions.

    `canary_matches` (A/B: these requests always reach the canary) and
    `mirror_percent` (shadow copies to the canary, responses discarded) apply only
    while there is a canary with endpoints.
    """

    model_name: str
    stable: Arm
    canary: Arm | None = None
    canary_matches: tuple[HeaderMatch, ...] = ()
    mirror_percent: int = 0

    def __post_init__(self) -> None:
        if not _PATH_SAFE_NAME.match(self.model_name):
            raise ValueError(f"model name {self.model_name!r} is not safe in a URL path")
        if any(arm.weight < 0 for arm in self.arms):
            raise ValueError(f"model {self.model_name!r}: weights must not be negative")
        if sum(arm.weight for arm in self.arms) == 0:
            raise ValueError(f"model {self.model_name!r}: weights sum to 0")
        if self.canary is not None and self.canary.version == self.stable.version:
            raise ValueError(f"model {self.model_name!r}: canary and stable are the same version")
        if not 0 <= self.mirror_percent <= 100:
            raise ValueError(f"mirror_percent {self.mirror_percent} is not within 0-100")

    @property
    def arms(self) -> tuple[Arm, ...]:
        return (self.stable,) if self.canary is None else (self.stable, self.canary)

    def cluster(self, arm: Arm) -> str:
        return cluster_name(self.model_name, arm.version)


@dataclass(frozen=True)
class DesiredState:
    """Everything Envoy should be told: the listener and every routed model.

    `models` is a tuple, or a mapping by model name (what a caller that keeps the
    models by name passes, so that a change to one model costs no pass over all).
    """

    listener: ListenerAddress
    models: tuple[ModelRoute, ...] | Mapping[str, ModelRoute]
    rds_polling: RdsPolling = RdsPolling()

    def __post_init__(self) -> None:
        if isinstance(self.models, tuple):
            names = [model.model_name for model in self.models]
            if len(names) != len(set(names)):
                raise ValueError(f"a model is routed twice: {sorted(names)}")

    @cached_property
    def by_name(self) -> Mapping[str, ModelRoute]:
        if isinstance(self.models, tuple):
            return {model.model_name: model for model in self.models}
        return self.models

    def routed(self) -> Iterable[ModelRoute]:
        """Every routed model, in no particular order."""
        return self.models if isinstance(self.models, tuple) else self.models.values()


def cluster_name(model: str, version: str) -> str:
    """Envoy cluster name for (model, version): readable, dot-free, unique, deterministic.

    Pure. Sanitizing alone would merge "a.b" and "a_b"; the suffix (the first 8 hex
    digits of sha256("model|version")) keeps them apart.
    """
    digest = hashlib.sha256(f"{model}|{version}".encode()).hexdigest()[:8]
    return f"{_CLUSTER_NAME_UNSAFE.sub('_', f'{model}-{version}')}-{digest}"


def _duration(milliseconds: int) -> str:
    """Proto3 JSON duration, exact (no float formatting)."""
    return f"{milliseconds // 1000}.{milliseconds % 1000:03d}s"


def _rds_source(desired: DesiredState, *, ads: bool) -> Resource:
    if ads:
        # Routes come on the same gRPC stream as the listener, in the order we send them.
        return {"resource_api_version": "V3", "ads": {}}
    polling = desired.rds_polling
    return {
        "resource_api_version": "V3",
        "api_config_source": {
            "api_type": "REST",
            "transport_api_version": "V3",
            "cluster_names": [XDS_CLUSTER_NAME],
            "refresh_delay": _duration(polling.refresh_delay_ms),
            "request_timeout": _duration(polling.request_timeout_ms),
        },
    }


def listener(desired: DesiredState, *, ads: bool = False) -> Resource:
    """The one ingress listener; its routes come by RDS over REST polls, or over ADS. Pure.

    The listener names where its routes come from, so an Envoy on ADS and one
    polling REST get different listeners (the rest of the snapshot is the same).
    """
    rds = {"route_config_name": ROUTE_CONFIG_NAME, "config_source": _rds_source(desired, ads=ads)}
    connection_manager = {
        "@type": HCM_TYPE,
        "stat_prefix": STAT_PREFIX,
        "rds": rds,
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}}],
    }
    address = desired.listener
    return {
        "name": LISTENER_NAME,
        "address": {"socket_address": {"address": address.host, "port_value": address.port}},
        "filter_chains": [{"filters": [{"name": HCM_FILTER, "typed_config": connection_manager}]}],
    }


def load_assignment(name: str, endpoints: tuple[Endpoint, ...]) -> Resource:
    """A ClusterLoadAssignment; endpoints sorted and de-duplicated so order is no change. Pure."""
    lb_endpoints = [
        {"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}
        for host, port in sorted(set(endpoints))
    ]
    return {
        "cluster_name": name,
        "endpoints": [{"lb_endpoints": lb_endpoints}] if lb_endpoints else [],
    }


def cluster(model: ModelRoute, arm: Arm) -> Resource:
    """A STATIC cluster for one (model, version), endpoints inline. Pure."""
    name = model.cluster(arm)
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": UPSTREAM_CONNECT_TIMEOUT,
        "lb_policy": "ROUND_ROBIN",
        "load_assignment": load_assignment(name, arm.endpoints),
    }


def clusters(desired: DesiredState) -> tuple[Resource, ...]:
    """Every arm's cluster, sorted by name, with or without endpoints. Pure."""
    built = (cluster(model, arm) for model in desired.routed() for arm in model.arms)
    return tuple(sorted(built, key=lambda resource: str(resource["name"])))


def _is_serving(model: ModelRoute, arm: Arm, routable: frozenset[str] | None) -> bool:
    return bool(arm.endpoints) and (routable is None or model.cluster(arm) in routable)


def serving_weights(
    model: ModelRoute, *, routable: frozenset[str] | None = None
) -> tuple[WeightedTarget, ...]:
    """The arms that can take traffic and the weights Envoy gets for them. Pure.

    An arm serves when it has endpoints and (if `routable` is given) Envoy has
    acknowledged its cluster. The weight of arms that do not serve goes to the
    first arm that does (the stable one, or the canary if the stable cannot).
    Empty when no arm can serve.
    """
    serving = [arm for arm in model.arms if _is_serving(model, arm, routable)]
    if not serving:
        return ()
    orphaned = sum(arm.weight for arm in model.arms if arm not in serving)
    return tuple(
        WeightedTarget(model.cluster(arm), arm.weight + (orphaned if index == 0 else 0))
        for index, arm in enumerate(serving)
    )


def _path_matches(model_name: str) -> tuple[tuple[str, Resource], ...]:
    """Paths that belong to a model; `/v1/models/foo:predict` never reaches `foobar`.

    `path_separated_prefix` matches the path itself or the path followed by `/`
    (and ignores the query), so three routes cover a model: at 10,000 models
    Envoy re-applies 30,000 routes on a change of routes instead of 50,000.
    """
    v1, v2 = f"/v1/models/{model_name}", f"/v2/models/{model_name}"
    return (
        ("v1", {"path_separated_prefix": v1}),
        ("v1-verb", {"prefix": f"{v1}:"}),
        ("v2", {"path_separated_prefix": v2}),
    )


def _no_endpoints_response(model_name: str) -> Resource:
    body = {"error": {"code": "no_endpoints", "message": f"model {model_name!r} has no ready endpoints"}}
    return {
        "direct_response": {
            "status": 503,
            "body": {"inline_string": json.dumps(body, separators=(",", ":"))},
        },
        "response_headers_to_add": [
            {
                "header": {"key": "content-type", "value": "application/json"},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            }
        ],
    }


def weights_prefix(model_name: str, routes: list[Resource]) -> str:
    """The `runtime_key_prefix` of a model's weighted routes, from those routes without it. Pure.

    It names the model (readable in Envoy's /runtime) and hashes its routes (arms,
    header matches, mirroring): when they change, so do the keys, so routes never
    read weights published for other routes (two splits mixed could even sum to 0).
    """
    digest = hashlib.sha256(json.dumps(routes, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    return f"{RUNTIME_LAYER_NAME}.{model_name}.{digest[:8]}"


def runtime_prefix(routes: Iterable[Resource]) -> str | None:
    """The runtime key prefix a model's routes read their weights under; None when they read none."""
    for route in routes:
        prefix = route.get("route", {}).get("weighted_clusters", {}).get("runtime_key_prefix")
        if prefix:
            return str(prefix)
    return None


def weight_key(prefix: str, cluster: str) -> str:
    """The runtime key Envoy reads a weighted cluster's weight from (`<prefix>.<name>`)."""
    return f"{prefix}.{cluster}"


def weight_key_prefix(key: str) -> str:
    """The prefix of a runtime key made by `weight_key` (cluster names have no dots)."""
    return key.rsplit(".", 1)[0]


def model_weights(
    model: ModelRoute, *, routable: frozenset[str] | None = None, routes: list[Resource] | None = None
) -> tuple[tuple[str, int], ...]:
    """One model's part of the runtime layer: (runtime key, weight) per arm. Pure.

    Empty unless the model's routes split between two arms (a single serving arm
    gets a plain route, with no weight to read). `routes`: the model's routes for
    the same `routable`, when already built.
    """
    targets = serving_weights(model, routable=routable)
    prefix = runtime_prefix(routes if routes is not None else model_routes(model, routable=routable))
    if len(targets) < 2 or prefix is None:
        return ()
    return tuple((weight_key(prefix, target.cluster), target.weight) for target in targets)


def _split_action(model: ModelRoute, targets: tuple[WeightedTarget, ...], mirror: str | None) -> Resource:
    """The route action for a model's normal traffic: weighted by runtime, plain or a direct 503."""
    if not targets:
        return _no_endpoints_response(model.model_name)
    action: Resource
    if len(targets) == 1:
        action = {"cluster": targets[0].cluster}
    else:
        # Every serving arm is named, weight or not: the runtime layer moves traffic
        # between them without a route change (100/0 and 0/100 are one route).
        # model_routes adds the runtime_key_prefix.
        names = [target.cluster for target in targets]
        fallback = [{"name": name, "weight": 1 if index == 0 else 0} for index, name in enumerate(names)]
        action = {"weighted_clusters": {"clusters": fallback}}
    if mirror is not None and model.mirror_percent > 0:
        fraction = {"numerator": model.mirror_percent, "denominator": "HUNDRED"}
        action["request_mirror_policies"] = [
            {"cluster": mirror, "runtime_fraction": {"default_value": fraction}}
        ]
    return {"route": action}


def _header_json(match: HeaderMatch) -> list[Resource]:
    return [{"name": name, "string_match": {"exact": value}} for name, value in match.headers]


def model_routes(model: ModelRoute, *, routable: frozenset[str] | None = None) -> list[Resource]:
    """One model's routes: header (A/B) routes to the canary first, then the split. Pure.

    Envoy takes the first route that matches, so the header routes must come first.
    """
    canary = model.canary
    serving = canary is not None and _is_serving(model, canary, routable)
    canary_cluster = model.cluster(canary) if canary is not None and serving else None
    routes: list[Resource] = []
    if canary_cluster is not None:
        for index, match in enumerate(model.canary_matches):
            for kind, path in _path_matches(model.model_name):
                routes.append(
                    {
                        "name": f"{model.model_name}/match-{index}/{kind}",
                        "match": {**path, "headers": _header_json(match)},
                        "route": {"cluster": canary_cluster},
                    }
                )
    targets = serving_weights(model, routable=routable)
    for kind, path in _path_matches(model.model_name):
        split = _split_action(model, targets, canary_cluster)
        routes.append({"name": f"{model.model_name}/{kind}", "match": path, **split})
    splits = [route["route"]["weighted_clusters"] for route in routes
              if "weighted_clusters" in route.get("route", {})]
    if splits:
        prefix = weights_prefix(model.model_name, routes)
        for split in splits:
            split["runtime_key_prefix"] = prefix
    return routes


def runtime_layer(desired: DesiredState, *, routable: frozenset[str] | None = None) -> Resource:
    """The one Runtime (RTDS) resource: every weighted model's arm weights. Pure."""
    layer = {
        key: weight
        for model in sorted(desired.routed(), key=lambda model: model.model_name)
        for key, weight in model_weights(model, routable=routable)
    }
    return {"name": RUNTIME_LAYER_NAME, "layer": layer}


def route_configuration(desired: DesiredState, *, routable: frozenset[str] | None = None) -> Resource:
    """The one RouteConfiguration: one virtual host, models in name order. Pure.

    `routable`: the clusters every Envoy node has acknowledged (make-before-break);
    None routes to every desired cluster.
    """
    models = sorted(desired.routed(), key=lambda model: model.model_name)
    routes = [route for model in models for route in model_routes(model, routable=routable)]
    return {
        "name": ROUTE_CONFIG_NAME,
        "virtual_hosts": [{"name": VIRTUAL_HOST_NAME, "domains": ["*"], "routes": routes}],
    }
