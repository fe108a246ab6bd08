"""The console's pure parts as tables: pages from the API's documents, chart geometry, sessions."""

from __future__ import annotations

import math
from typing import Any

import pytest

from controlplane.console import charts, views
from controlplane.console.sessions import SessionStore
from controlplane.xds.resources import cluster_name
from registry.auth import Principal, Role


def traffic(**changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "model_name": "fraud", "weights": {"1": 80, "2": 20}, "prod": "1", "canary": "2",
        "endpoints": {"1": ["10.0.0.1:8501"], "2": ["10.0.0.2:8501"]}, "endpoint_counts": {"1": 1, "2": 1},
        "match": [], "mirror": {"percent": 0}, "owner": "rollout", "xds_version": "abcdef0123456789",
        "acked": True, "nodes_acked": 2, "nodes_total": 2,
    }
    document.update(changes)
    return document


@pytest.mark.parametrize(
    ("changes", "acknowledged", "nodes"),
    [
        ({}, True, "2 of 2 Envoy nodes"),
        ({"acked": False, "nodes_acked": 1}, False, "1 of 2 Envoy nodes"),
        # The API's `acked` holds vacuously with no node: nothing runs the split, so not shown as run.
        ({"nodes_acked": 0, "nodes_total": 0}, False, "no live Envoy node"),
    ],
)
def test_a_split_is_acknowledged_only_when_envoy_nodes_run_it(
    changes: dict[str, Any], acknowledged: bool, nodes: str
) -> None:
    view = views.traffic_view(traffic(**changes))
    assert (view.acknowledged, view.nodes) == (acknowledged, nodes)


def test_the_split_lists_prod_before_canary_with_their_endpoints() -> None:
    view = views.traffic_view(traffic(weights={"2": 20, "1": 80}))
    assert [(a.version, a.stage, a.weight, a.endpoints) for a in view.arms] == [
        ("1", "prod", 80, ("10.0.0.1:8501",)),
        ("2", "canary", 20, ("10.0.0.2:8501",)),
    ]
    assert (view.warning, view.owner, view.xds_version) == ("", "rollout", "abcdef012345")


def test_an_arm_with_weight_and_no_endpoint_is_warned_about() -> None:
    view = views.traffic_view(traffic(endpoints={"1": ["10.0.0.1:8501"], "2": []}))
    assert view.warning.startswith("version 2 has weight but no live endpoint")


@pytest.mark.parametrize(
    ("phase", "actions"),
    [
        ("progressing", ("promote", "promote-full", "pause", "abort")),
        ("paused", ("promote", "promote-full", "resume", "abort")),
        ("succeeded", ()),
        ("rolled_back", ()),
    ],
)
def test_operators_get_the_commands_the_phase_takes(phase: str, actions: tuple[str, ...]) -> None:
    assert views.actions_for(phase) == actions
    assert views.rollout_page(rollout(phase=phase), can_act=True).actions == actions
    assert views.rollout_page(rollout(phase=phase), can_act=False).actions == ()


def rollout(**changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "id": 7, "model_name": "fraud", "policy": "default", "phase": "progressing", "finished": False,
        "stable_version": "1", "canary_version": "2", "step": 3, "steps": 4, "canary_weight": 40,
        "acknowledged": True, "acknowledged_at": None, "failures": 0, "inconclusive_streak": 0,
        "error_streak": 0, "message": "step 3", "started_at": "2026-12-02T08:00:00+00:00", "started_by": "ci",
        "decisions": [
            {"id": 2, "at": "2026-12-02T08:00:05.5+00:00", "phase": "progressing", "step": 3,
             "canary_weight": 40, "reason": "error-rate 0.2 > max 0.05",
             "verdicts": [{"metric": "error-rate", "verdict": "fail", "value": 0.2000001, "message": "> max"},
                          {"metric": "p99", "verdict": "no_data", "value": None, "message": "quiet"}],
             "command": None, "actor": None, "acked_at": "2026-12-02T08:00:04+00:00"},
        ],
        "actual_canary_weight": 40, "served_canary_weights": [{"canary_weight": 40, "nodes": 2}],
    }
    document.update(changes)
    return document


