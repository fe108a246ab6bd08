"""The operator CLI against a running `aegis serve`: tables, --json and exit codes scripts can trust."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import API_TOKENS, SIGN_KEY, TOKENS
from tests.processes import AegisServer, free_port


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AegisServer]:
    running = AegisServer(
        {
            "AEGIS_DATA_DIR": str(tmp_path_factory.mktemp("cli") / "data"),
            "AEGIS_API_TOKENS": API_TOKENS,
            "AEGIS_MODEL_SIGN_KEY": SIGN_KEY,
            "AEGIS_XDS_VALIDATE": "false",
        }
    ).start()
    yield running
    running.stop()


def aegis(server: AegisServer, *args: str, role: str = "admin") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AEGIS_URL": server.url, "AEGIS_TOKEN": TOKENS[role]}
    return subprocess.run(
        [sys.executable, "-m", "controlplane.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_register_promote_and_inspect_a_model(server: AegisServer, tmp_path: Path) -> None:
    artifact = tmp_path / "model.onnx"
    artifact.write_bytes(os.urandom(3 * 2**20))
    registered = aegis(server, "register", "fraud", "1", str(artifact), "--metadata", '{"team": "risk"}')
    assert registered.returncode == 0, registered.stderr
    assert "registered fraud 1" in registered.stdout and "key legacy" in registered.stdout
    as_json = json.loads(aegis(server, "register", "fraud", "2", str(artifact), "--json").stdout)
    assert as_json["stage"] == "staging"
    assert aegis(server, "promote", "fraud", "1", "--to", "prod").returncode == 0
    assert aegis(server, "promote", "fraud", "2", "--to", "canary").returncode == 0
    models = aegis(server, "models")
    assert models.stdout.splitlines()[1].split() == ["fraud", "1", "2", "2"]
    versions = aegis(server, "versions", "fraud")
    assert "3.0 MiB" in versions.stdout and "canary" in versions.stdout
    listed = json.loads(aegis(server, "versions", "fraud", "--json").stdout)
    assert listed["versions"][0]["metadata"]["team"] == "risk"
    valid = aegis(server, "validate", "fraud", "1")
    assert valid.returncode == 0 and valid.stdout.startswith("valid")


def test_traffic_and_nodes(server: AegisServer) -> None:
    shown = aegis(server, "traffic", "fraud", "--set", "1=90,2=10", role="operator")
    assert shown.returncode == 0, shown.stderr
    assert [line.split()[:3] for line in shown.stdout.splitlines()[1:3]] == [
        ["1", "prod", "90"],
        ["2", "canary", "10"],
    ]
    assert json.loads(aegis(server, "traffic", "fraud", "--json").stdout)["weights"] == {"1": 90, "2": 10}
    assert aegis(server, "nodes").stdout.strip() == "no Envoy node has polled yet"
    assert aegis(server, "rollback", "fraud", role="operator").stdout.strip() == "fraud: 2: canary -> staging"


def endpoint(server: AegisServer, method: str, version: str, port: int) -> None:
    """What a model server does when it starts (POST) or stops (DELETE)."""
    body = {"model_name": "scorer", "version": version, "address": "127.0.0.1", "port": port}
    request = urllib.request.Request(
        f"{server.url}/v1/endpoints", data=json.dumps(body).encode(), method=method,
        headers={"Authorization": f"Bearer {TOKENS['operator']}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30):
        pass


def test_a_rollback_onto_a_version_whose_server_stopped_is_refused_unless_forced(
    server: AegisServer, tmp_path: Path
) -> None:
    for version in ("1", "2"):
        artifact = tmp_path / f"scorer-{version}.bin"
        artifact.write_bytes(f"scorer {version}".encode())
        assert aegis(server, "register", "scorer", version, str(artifact)).returncode == 0
        endpoint(server, "POST", version, 9300 + int(version))
    assert aegis(server, "promote", "scorer", "1", "--to", "prod").returncode == 0
    assert aegis(server, "promote", "scorer", "2", "--to", "prod").returncode == 0
    endpoint(server, "DELETE", "1", 9301)  # version 1's model server stopped

    refused = aegis(server, "rollback", "scorer", role="operator")
    assert refused.returncode == 1
    assert "scorer 1 has no live endpoint" in refused.stderr and "--force" in refused.stderr
    shown = aegis(server, "traffic", "scorer")
    assert shown.stdout.splitlines()[0].split() == ["VERSION", "ROLE", "WEIGHT", "LIVE", "ENDPOINTS"]
    assert shown.stdout.splitlines()[1].split() == ["2", "prod", "100", "1", "127.0.0.1:9302"]
    assert "warning" not in shown.stdout

    forced = aegis(server, "rollback", "scorer", "--force", role="operator")
    assert forced.returncode == 0, forced.stderr
    shown = aegis(server, "traffic", "scorer")
    assert shown.stdout.splitlines()[1].split() == ["1", "prod", "100", "0", "none"]
    assert "warning: prod 1 has weight but no live endpoint" in shown.stdout
    assert json.loads(aegis(server, "traffic", "scorer", "--json").stdout)["endpoint_counts"] == {"1": 0}


@pytest.mark.parametrize(
    ("args", "role", "code", "message"),
    [
        (("versions", "nope"), "viewer", 1, "not registered"),
        (("promote", "fraud", "1", "--to", "canary"), "viewer", 1, "needs the operator role"),
        (("traffic", "fraud", "--set", "1=lots"), "operator", 2, "version=weight"),
        (("register", "fraud", "9", "/no/such/file"), "admin", 2, "is not a file"),
        (("promote", "fraud", "1", "--to", "moon"), "admin", 2, "invalid choice"),
    ],
)
def test_errors_say_what_to_do_with_exit_codes(
    server: AegisServer, args: tuple[str, ...], role: str, code: int, message: str
) -> None:
    result = aegis(server, *args, role=role)
    assert result.returncode == code
    assert message in result.stderr


def test_an_unreachable_server_exits_3(tmp_path: Path) -> None:
    env = {**os.environ, "AEGIS_URL": f"http://127.0.0.1:{free_port()}", "AEGIS_TOKEN": "x"}
    result = subprocess.run(
        [sys.executable, "-m", "controlplane.cli", "models"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 3
    assert "cannot reach Aegis" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("rollout", "status", "ghost"),
         "aegis: no rollout for ghost; start one with `aegis promote ghost VERSION --to canary`"),
        (("rollout", "pause", "ghost"), "ghost"),
        (("versions", "ghost"), "list models with `aegis models`"),
        (("traffic", "ghost"), "list models with `aegis models`"),
    ],
)
def test_errors_name_cli_commands_not_http_paths(
    server: AegisServer, args: tuple[str, ...], message: str
) -> None:
    result = aegis(server, *args, role="operator")
    assert result.returncode == 1
    assert message in result.stderr
    assert "/v1/" not in result.stderr and "GET " not in result.stderr and "POST " not in result.stderr
