"""Envoy resources built from desired state: clusters, weights, header and mirror routes."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from controlplane.xds.resources import (
    Arm,
    DesiredState,
    Endpoint,
    HeaderMatch,
    ListenerAddress,
    ModelRoute,
    RdsPolling,
    WeightedTarget,
    cluster_name,
    clusters,
    listener,
    model_routes,
    model_weights,
    route_configuration,
    runtime_layer,
    runtime_prefix,
    serving_weights,
)

UP_1 = (Endpoint("127.0.0.1", 9001),)
UP_2 = (Endpoint("127.0.0.1", 9002),)
V1 = cluster_name("foo", "v1")
V2 = cluster_name("foo", "v2")


def foo(
    stable: int, canary: int, *, stable_up: bool = True, canary_up: bool = True, **extra: Any
) -> ModelRoute:
    return ModelRoute(
        "foo",
        stable=Arm("v1", stable, UP_1 if stable_up else ()),
        canary=Arm("v2", canary, UP_2 if canary_up else ()),
        **extra,
    )


def split_route(model: ModelRoute, **kwargs: Any) -> dict[str, Any]:
    """The route for `/v1/models/foo:` requests without a header match."""
    routes = model_routes(model, **kwargs)
    return next(route for route in routes if route["name"] == f"{model.model_name}/v1-verb")


PREFIX = runtime_prefix(model_routes(foo(90, 10))) or ""
# Both arms serve: the route names both, falls back to the stable one, and reads the weights.
BY_RUNTIME = {
    "weighted_clusters": {
        "clusters": [{"name": V1, "weight": 1}, {"name": V2, "weight": 0}],
        "runtime_key_prefix": PREFIX,
    }
}


def test_cluster_name_is_pinned_because_dashboards_and_templates_use_it() -> None:
    assert cluster_name("foo", "v2") == "foo-v2-0ba41434"


TRICKY = [("a.b", "1"), ("a_b", "1"), ("a-b", "1"), ("a", "b-1"), ("a", "b.1"), ("m", "1.0+x")]


def test_cluster_names_are_dot_free_unique_and_deterministic() -> None:
    names = [cluster_name(model, version) for model, version in TRICKY]
    assert len(set(names)) == len(TRICKY)
    assert all(re.fullmatch(r"[A-Za-z0-9_-]+", name) for name in names)
    assert names == [cluster_name(model, version) for model, version in TRICKY]


@pytest.mark.parametrize(
    ("model", "expected_action", "expected_weights"),
    [
        pytest.param(foo(90, 10), BY_RUNTIME, {f"{PREFIX}.{V1}": 90, f"{PREFIX}.{V2}": 10}, id="90/10 split"),
        pytest.param(foo(90, 10, canary_up=False), {"cluster": V1}, {}, id="canary without endpoints"),
        pytest.param(foo(90, 10, stable_up=False), {"cluster": V2}, {}, id="stable without endpoints"),
        pytest.param(foo(100, 0), BY_RUNTIME, {f"{PREFIX}.{V1}": 100, f"{PREFIX}.{V2}": 0}, id="canary at 0"),
        pytest.param(
            foo(0, 100), BY_RUNTIME, {f"{PREFIX}.{V1}": 0, f"{PREFIX}.{V2}": 100}, id="canary at 100"
        ),
        pytest.param(ModelRoute("foo", stable=Arm("v1", 100, UP_1)), {"cluster": V1}, {}, id="no canary"),
    ],
)
def test_split_route_names_the_serving_arms_and_the_runtime_layer_weighs_them(
    model: ModelRoute, expected_action: dict[str, Any], expected_weights: dict[str, int]
) -> None:
    assert split_route(model)["route"] == expected_action
    assert dict(model_weights(model)) == expected_weights
    assert runtime_layer(DesiredState(ListenerAddress("127.0.0.1", 1), (model,))) == {
        "name": "aegis_weights", "layer": expected_weights,
    }


def test_a_weight_change_leaves_the_routes_as_they_were() -> None:
    assert model_routes(foo(90, 10)) == model_routes(foo(0, 100)) == model_routes(foo(100, 0))
    assert model_weights(foo(90, 10)) != model_weights(foo(50, 50))


@pytest.mark.parametrize(
    "other",
    [
        pytest.param(ModelRoute("foo", Arm("v1", 0, UP_1), Arm("v3", 100, UP_2)), id="new canary"),
        pytest.param(foo(90, 10, mirror_percent=5), id="mirroring"),
        pytest.param(foo(90, 10, canary_matches=(HeaderMatch.of({"x-canary": "1"}),)), id="header match"),
    ],
)
def test_other_routes_read_other_runtime_keys(other: ModelRoute) -> None:
    """Routes never read weights published for other routes: a node that still runs (or kept,
    rejecting the new ones) older routes reads the weights they came with."""
    assert PREFIX.startswith("aegis_weights.foo.")
    assert runtime_prefix(model_routes(other)) not in (None, PREFIX)
    assert not {key for key, _ in model_weights(foo(90, 10))} & {key for key, _ in model_weights(other)}


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        (foo(90, 10), (WeightedTarget(V1, 90), WeightedTarget(V2, 10))),
        (foo(90, 10, canary_up=False), (WeightedTarget(V1, 100),)),
        (foo(70, 30, stable_up=False), (WeightedTarget(V2, 100),)),
        (foo(100, 0), (WeightedTarget(V1, 100), WeightedTarget(V2, 0))),
        (foo(90, 10, stable_up=False, canary_up=False), ()),
    ],
)
def test_weight_of_an_arm_without_endpoints_goes_to_the_other(
    model: ModelRoute, expected: tuple[WeightedTarget, ...]
) -> None:
    assert serving_weights(model) == expected


def test_canary_not_yet_acknowledged_gets_no_traffic() -> None:
    assert serving_weights(foo(90, 10), routable=frozenset({V1})) == (WeightedTarget(V1, 100),)
    assert split_route(foo(90, 10, mirror_percent=50), routable=frozenset({V1}))["route"] == {"cluster": V1}
    assert model_weights(foo(90, 10), routable=frozenset({V1})) == ()


def test_model_without_endpoints_answers_503_with_a_json_reason() -> None:
    route = split_route(foo(90, 10, stable_up=False, canary_up=False))
    assert "route" not in route
    assert route["direct_response"]["status"] == 503
    body = json.loads(route["direct_response"]["body"]["inline_string"])
    assert body["error"]["code"] == "no_endpoints"
    assert "'foo'" in body["error"]["message"]


def test_routes_match_only_their_own_model_paths() -> None:
    matches = [route["match"] for route in model_routes(foo(90, 10))]
    assert matches == [
        {"path_separated_prefix": "/v1/models/foo"},
        {"prefix": "/v1/models/foo:"},
        {"path_separated_prefix": "/v2/models/foo"},
    ]
    # Envoy's path_separated_prefix: the path itself, or the path followed by "/".
    def matched(path: str) -> bool:
        return any(
            path.startswith(m["prefix"]) if "prefix" in m
            else path == m["path_separated_prefix"] or path.startswith(m["path_separated_prefix"] + "/")
            for m in matches
        )

    for own in ("/v1/models/foo", "/v1/models/foo:predict", "/v1/models/foo/x", "/v2/models/foo/infer"):
        assert matched(own), own
    for other in ("/v1/models/foobar:predict", "/v1/models/foo.bar/x", "/v2/models/foob/infer"):
        assert not matched(other), other


def test_header_routes_to_the_canary_come_before_the_split() -> None:
    model = foo(90, 10, canary_matches=(HeaderMatch.of({"x-canary": "always", "x-b": "1"}),))
    routes = model_routes(model)
    assert [route["name"] for route in routes[:3]] == [
        f"foo/match-0/{kind}" for kind in ("v1", "v1-verb", "v2")
    ]
    assert routes[1]["match"] == {
        "prefix": "/v1/models/foo:",
        "headers": [
            {"name": "x-b", "string_match": {"exact": "1"}},
            {"name": "x-canary", "string_match": {"exact": "always"}},
        ],
    }
    assert all(route["route"] == {"cluster": V2} for route in routes[:3])
    assert "weighted_clusters" in routes[3]["route"]


def test_header_routes_are_dropped_while_the_canary_has_no_endpoints() -> None:
    model = foo(90, 10, canary_up=False, canary_matches=(HeaderMatch.of({"x-canary": "1"}),))
    assert not any("headers" in route["match"] for route in model_routes(model))


@pytest.mark.parametrize(
    ("model", "expected_policies"),
    [
        (
            foo(100, 0, mirror_percent=25),
            [
                {
                    "cluster": V2,
                    "runtime_fraction": {"default_value": {"numerator": 25, "denominator": "HUNDRED"}},
                }
            ],
        ),
        (foo(100, 0, mirror_percent=0), None),
        (foo(100, 0, mirror_percent=25, canary_up=False), None),
    ],
)
def test_mirror_copies_a_percentage_to_the_canary(
    model: ModelRoute, expected_policies: list[dict[str, Any]] | None
) -> None:
    assert split_route(model)["route"].get("request_mirror_policies") == expected_policies


def test_listener_gets_its_routes_by_rest_rds() -> None:
    desired = DesiredState(
        ListenerAddress("127.0.0.1", 10000),
        (),
        RdsPolling(refresh_delay_ms=200, request_timeout_ms=10000),
    )
    built = listener(desired)
    manager = built["filter_chains"][0]["filters"][0]["typed_config"]
    assert built["address"] == {"socket_address": {"address": "127.0.0.1", "port_value": 10000}}
    assert manager["rds"] == {
        "route_config_name": "aegis_routes",
        "config_source": {
            "resource_api_version": "V3",
            "api_config_source": {
                "api_type": "REST",
                "transport_api_version": "V3",
                "cluster_names": ["xds_cluster"],
                "refresh_delay": "0.200s",
                "request_timeout": "10.000s",
            },
        },
    }


def test_every_version_gets_a_static_cluster_even_without_endpoints() -> None:
    desired = DesiredState(ListenerAddress("127.0.0.1", 10000), (foo(90, 10, canary_up=False),))
    built = {resource["name"]: resource for resource in clusters(desired)}
    assert set(built) == {V1, V2}
    assert built[V2]["type"] == "STATIC"
    assert built[V2]["load_assignment"] == {"cluster_name": V2, "endpoints": []}
    assert built[V1]["load_assignment"]["endpoints"][0]["lb_endpoints"] == [
        {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 9001}}}}
    ]


def test_total_weight_is_never_sent() -> None:
    desired = DesiredState(ListenerAddress("127.0.0.1", 10000), (foo(90, 10),))
    assert "total_weight" not in json.dumps(route_configuration(desired))


@pytest.mark.parametrize(
    ("build", "reason"),
    [
        (lambda: ModelRoute("a/b", stable=Arm("v1", 100)), "not safe in a URL path"),
        (lambda: ModelRoute("a:b", stable=Arm("v1", 100)), "not safe in a URL path"),
        (lambda: foo(-1, 101), "negative"),
        (lambda: foo(0, 0), "sum to 0"),
        (lambda: foo(90, 10, mirror_percent=101), "0-100"),
        (lambda: ModelRoute("foo", stable=Arm("v1", 90), canary=Arm("v1", 10)), "same version"),
        (lambda: HeaderMatch.of({}), "at least one header"),
        (
            lambda: DesiredState(ListenerAddress("127.0.0.1", 1), (foo(1, 0), foo(1, 0))),
            "routed twice",
        ),
    ],
)
def test_desired_state_that_cannot_be_routed_is_refused(build: Any, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        build()
