"""Mutual TLS on the ADS stream, with real Envoy: the README's xds_cluster `transport_socket`.

Aegis serves gRPC ADS with AEGIS_XDS_GRPC_TLS_CERT/_KEY/_CLIENT_CA and no node tokens:
the client certificate is the node's credential. Certificates are made here.
"""

from __future__ import annotations

import asyncio
import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.certificates import Authority
from tests.e2e.envoy_admin import stats
from tests.e2e.stack import Stack
from tests.e2e.traffic import send
from tests.processes import Envoy, XdsTransport

MODEL = "secured"
SERVER_NAME = "aegis.internal"  # the name Envoy checks in Aegis's certificate


def tls_transport_socket(folder: Path, node_name: str) -> dict[str, Any]:
    """xds_cluster's `transport_socket` as the README shows it, with these files."""
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": SERVER_NAME,
            "common_tls_context": {
                "alpn_protocols": ["h2"],
                "validation_context": {
                    "trusted_ca": {"filename": str(folder / "xds-ca.pem")},
                    "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": SERVER_NAME}}],
                },
                "tls_certificates": [
                    {
                        "certificate_chain": {"filename": str(folder / f"{node_name}.crt")},
                        "private_key": {"filename": str(folder / f"{node_name}.key")},
                    }
                ],
            },
        },
    }


class MutualTlsEnvoy(Envoy):
    """envoy/envoy.yaml whose xds_cluster speaks TLS and shows the certificate of `certificate_name`."""

    def __init__(self, workdir: Path, *, certificates: Path, certificate_name: str, **options: Any) -> None:
        super().__init__(workdir, **options)
        self.certificates = certificates
        self.certificate_name = certificate_name

    def bootstrap(self) -> dict[str, Any]:
        config = super().bootstrap()
        (xds_cluster,) = (c for c in config["static_resources"]["clusters"] if c["name"] == "xds_cluster")
        xds_cluster["transport_socket"] = tls_transport_socket(self.certificates, self.certificate_name)
        return config


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("certificates")
    authority = Authority()
    (folder / "xds-ca.pem").write_bytes(authority.pem)
    authority.issue("aegis", dns=(SERVER_NAME,), server=True).write(folder, "aegis")
    authority.issue("aegis-envoy-1").write(folder, "aegis-envoy-1")
    authority.issue("someone-else").write(folder, "someone-else")
    return folder


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, certificates: Path) -> Iterator[Stack]:
    tls = {
        "AEGIS_XDS_GRPC_TLS_CERT": str(certificates / "aegis.crt"),
        "AEGIS_XDS_GRPC_TLS_KEY": str(certificates / "aegis.key"),
        "AEGIS_XDS_GRPC_TLS_CLIENT_CA": str(certificates / "xds-ca.pem"),
    }
    running = Stack(tmp_path_factory.mktemp("tls"), node_tokens=False, extra_env=tls)
    running.aegis.start()
    try:
        running.envoy = MutualTlsEnvoy(
            running.root / "envoy",
            certificates=certificates,
            certificate_name="aegis-envoy-1",
            xds_port=running.aegis.grpc_port,
        ).start()
        yield running
    finally:
        running.close()


async def test_envoy_with_its_node_certificate_gets_its_config_over_mutual_tls(stack: Stack) -> None:
    stack.register(MODEL, "1", b"secured weights" * 64)
    stack.promote(MODEL, "1", "prod")
    stack.start_model_server(MODEL, "1")
    stack.wait_acked(MODEL)
    assert await send(stack.gateway, MODEL, 20) == {(200, "1"): 20}
    nodes = stack.api("GET", "/v1/xds/nodes", role="viewer")["nodes"]
    # No token anywhere: the certificate named the node.
    seen = [(n["node_id"], n["authenticated"], n["transport"]) for n in nodes]
    assert seen == [("aegis-envoy-1", True, "ads")]


def refused_streams(stack: Stack) -> float:
    with urllib.request.urlopen(f"{stack.aegis.url}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(float(v) for v in re.findall(r"aegis_xds_refused_streams_total\{[^}]*\} (\S+)", text))


async def test_an_envoy_whose_certificate_names_another_node_gets_nothing(
    stack: Stack, certificates: Path
) -> None:
    before = refused_streams(stack)
    impostor = MutualTlsEnvoy(
        stack.root / "envoy-impostor",
        certificates=certificates,
        certificate_name="someone-else",  # a valid certificate from the CA, for another name
        xds_port=stack.aegis.grpc_port,
        node_id="aegis-envoy-2",
        transport=XdsTransport.ADS,
    )
    impostor.launch()  # not start(): it never becomes ready
    try:
        deadline = time.monotonic() + 20
        while refused_streams(stack) <= before:
            assert time.monotonic() < deadline, "the impostor's stream was never refused"
            await asyncio.sleep(0.1)
        # Not control_plane.connected_state: Envoy sets it while a retried stream is open,
        # before Aegis refuses it again. What counts is that no config ever arrived.
        seen = stats(impostor, ("cluster_manager.cds.update_success",))
        assert seen == {"cluster_manager.cds.update_success": 0}
        nodes = stack.api("GET", "/v1/xds/nodes", role="viewer")["nodes"]
        assert [n["node_id"] for n in nodes] == ["aegis-envoy-1"]
    finally:
        impostor.stop()
