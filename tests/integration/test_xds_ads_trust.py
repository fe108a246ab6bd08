"""Who may open an ADS stream: node tokens in gRPC metadata, server TLS, and client certificates."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest
from aiohttp.test_utils import TestClient

from tests.ads_client import CDS, AdsClient
from tests.certificates import Authority
from tests.conftest import auth
from tests.integration.conftest import Register, StartClient
from tests.integration.test_xds_ads import ads_target, node_view
from tests.integration.test_xds_protocol import serve_model

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

TOKEN_A = "node-token-a-0123456789"
TOKEN_FLEET = "fleet-token-9876543210"


async def node_ids(client: TestClient[Any, Any]) -> list[str]:
    nodes = await (await client.get("/v1/xds/nodes", headers=auth("viewer"))).json()
    return [n["node_id"] for n in nodes["nodes"]]


@pytest.fixture
async def tokened(make_settings: Any, database_url: str, start_client: StartClient) -> TestClient[Any, Any]:
    settings = make_settings(
        database_url, AEGIS_XDS_VALIDATE="false",
        AEGIS_XDS_NODE_TOKENS=f"envoy-a:{TOKEN_A},*:{TOKEN_FLEET}",
    )
    return await start_client(settings)


@pytest.mark.parametrize(
    ("node_id", "metadata", "code", "says"),
    [
        ("envoy-a", (), grpc.StatusCode.UNAUTHENTICATED, "needs a node token"),
        ("envoy-a", (("authorization", "Bearer not-a-token"),), grpc.StatusCode.PERMISSION_DENIED,
         "not one of AEGIS_XDS_NODE_TOKENS"),
        ("envoy-b", (("authorization", f"Bearer {TOKEN_A}"),), grpc.StatusCode.PERMISSION_DENIED,
         "not valid for this node id"),
    ],
)
async def test_a_stream_without_a_valid_token_for_its_node_is_refused_and_not_recorded(
    tokened: TestClient[Any, Any], node_id: str, metadata: tuple[tuple[str, str], ...],
    code: grpc.StatusCode, says: str,
) -> None:
    async with AdsClient(ads_target(tokened), node_id, metadata=metadata) as envoy:
        if "node id" in says:
            await envoy.request(CDS)  # the token is known: the node its first request names is refused
        # Else refused on its metadata before any request is read. A request written meanwhile
        # would race the refusal, and grpc.aio turns a write that loses into INTERNAL for the call.
        refusal = await envoy.refusal()
    assert refusal.code() is code
    assert says in (refusal.details() or "")
    assert await node_ids(tokened) == []
    metrics = await (await tokened.get("/metrics")).text()
    assert f'aegis_xds_refused_streams_total{{code="{code.name.lower()}",kind="sotw"}} 1.0' in metrics


@pytest.mark.parametrize(("node_id", "token"), [("envoy-a", TOKEN_A), ("any-node", TOKEN_FLEET)])
async def test_a_stream_with_a_valid_token_is_served_and_marked_authenticated(
    tokened: TestClient[Any, Any], register: Register, node_id: str, token: str
) -> None:
    await serve_model(tokened, register, "1")
    metadata = [("authorization", f"Bearer {token}")]
    async with AdsClient(ads_target(tokened), node_id, metadata=metadata) as envoy:
        await envoy.request(CDS)
        assert (await envoy.receive()).type_url == CDS
        node = await node_view(tokened, node_id)
        assert (node["authenticated"], node["transport"]) == (True, "ads")


@pytest.fixture
def authority() -> Authority:
    return Authority()


def tls_settings(tmp_path: Path, authority: Authority, *, mutual: bool) -> dict[str, str]:
    server = authority.issue("aegis-xds", dns=("xds.aegis.test",), ips=("127.0.0.1",), server=True)
    cert, key = server.write(tmp_path, "server")
    env = {"AEGIS_XDS_GRPC_TLS_CERT": str(cert), "AEGIS_XDS_GRPC_TLS_KEY": str(key)}
    if mutual:
        ca = tmp_path / "clients-ca.pem"
        ca.write_bytes(authority.pem)
        env["AEGIS_XDS_GRPC_TLS_CLIENT_CA"] = str(ca)
    return env


async def test_server_tls_serves_clients_that_trust_its_ca_and_refuses_plaintext(
    make_settings: Any, database_url: str, start_client: StartClient, tmp_path: Path, authority: Authority
) -> None:
    env = tls_settings(tmp_path, authority, mutual=False)
    client = await start_client(make_settings(database_url, AEGIS_XDS_VALIDATE="false", **env))
    trusted = grpc.ssl_channel_credentials(root_certificates=authority.pem)
    async with AdsClient(ads_target(client), "envoy-tls", credentials=trusted) as envoy:
        await envoy.request(CDS)
        assert (await envoy.receive()).type_url == CDS
        assert (await node_view(client, "envoy-tls"))["authenticated"] is False, "TLS alone names no node"
    async with AdsClient(ads_target(client), "envoy-plain") as envoy:
        await envoy.request(CDS)
        assert (await envoy.refusal()).code() is grpc.StatusCode.UNAVAILABLE
    assert await node_ids(client) == ["envoy-tls"]


@pytest.fixture
async def mutual(
    make_settings: Any, database_url: str, start_client: StartClient, tmp_path: Path, authority: Authority
) -> TestClient[Any, Any]:
    # Node tokens are set too: under mutual TLS the certificate is the credential.
    env = tls_settings(tmp_path, authority, mutual=True)
    tokens = f"envoy-a:{TOKEN_A}"
    return await start_client(
        make_settings(database_url, AEGIS_XDS_VALIDATE="false", AEGIS_XDS_NODE_TOKENS=tokens, **env)
    )


@pytest.mark.parametrize(
    ("common_name", "uris", "node_id"),
    [("envoy-a", (), "envoy-a"), ("gateway", ("spiffe://aegis.test/envoy/7",), "spiffe://aegis.test/envoy/7")],
)
async def test_mutual_tls_serves_a_node_its_certificate_names(
    mutual: TestClient[Any, Any], authority: Authority, common_name: str, uris: tuple[str, ...], node_id: str
) -> None:
    pem = authority.issue(common_name, uris=uris)
    credentials = grpc.ssl_channel_credentials(authority.pem, pem.key, pem.certificate)
    async with AdsClient(ads_target(mutual), node_id, credentials=credentials) as envoy:
        await envoy.request(CDS)
        assert (await envoy.receive()).type_url == CDS
        assert (await node_view(mutual, node_id))["authenticated"] is True


async def test_mutual_tls_refuses_another_nodes_id_and_clients_without_a_certificate(
    mutual: TestClient[Any, Any], authority: Authority
) -> None:
    pem = authority.issue("envoy-a")
    credentials = grpc.ssl_channel_credentials(authority.pem, pem.key, pem.certificate)
    async with AdsClient(ads_target(mutual), "envoy-b", credentials=credentials) as envoy:
        await envoy.request(CDS)
        refusal = await envoy.refusal()
    assert refusal.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "names ['envoy-a']" in (refusal.details() or "")
    assert "not node id 'envoy-b'" in (refusal.details() or "")

    no_certificate = grpc.ssl_channel_credentials(authority.pem)
    async with AdsClient(ads_target(mutual), "envoy-a", credentials=no_certificate) as envoy:
        await envoy.request(CDS)
        assert (await envoy.refusal()).code() is grpc.StatusCode.UNAVAILABLE

    stranger = Authority("another CA").issue("envoy-a")
    foreign = grpc.ssl_channel_credentials(authority.pem, stranger.key, stranger.certificate)
    async with AdsClient(ads_target(mutual), "envoy-a", credentials=foreign) as envoy:
        await envoy.request(CDS)
        assert (await envoy.refusal()).code() is grpc.StatusCode.UNAVAILABLE
    assert await node_ids(mutual) == []