@pytest.mark.parametrize(
    ("changes", "served", "nodes"),
    [
        ({}, "40 %", "2 nodes at 40 %"),
        ({"actual_canary_weight": None, "served_canary_weights": [
            {"canary_weight": 20, "nodes": 1}, {"canary_weight": 40, "nodes": 1}]},
         "nodes differ", "1 node at 20 %, 1 node at 40 %"),
        ({"actual_canary_weight": None, "served_canary_weights": []}, "no Envoy node polled yet", ""),
        ({"actual_canary_weight": None, "served_canary_weights": [{"canary_weight": None, "nodes": 1}]},
         "nodes differ", "1 node at routes not from this process"),
        ({"served_canary_weights": None}, views.NONE, ""),  # a past rollout keeps no served weight
    ],
)
def test_the_served_weight_is_shown_beside_the_desired_one(
    changes: dict[str, Any], served: str, nodes: str
) -> None:
    page = views.rollout_page(rollout(**changes), can_act=False)
    assert (page.desired_weight, page.served_weight, page.served_nodes) == (40, served, nodes)


def test_each_decision_keeps_its_numbers_and_reason() -> None:
    page = views.rollout_page(rollout(), can_act=False)
    (decision,) = page.decisions
    assert (page.step, decision.at, decision.reason, decision.acked) == (
        "3 of 4", "2026-12-02 08:00:05", "error-rate 0.2 > max 0.05", "2026-12-02 08:00:04",
    )
    assert [(v.metric, v.verdict, v.value) for v in decision.verdicts] == [
        ("error-rate", "fail", "0.2"), ("p99", "no_data", views.NONE),
    ]


def version(name: str, stage: str, history: list[dict[str, Any]], **metadata: Any) -> dict[str, Any]:
    return {
        "model_name": "fraud", "version": name, "checksum": "ab" * 32, "size_bytes": 10, "signature": "s",
        "key_id": "k1", "algorithm": "hmac-sha256", "stage": stage, "created_at": "2026-12-01T00:00:00+00:00",
        "created_by": "ci", "metadata": {**metadata, "_registry": {"promotion_history": history}},
    }


def change(at: str, to_stage: str, reason: str) -> dict[str, Any]:
    return {"from_stage": "staging", "to_stage": to_stage, "at": at, "actor": "ops", "reason": reason,
            "action": "promote"}


def test_a_models_page_joins_every_versions_history_into_one_timeline_newest_first() -> None:
    model = {
        "model_name": "fraud", "stages": {"prod": "1", "canary": "2"},
        "versions": [
            version("1", "prod", [change("2026-12-01T10:00:00+00:00", "prod", "first")],
                    owner="<script>x</script>", labels={"b": 2, "a": 1}),
            version("2", "canary", [change("2026-12-01T11:00:00+01:00", "canary", "earlier, by offset")]),
        ],
    }
    page = views.model_page(model, {"1": True, "2": False}, {"model_name": "fraud", "rollouts": []})
    assert [(e.version, e.reason) for e in page.timeline] == [("1", "first"), ("2", "earlier, by offset")]
    assert [(v.version, v.signature_ok) for v in page.versions] == [("1", True), ("2", False)]
    # Values stay text (the template escapes them); the registry's own records are not metadata.
    assert page.versions[0].metadata == (("labels", '{"a": 1, "b": 2}'), ("owner", "<script>x</script>"))
    assert (page.prod, page.canary) == ("1", "2")


def test_alert_actions_read_as_what_aegis_did() -> None:
    (alert,) = views.alert_views([{
        "received_at": "2026-12-02T08:00:00+00:00", "alertname": "AegisCanaryHighErrorRate",
        "model_name": None, "status": "firing", "action": "recorded_no_active_rollout", "starts_at": "t",
    }])
    assert (alert.model, alert.action) == (views.NONE, "recorded: no active rollout")


