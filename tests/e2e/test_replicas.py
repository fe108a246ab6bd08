"""Several replicas on one PostgreSQL: each serves everything from memory, following the database.

Three `aegis serve` processes share one database. A change through one is in the
others' API and xDS within a second with the same versions; an Envoy attached to
one counts for the acknowledgement every replica reports. Rollouts are not run
here: until a leader is elected, every replica would run them (no policies are
loaded, so promotions start none).
"""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from tests.ads_client import CDS, LDS, RDS, RTDS, AdsClient, decode, layer_weights
from tests.e2e.replicas import Replica, create_database, drop_database, eventually, start_replicas
from tests.processes import Envoy, XdsTransport, free_port

MODEL = "recs"
PROPAGATION_SECONDS = 1.0  # the contract: a change is on every replica within a second


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Replica]]:
    root: Path = tmp_path_factory.mktemp("replicas")
    url = asyncio.run(create_database())
    database_url = url.replace("postgresql://", "postgresql+asyncpg://")
    # The first creates the schema; the others start together (safe schema creation under
    # concurrency is the leader election's work, not tested here).
    env = {"AEGIS_ENVOY_LISTENER": f"127.0.0.1:{free_port()}"}
    started = start_replicas(root, database_url, ["replica-a"], env)
    started += start_replicas(root, database_url, ["replica-b", "replica-c"], env)
    try:
        yield started
    finally:
        for replica in started:
            replica.aegis.stop()
        asyncio.run(drop_database(url))


def same_everywhere(replicas: list[Replica], read: Any) -> Any:
    """The value every replica gives, or None while they differ."""
    values = [read(replica) for replica in replicas]
    return values[0] if all(value == values[0] for value in values) else None


def test_a_change_through_one_replica_is_on_the_others_with_the_same_versions(
    replicas: list[Replica],
) -> None:
    a, b, c = replicas
    for version in ("1", "2"):
        a.register(MODEL, version, f"model {version}".encode())
    # Registered, not routed: every replica knows the model and routes nothing to it.
    registered, _ = eventually(
        lambda: same_everywhere(replicas, lambda r: r.traffic(MODEL)), within=PROPAGATION_SECONDS,
        what="the registration on every replica",
    )
    assert (registered["prod"], registered["weights"]) == (None, {})
    a.promote(MODEL, "1", "prod")
    for other in (b, c):
        document, _ = eventually(partial(other.traffic, MODEL), within=PROPAGATION_SECONDS, what="prod")
        assert document["prod"] == "1" and document["weights"] == {"1": 100}
    # Endpoints through B, the canary through A: every replica routes both.
    for version in ("1", "2"):
        b.api("POST", "/v1/endpoints", {
            "model_name": MODEL, "version": version, "address": "127.0.0.1", "port": free_port(),
            "ttl_seconds": 300,
        }, role="operator")
    a.promote(MODEL, "2", "canary")
    a.set_traffic(MODEL, {"1": 70, "2": 30})

    def agreed() -> tuple[Any, ...] | None:
        documents = [r.traffic(MODEL) for r in replicas]
        if any(d["weights"] != {"1": 70, "2": 30} or d["canary"] != "2" for d in documents):
            return None
        versions: tuple[Any, ...] | None = same_everywhere(replicas, lambda r: (
            r.traffic(MODEL)["xds_version"], r.traffic(MODEL)["endpoint_counts"], r.nodes()["current"],
            r.nodes()["current_ads"],
        ))
        return versions

    (xds_version, counts, current, _ads), _ = eventually(
        agreed, within=PROPAGATION_SECONDS, what="the same versions on every replica"
    )
    assert counts == {"1": 1, "2": 1}
    assert xds_version == current["runtime"]  # the weights are in the runtime layer


def live_node(replica: Replica, node_id: str) -> dict[str, Any] | None:
    found = (n for n in replica.nodes()["nodes"] if n["node_id"] == node_id and n["live"])
    return next(found, None)


