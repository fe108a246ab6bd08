"""The ADS stream protocol, state of the world and delta, as tables of requests and what is due."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from controlplane.xds.ads_protocol import (
    DeltaChanges,
    DeltaRequest,
    DeltaTypeState,
    DiffCache,
    PublishedType,
    RequestKind,
    SotwRequest,
    SotwTypeState,
    delta_plan,
    requested_names,
    sotw_plan,
)
from controlplane.xds.snapshot import ResourceType

CDS, EDS, LDS, RDS = ResourceType.CLUSTER, ResourceType.ENDPOINT, ResourceType.LISTENER, ResourceType.ROUTE
ROUTES = frozenset({"aegis_routes"})


# --- state of the world ----------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """A request for RDS aegis_routes."""

    version: str
    nonce: str = ""
    error: str | None = None
    names: frozenset[str] = ROUTES
    expected: RequestKind = RequestKind.ACK


@dataclass(frozen=True)
class Send:
    """The server sends `version` with `nonce`; it must have been due."""

    version: str
    nonce: str


@dataclass(frozen=True)
class Due:
    version: str
    expected: bool
    rejected_elsewhere: bool = False


SotwStep = Request | Send | Due


def run_sotw(steps: list[SotwStep]) -> SotwTypeState:
    state = SotwTypeState()
    for index, step in enumerate(steps):
        if isinstance(step, Request):
            kind = state.receive(SotwRequest(step.version, step.names, step.nonce, step.error))
            assert kind is step.expected, f"step {index}: {step} was {kind}"
        elif isinstance(step, Send):
            assert state.due(step.version), f"step {index}: {step} was not due"
            state.sent(step.version, step.nonce)
        else:
            due = state.due(step.version, rejected=step.rejected_elsewhere)
            assert due is step.expected, f"step {index}: {step}"
    return state


SOTW: dict[str, list[SotwStep]] = {
    "a first request with no version gets the current one; its ack settles it": [
        Request("", expected=RequestKind.INITIAL), Send("v1", "1"), Due("v1", False),
        Request("v1", "1"), Due("v1", False), Due("v2", True),
    ],
    "a first request already on the current version gets nothing (restart, same state)": [
        Request("v1", nonce="from-the-old-process", expected=RequestKind.INITIAL), Due("v1", False),
        Due("v2", True),
    ],
    "a first request on an older version gets the current one": [
        Request("v0", expected=RequestKind.INITIAL), Due("v1", True),
    ],
    "the next version waits for the ack of the one in flight": [
        Request("", expected=RequestKind.INITIAL), Send("v1", "1"), Due("v2", False),
        Request("v1", "1"), Send("v2", "2"),
    ],
    "a nack keeps the node on its version and the rejected one is not sent again": [
        Request("", expected=RequestKind.INITIAL), Send("v1", "1"), Request("v1", "1"),
        Send("v2", "2"), Request("v1", "2", error="bad weights", expected=RequestKind.NACK),
        Due("v2", False), Due("v3", True),
    ],
    "a nack of the very first response leaves the node with nothing, and no resend": [
        Request("", expected=RequestKind.INITIAL), Send("v1", "1"),
        Request("", "1", error="bad", expected=RequestKind.NACK), Due("v1", False), Due("v2", True),
    ],
    "a version rejected on an earlier stream (node table) is not sent either": [
        Request("v1", expected=RequestKind.INITIAL), Due("v2", False, rejected_elsewhere=True),
    ],
    "a request with a stale nonce is ignored, error or not": [
        Request("", expected=RequestKind.INITIAL), Send("v1", "1"), Request("v1", "1"), Send("v2", "2"),
        Request("v1", "1", error="late", expected=RequestKind.STALE), Due("v3", False),
        Request("v2", "2"), Due("v2", False),
    ],
    "an ack that asks for other names is answered, on the same version": [
        Request("", expected=RequestKind.INITIAL), Send("v1", "1"),
        Request("v1", "1", names=frozenset({"aegis_routes", "other"})), Due("v1", True),
    ],
    "an empty route subscription wants nothing": [
        Request("", names=frozenset(), expected=RequestKind.INITIAL), Due("v1", False),
    ],
}


@pytest.mark.parametrize("steps", SOTW.values(), ids=SOTW.keys())
def test_state_of_the_world(steps: list[SotwStep]) -> None:
    run_sotw(steps)


@pytest.mark.parametrize(
    ("kind", "names", "expected"),
    [
        (LDS, [], {"*"}), (CDS, [], {"*"}), (CDS, ["*"], {"*"}),
        (RDS, [], set()), (RDS, ["aegis_routes"], {"aegis_routes"}), (EDS, [], set()),
    ],
)
def test_lds_and_cds_are_wildcard_when_no_names_are_asked_rds_and_eds_never(
    kind: ResourceType, names: list[str], expected: set[str]
) -> None:
    assert requested_names(kind, names) == expected


def subscribed(kind: ResourceType, version: str) -> SotwTypeState:
    state = SotwTypeState()
    state.receive(SotwRequest(version, requested_names(kind, ["aegis_routes"] if kind is RDS else [])))
    return state


@pytest.mark.parametrize(
    ("in_flight", "expected"),
    [
        ({}, [CDS, LDS, RDS]),
        # CDS waits for an ack while it has a newer version: routes may name it, so they wait too.
        ({CDS: "c0"}, []),
        ({LDS: "l0"}, [CDS]),
        ({RDS: "r0"}, [CDS, LDS]),
        # What is in flight is the current version: nothing waits behind it.
        ({CDS: "c1"}, [LDS, RDS]),
    ],
)
def test_types_go_out_clusters_first_and_nothing_overtakes_a_cluster_change(
    in_flight: dict[ResourceType, str], expected: list[ResourceType]
) -> None:
    states = {kind: subscribed(kind, "") for kind in (CDS, LDS, RDS)}
    for kind, version in in_flight.items():
        states[kind].sent(version, "n")
    versions = {CDS: "c1", EDS: "e1", LDS: "l1", RDS: "r1"}
    assert sotw_plan(states, versions) == expected


def test_a_type_whose_new_version_was_rejected_holds_back_nothing() -> None:
    states = {kind: subscribed(kind, "") for kind in (CDS, RDS)}
    states[CDS].sent("c0", "1")
    states[CDS].receive(SotwRequest("", frozenset({"*"}), "1", "bad cluster"))
    versions = {CDS: "c0", EDS: "", LDS: "", RDS: "r1"}
    assert sotw_plan(states, versions) == [RDS]


# --- delta -----------------------------------------------------------------------------


def published(version: str, **resources: str) -> PublishedType:
    return PublishedType(version, dict(resources))


def start(kind: ResourceType, **request: object) -> DeltaTypeState:
    state = DeltaTypeState()
    assert state.receive(kind, DeltaRequest(**request)) is RequestKind.INITIAL  # type: ignore[arg-type]
    return state


def test_a_wildcard_subscription_gets_everything_then_only_changes_and_removals() -> None:
    state = start(CDS)
    v1 = published("s1", a="1", b="1")
    first = state.changes(v1)
    assert first == DeltaChanges(("a", "b"), (), result=v1.resources)
    state.sent("n1", v1, first)
    assert state.changes(published("s2", a="2", b="1")) is None, "one response in flight at a time"
    assert state.receive(CDS, DeltaRequest(response_nonce="n1")) is RequestKind.ACK
    v2 = published("s2", a="2", c="1")
    assert state.changes(v2) == DeltaChanges(("a", "c"), ("b",), result=v2.resources)


def test_a_wildcard_client_that_knows_nothing_gets_a_first_answer_even_when_nothing_exists() -> None:
    state = start(CDS)
    empty = published("s0")
    first = state.changes(empty)
    assert first is not None and first.upserts == () and first.removals == (), (
        "Envoy waits for a first CDS answer (15 s initial fetch timeout) before it listens"
    )
    state.sent("n1", empty, first)
    state.receive(CDS, DeltaRequest(response_nonce="n1"))
    assert state.changes(empty) is None, "after the first answer, nothing new means no answer"


def test_initial_resource_versions_leave_only_what_differs() -> None:
    state = start(CDS, initial_versions={"a": "1", "b": "0", "gone": "9"})
    current = published("s1", a="1", b="1")
    assert state.changes(current) == DeltaChanges(("b",), ("gone",), result=current.resources)
    in_step = start(CDS, initial_versions={"a": "1", "b": "1"})
    assert in_step.changes(published("s1", a="1", b="1")) is None


def test_named_subscriptions_get_their_names_and_hear_about_names_that_do_not_exist_once() -> None:
    state = start(RDS, subscribe=("aegis_routes", "nope"))
    current = published("s1", aegis_routes="1", other="1")
    changes = state.changes(current)
    assert changes == DeltaChanges(("aegis_routes",), ("nope",))
    state.sent("n1", current, changes)
    state.receive(RDS, DeltaRequest(response_nonce="n1"))
    assert state.changes(current) is None
    assert state.changes(published("s2", aegis_routes="2", other="2")) == DeltaChanges(("aegis_routes",), ())


def test_unsubscribing_forgets_a_name_and_subscribing_again_sends_it() -> None:
    state = start(RDS, subscribe=("aegis_routes",))
    current = published("s1", aegis_routes="1")
    state.sent("n1", current, state.changes(current))  # type: ignore[arg-type]
    state.receive(RDS, DeltaRequest(response_nonce="n1"))
    assert state.receive(RDS, DeltaRequest(unsubscribe=("aegis_routes",))) is RequestKind.SUBSCRIPTION
    assert state.changes(current) is None
    state.receive(RDS, DeltaRequest(subscribe=("aegis_routes",)))
    assert state.changes(current) == DeltaChanges(("aegis_routes",), ())


def test_a_delta_nack_keeps_what_the_client_holds_and_the_rejected_version_is_not_sent_again() -> None:
    state = start(CDS)
    v1 = published("s1", a="1")
    state.sent("n1", v1, state.changes(v1))  # type: ignore[arg-type]
    state.receive(CDS, DeltaRequest(response_nonce="n1"))
    v2 = published("s2", a="2", b="1")
    state.sent("n2", v2, state.changes(v2))  # type: ignore[arg-type]
    assert state.receive(CDS, DeltaRequest(response_nonce="n2", error_message="bad")) is RequestKind.NACK
    assert state.known == {"a": "1"}
    assert state.changes(v2) is None
    v3 = published("s3", a="3", b="1")
    assert state.changes(v3) == DeltaChanges(("a", "b"), (), result=v3.resources)


def test_a_rejected_first_delivery_is_not_sent_again_until_subscribed_again() -> None:
    state = start(RDS, subscribe=("aegis_routes",))
    current = published("s1", aegis_routes="1")
    state.sent("n1", current, state.changes(current))  # type: ignore[arg-type]
    assert state.receive(RDS, DeltaRequest(response_nonce="n1", error_message="bad")) is RequestKind.NACK
    assert state.changes(current) is None
    state.receive(RDS, DeltaRequest(subscribe=("aegis_routes",)))
    assert state.changes(current) == DeltaChanges(("aegis_routes",), ())


@pytest.mark.parametrize(
    ("kind", "subscribe", "expected"),
    [
        # Wildcard: the client keeps what it declared; nothing of the rejected version.
        (CDS, (), None),
        # Named: a name it asks for and has nothing of is answered.
        (RDS, ("r1", "r2"), DeltaChanges(("r2",), ())),
    ],
)
def test_a_version_rejected_on_an_earlier_stream_is_not_sent_on_reconnect(
    kind: ResourceType, subscribe: tuple[str, ...], expected: DeltaChanges | None
) -> None:
    state = start(kind, subscribe=subscribe, initial_versions={"r1": "1"})
    assert state.changes(published("s2", r1="2", r2="1"), rejected=True) == expected


def test_a_stale_delta_nonce_acknowledges_nothing_but_its_subscriptions_count() -> None:
    state = start(RDS, subscribe=("r1",))
    current = published("s1", r1="1", r2="1")
    state.sent("n2", current, state.changes(current))  # type: ignore[arg-type]
    assert state.receive(RDS, DeltaRequest(subscribe=("r2",), response_nonce="n1")) is RequestKind.STALE
    assert state.pending is not None and state.names == {"r1", "r2"}


def test_streams_in_step_share_one_diff_between_two_published_versions() -> None:
    diffs = DiffCache()
    v1, v2 = published("s1", a="1", b="1"), published("s2", a="2", b="1")
    streams = []
    for _ in range(3):
        state = start(CDS)
        state.sent("n", v1, state.changes(v1, diffs=diffs))  # type: ignore[arg-type]
        state.receive(CDS, DeltaRequest(response_nonce="n"))
        assert state.known is v1.resources, "the client's state is the published map, not a copy"
        streams.append(state)
    changes = [state.changes(v2, diffs=diffs) for state in streams]
    assert changes[0] == DeltaChanges(("a",), (), result=v2.resources)
    assert changes[0] is changes[1] is changes[2]


def test_delta_types_go_out_clusters_first_and_wait_behind_a_cluster_change_in_flight() -> None:
    states = {
        kind: start(kind, subscribe=("aegis_routes",) if kind is RDS else ()) for kind in (CDS, LDS, RDS)
    }
    current = {
        CDS: published("c1", a="1"), LDS: published("l1", ingress="1"),
        RDS: published("r1", aegis_routes="1"), EDS: published("e1"),
    }
    assert [kind for kind, _ in delta_plan(states, current)] == [CDS, LDS, RDS]
    states[CDS].sent("n", published("c0", a="0"), DeltaChanges(("a",), ()))
    assert delta_plan(states, current) == []