def node(replica: str) -> dict[str, Any]:
    return {
        "node_id": "edge-1", "cluster": "edge", "live": True, "authenticated": False, "transport": "ads",
        "streams": 1, "replica": replica, "first_seen": "2026-12-02T08:00:00+00:00",
        "last_seen": "2026-12-02T08:00:05+00:00",
        "types": {"route": {"acked_version": "a" * 64, "served_version": "b" * 64,
                            "rejected_versions": ["b" * 64], "rejection_message": "no cluster x"}},
    }


@pytest.mark.parametrize(("replica", "shown"), [("aegis-b", "aegis-b"), ("", views.NONE)])
def test_each_envoy_node_names_the_replica_it_is_attached_to(replica: str, shown: str) -> None:
    (view,) = views.node_views({"nodes": [node(replica)]})
    assert (view.replica, view.last_seen) == (shown, "2026-12-02 08:00:05")
    assert [(t.type, t.acked, t.served, t.rejected, t.message) for t in view.types] == [
        ("route", "a" * 12, "b" * 12, ("b" * 12,), "no cluster x")
    ]


def replica(replica_id: str, *, live: bool, leader: bool, last_seen: str) -> dict[str, Any]:
    return {
        "replica_id": replica_id, "address": f"http://{replica_id}:8080", "hostname": f"host-{replica_id}",
        "pid": 7, "version": "0.9.0", "started_at": "2026-12-02T07:00:00+00:00", "last_seen": last_seen,
        "live": live, "leader": leader,
    }


def cluster(leader_id: str | None, replicas: list[dict[str, Any]], **changes: Any) -> dict[str, Any]:
    document = {
        "replica_id": "b", "role": "follower", "leader_id": leader_id, "epoch": 4,
        "lease_expires_at": "2026-12-02T08:00:10+00:00", "lease_seconds": 10.0, "replicas": replicas,
    }
    document.update(changes)
    return document


@pytest.mark.parametrize(
    ("document", "leader", "live_replicas", "rows"),
    [
        # Two live, the leader among them; the page was rendered by b, a follower.
        (
            cluster("a", [replica("a", live=True, leader=True, last_seen="2026-12-02T08:00:04+00:00"),
                          replica("b", live=True, leader=False, last_seen="2026-12-02T08:00:03+00:00")]),
            "a", "2 of 2 replicas live",
            [("a", True, True, False, "2026-12-02 08:00:04"),
             ("b", True, False, True, "2026-12-02 08:00:03")],
        ),
        # The leader stopped heartbeating and its lease ran out: no leader until another takes it.
        (
            cluster(None, [replica("a", live=False, leader=False, last_seen="2026-12-02T07:59:40+00:00"),
                           replica("b", live=True, leader=False, last_seen="2026-12-02T08:00:03+00:00")]),
            "none: no replica holds the lease now", "1 of 2 replicas live",
            [("a", False, False, False, "2026-12-02 07:59:40"),
             ("b", True, False, True, "2026-12-02 08:00:03")],
        ),
        # One replica (SQLite): it leads for good.
        (
            cluster("b", [replica("b", live=True, leader=True, last_seen="2026-12-02T09:00:03+01:00")],
                    role="leader", lease_expires_at="9999-01-01T00:00:00+00:00"),
            "b", "1 of 1 replica live", [("b", True, True, True, "2026-12-02 08:00:03")],
        ),
    ],
)
def test_the_cluster_page_shows_the_leader_and_each_replicas_heartbeat(
    document: dict[str, Any], leader: str, live_replicas: str,
    rows: list[tuple[str, bool, bool, bool, str]],
) -> None:
    page = views.cluster_page(document)
    assert (page.replica_id, page.leader, page.epoch, page.live_replicas, page.lease_seconds) == (
        "b", leader, 4, live_replicas, "10 s"
    )
    assert [(r.replica_id, r.live, r.leader, r.this, r.last_seen) for r in page.replicas] == rows
    assert page.replicas[0].host.endswith(", pid 7")
    assert page.lease_expires == (
        "held for good: the only replica on SQLite" if len(rows) == 1 else "held until 2026-12-02 08:00:10"
    )


# --- charts ----------------------------------------------------------------------------------------