async def first_weights(client: AdsClient) -> Any:
    """Open an ADS stream the way Envoy does and return the first runtime layer (the weights)."""
    await client.request(RTDS, names=["aegis_weights"])
    runtime = await client.receive()
    await client.ack(runtime)
    await client.request(CDS)
    await client.ack(await client.receive())
    await client.request(LDS)
    await client.ack(await client.receive())
    await client.request(RDS, names=["aegis_routes"])
    await client.receive()  # not acknowledged: the probe must not count as a node running routes
    return runtime


async def test_every_replica_serves_the_same_xds_and_an_envoy_on_b_counts_on_a(
    replicas: list[Replica], tmp_path: Path
) -> None:
    a, b, _ = replicas
    # The same weights over ADS from each replica.
    answers = []
    for replica in replicas:
        target = f"127.0.0.1:{replica.aegis.grpc_port}"
        async with AdsClient(target, node_id=f"probe-{replica.replica_id}") as probe:
            answers.append(await first_weights(probe))
    assert len({answer.version_info for answer in answers}) == 1
    assert set(layer_weights(decode(RTDS, answers[0].resources[0].value)).values()) == {70, 30}

    envoy = Envoy(tmp_path / "envoy", xds_port=b.aegis.xds_port(XdsTransport.ADS), node_id="envoy-on-b")
    envoy.start()
    try:
        for replica in replicas:
            # Every replica lists the Envoy, attached to B, among its live nodes.
            node, _ = eventually(
                partial(live_node, replica, "envoy-on-b"),
                within=PROPAGATION_SECONDS, what="the Envoy on B in every replica's node view",
            )
            assert node["replica"] == "replica-b"
        eventually(
            lambda: a.traffic(MODEL) if a.traffic(MODEL)["nodes_acked"] == 1 else None,
            within=PROPAGATION_SECONDS, what="A counts the Envoy on B running 70/30",
        )

        a.set_traffic(MODEL, {"1": 40, "2": 60})

        def acked_on(replica: Replica) -> dict[str, Any] | None:
            document = replica.traffic(MODEL)
            return document if document["weights"] == {"1": 40, "2": 60} and document["acked"] else None

        for replica in replicas:
            document, _ = eventually(partial(acked_on, replica), within=2, what="acknowledged")
            # Counted only once B shared that its Envoy runs the new weights.
            assert (document["nodes_acked"], document["nodes_total"]) == (1, 1)
            node = next(n for n in replica.nodes()["nodes"] if n["node_id"] == "envoy-on-b")
            assert node["types"]["runtime"]["acked_version"] == document["xds_version"]
    finally:
        envoy.stop()


async def test_propagation_from_a_put_on_a_to_b_xds(replicas: list[Replica]) -> None:
    """A's PUT answered → B's ADS stream gets the new weights: each within a second; the median is printed."""
    a, b, _ = replicas
    delays = []
    async with AdsClient(f"127.0.0.1:{b.aegis.grpc_port}", node_id="latency-probe") as probe:
        await first_weights(probe)
        for round_ in range(50):
            weights = {"1": 50 - round_ % 2 * 10, "2": 50 + round_ % 2 * 10}
            await asyncio.to_thread(a.set_traffic, MODEL, weights)
            sent = asyncio.get_running_loop().time()
            response = await probe.receive(within=PROPAGATION_SECONDS)
            delays.append(asyncio.get_running_loop().time() - sent)
            assert response.type_url == RTDS
            layer = layer_weights(decode(RTDS, response.resources[0].value))
            assert sorted(layer.values()) == sorted(weights.values())
            await probe.ack(response)
    median_ms = statistics.median(delays) * 1000
    print(f"\nA's PUT answered -> B's ADS push: median {median_ms:.1f} ms, max {max(delays) * 1000:.1f} ms "
          f"over {len(delays)} changes")
