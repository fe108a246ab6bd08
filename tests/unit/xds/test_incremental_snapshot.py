"""Incremental snapshots: building on the previous one gives what a full build gives, reusing the rest."""

from __future__ import annotations

import dataclasses
import random

import pytest

from controlplane.xds import proto
from controlplane.xds.builder import build_snapshot
from controlplane.xds.consistency import check_consistency
from controlplane.xds.resources import (
    Arm,
    DesiredState,
    Endpoint,
    HeaderMatch,
    ListenerAddress,
    ModelRoute,
    cluster_name,
)
from controlplane.xds.snapshot import ResourceType, Snapshot

LISTENER = ListenerAddress("127.0.0.1", 10000)


def model(name: str, canary_weight: int | None = None, *, port: int = 9000) -> ModelRoute:
    stable = Arm("1", 100 - (canary_weight or 0), (Endpoint("127.0.0.1", port),))
    canary = None if canary_weight is None else Arm("2", canary_weight, (Endpoint("127.0.0.1", port + 1),))
    return ModelRoute(name, stable, canary)


def state(*models: ModelRoute) -> DesiredState:
    return DesiredState(LISTENER, models)


def same_as_full_build(incremental: Snapshot, desired: DesiredState) -> None:
    full = build_snapshot(desired)
    assert incremental.versions == full.versions
    assert incremental.ads_versions == full.ads_versions
    assert incremental.view() == full.view()
    assert incremental.route_config.encoded == full.route_config.encoded
    assert incremental.runtime.layer == full.runtime.layer
    assert incremental.runtime.encoded == full.runtime.encoded
    for kind in ResourceType:
        assert [(e.name, e.version) for e in incremental.entries(kind)] == [
            (e.name, e.version) for e in full.entries(kind)
        ]


def test_a_weight_change_changes_only_that_models_weights() -> None:
    models = [model(f"m{i:03d}", 10 if i % 10 == 0 else None) for i in range(100)]
    before = build_snapshot(state(*models))
    models[50] = model("m050", 20)
    after = build_snapshot(state(*models), previous=before)

    assert after.changed_models == frozenset()
    assert after.changed_weights == {"m050"}
    changed = {kind for kind in ResourceType if before.versions[kind] != after.versions[kind]}
    assert changed == {ResourceType.RUNTIME}
    assert after.route_config is before.route_config
    assert all(
        after.model_weights[name] is before.model_weights[name]
        for name in after.model_weights if name != "m050"
    ), "unchanged models keep their parts (and so their encoded bytes)"
    assert after.cluster_list is before.cluster_list
    same_as_full_build(after, state(*models))


def test_a_new_set_of_arms_changes_the_routes_and_the_weights() -> None:
    models = [model(f"m{i}") for i in range(5)]
    before = build_snapshot(state(*models))
    models[2] = model("m2", 30)
    after = build_snapshot(state(*models), previous=before)
    assert after.changed_models == after.changed_weights == {"m2"}
    same_as_full_build(after, state(*models))
    models[2] = model("m2")
    back = build_snapshot(state(*models), previous=after)
    assert back.changed_weights == {"m2"} and "m2" not in back.model_weights
    assert back.versions == before.versions


def test_registering_and_removing_models_matches_a_full_build() -> None:
    base = [model(f"m{i}") for i in range(5)]
    first = build_snapshot(state(*base))
    added = build_snapshot(state(*base, model("new", 30)), previous=first)
    assert added.changed_models == {"new"}
    same_as_full_build(added, state(*base, model("new", 30)))
    removed = build_snapshot(state(*base[1:], model("new", 30)), previous=added)
    assert removed.changed_models == {"m0"}
    same_as_full_build(removed, state(*base[1:], model("new", 30)))