def test_chart_queries_are_the_analysis_templates_on_each_arms_cluster() -> None:
    arms = (charts.Arm("stable 1", "stable", "1"), charts.Arm("canary 2", "canary", "2"))
    queries = charts.chart_queries("fraud", arms, window_seconds=4)
    assert [(q.chart, q.arm.version) for q in queries] == [
        (template, arm) for template, _t, _u in charts.CHARTS for arm in ("1", "2")
    ]
    for query in queries:
        assert f'envoy_cluster_name="{cluster_name("fraud", query.arm.version)}"' in query.promql
        assert "[4s]" in query.promql and "{{" not in query.promql


@pytest.mark.parametrize(
    ("started", "ended", "now", "expected"),
    [
        (1000.0, None, 1050.0, (990.0, 1050.0, 1.0)),  # live: up to now, 1 s steps
        (1000.0, 1100.0, 5000.0, (990.0, 1105.0, 1.0)),  # finished: up to its end, not now
        (0.0, None, 1190.0, (-10.0, 1190.0, 10.0)),  # long: at most MAX_POINTS points
    ],
)
def test_a_charts_time_range_covers_the_rollout_in_at_most_max_points(
    started: float, ended: float | None, now: float, expected: tuple[float, float, float]
) -> None:
    span = charts.time_range(started, ended, now)
    assert (span.start, span.end, span.step) == expected
    assert (span.end - span.start) / span.step <= charts.MAX_POINTS


def test_a_chart_scales_to_a_round_maximum_and_skips_gaps() -> None:
    span = charts.TimeRange(0.0, 10.0, 1.0)
    stable = charts.Arm("stable 1", "stable", "1")
    canary = charts.Arm("canary 2", "canary", "2")
    drawn = charts.chart(
        "request-error-rate", [(stable, [(0.0, 0.0), (5.0, math.nan), (10.0, 0.03)]), (canary, [])], span
    )
    assert drawn.y_max == "5.00 %"  # 3 % rounds up to 5 %
    (line,) = drawn.lines  # the canary has no points: no line, no legend entry
    assert line.points == "4.0,116.0 356.0,48.8"  # the NaN sample is left out
    assert (line.last, drawn.note) == ("3.00 %", "")
    empty = charts.chart("request-rate", [(stable, []), (canary, [])], span)
    assert (empty.lines, empty.note) == ((), "no data yet: Prometheus has no samples for either arm")
    failed = charts.chart("request-rate", [(stable, [])], span, error="prometheus did not answer")
    assert failed.note == "prometheus did not answer"


# --- sessions --------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_session_lives_until_its_expiry_and_not_after() -> None:
    clock = Clock()
    store = SessionStore(clock=clock, lifetime_seconds=60)
    session_id, session = store.create(Principal(Role.OPERATOR, "ops"))
    assert store.get(session_id) is session
    clock.now += 59.9
    assert store.get(session_id) is session
    clock.now += 0.1
    assert store.get(session_id) is None
    assert len(store) == 0  # forgotten, not kept expired


def test_a_session_is_found_only_by_its_own_id_and_ends_on_sign_out() -> None:
    store = SessionStore(clock=Clock())
    first, session = store.create(Principal(Role.VIEWER, "v"))
    second, _ = store.create(Principal(Role.VIEWER, "v"))
    assert first != second and session.csrf_token not in (first, second)
    assert store.get("") is None and store.get(first[:-1]) is None
    store.end(first)
    assert store.get(first) is None and store.get(second) is not None
    assert first not in repr(store) and session.csrf_token not in repr(session)


def test_the_oldest_sessions_go_first_past_the_cap() -> None:
    store = SessionStore(clock=Clock(), max_sessions=2)
    ids = [store.create(Principal(Role.VIEWER, "v"))[0] for _ in range(3)]
    assert [store.get(i) is not None for i in ids] == [False, True, True]


def test_the_csrf_token_must_match_exactly() -> None:
    _, session = SessionStore(clock=Clock()).create(Principal(Role.OPERATOR, "ops"))
    assert session.csrf_matches(session.csrf_token)
    for wrong in ("", session.csrf_token[:-1], session.csrf_token + "x", session.csrf_token.upper()):
        assert not session.csrf_matches(wrong), wrong
