"""The operator CLI against a running `aegis serve`: tables, --json and exit codes scripts can trust."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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