@pytest.mark.parametrize("hinted", [False, True], ids=["compared", "named-changes"])
def test_a_random_walk_of_changes_always_matches_a_full_build(hinted: bool) -> None:
    rng = random.Random(7)
    models = {f"m{i}": model(f"m{i}", port=9000 + 2 * i) for i in range(12)}
    snapshot = build_snapshot(state(*models.values()))
    for step in range(200):
        name = f"m{rng.randrange(14)}"
        choice = rng.random()
        if choice < 0.15:
            models.pop(name, None)
        elif choice < 0.3:
            models[name] = dataclasses.replace(
                model(name, rng.choice([None, 5, 50])),
                canary_matches=(HeaderMatch.of({"x-canary": str(step % 3)}),) if rng.random() < 0.5 else (),
            )
        elif choice < 0.45 and name in models and models[name].canary is not None:
            current = models[name]
            assert current.canary is not None
            no_hosts = dataclasses.replace(current.canary, endpoints=())
            models[name] = dataclasses.replace(current, canary=no_hosts)
        else:
            models[name] = model(name, rng.choice([None, 1, 10, 50, 90, 100]), port=9000 + step)
        desired = state(*sorted(models.values(), key=lambda m: m.model_name))
        snapshot = build_snapshot(desired, previous=snapshot, changed_models=(name,) if hinted else None)
        same_as_full_build(snapshot, desired)
        assert check_consistency(snapshot) == []


def test_the_route_configuration_bytes_equal_envoys_message_of_the_whole_json() -> None:
    models = [model(f"m{i}", 10 * i if i else None) for i in range(6)]
    snapshot = build_snapshot(state(*models))
    snapshot = build_snapshot(state(*models[:-1], model("m5", 42)), previous=snapshot)
    route_config = snapshot.route_config
    assert route_config.encoded == proto.encode_resource(str(ResourceType.ROUTE), route_config.body)


def test_held_back_routes_are_rebuilt_once_envoy_has_the_cluster() -> None:
    stable_only = build_snapshot(state(model("m")))
    with_canary = build_snapshot(
        state(model("m", 50)), routable_clusters=frozenset({cluster_name("m", "1")}), previous=stable_only
    )
    assert with_canary.model_routes["m"].held_back
    routed = build_snapshot(
        state(model("m", 50)),
        routable_clusters=frozenset({cluster_name("m", "1"), cluster_name("m", "2")}),
        previous=with_canary,
    )
    assert not routed.model_routes["m"].held_back
    assert routed.changed_models == {"m"}
    same_as_full_build(routed, state(model("m", 50)))


def test_models_of_the_same_shape_share_a_validation_key() -> None:
    snapshot = build_snapshot(state(
        model("a", 10), model("b", 40, port=9100), model("c"),
        dataclasses.replace(model("d", 10), canary_matches=(HeaderMatch.of({"x-canary": "1"}),)),
    ))
    assert snapshot.shapes["a"] == snapshot.shapes["b"], "names, weights and hosts do not change the shape"
    assert snapshot.shapes["a"] != snapshot.shapes["c"], "a canary arm does"
    assert snapshot.shapes["a"] != snapshot.shapes["d"], "so does a header match"


def test_a_restart_that_rebuilds_the_same_state_gives_the_same_versions() -> None:
    models = [model(f"m{i}", 10) for i in range(20)]
    walked = build_snapshot(state(*models[:10]))
    walked = build_snapshot(state(*models), previous=walked)
    assert walked.versions == build_snapshot(state(*reversed(models))).versions


def test_the_cache_knows_each_cds_versions_clusters_with_hosts_as_a_full_count_would() -> None:
    from controlplane.xds.cache import XdsCache

    rng = random.Random(11)
    models = {f"m{i}": model(f"m{i}", 10, port=9000 + 2 * i) for i in range(8)}
    snapshot = build_snapshot(state(*models.values()))
    cache = XdsCache(snapshot)
    for step in range(60):
        name = f"m{rng.randrange(10)}"
        if rng.random() < 0.2:
            models.pop(name, None)
        elif rng.random() < 0.4 and name in models:
            no_hosts = dataclasses.replace(models[name].stable, endpoints=())
            models[name] = dataclasses.replace(models[name], stable=no_hosts)
        else:
            models[name] = model(name, rng.choice([None, 10]), port=9100 + step)
        snapshot = build_snapshot(state(*models.values()), previous=snapshot, changed_models=(name,))
        cache.publish(snapshot)
        expected = frozenset(c["name"] for c in snapshot.clusters if c["load_assignment"]["endpoints"])
        assert cache.clusters_in(snapshot.versions[ResourceType.CLUSTER]) == expected
