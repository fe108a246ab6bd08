"""A rollout survives `kill -9` of `aegis serve`: it resumes at its step, pauses count wall time."""

from __future__ import annotations

import json
import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import API_TOKENS, SIGN_KEY, TOKENS
from tests.e2e.stack import AegisApi
from tests.processes import AegisServer

POLICY = """
policies:
  - name: slow
    models: ["*"]
    steps:
      - setWeight: 20
      - pause: {duration: 6s}
      - setWeight: 50
      - pause: {duration: 1s}
"""


@pytest.fixture
def server(tmp_path: Path) -> Iterator[AegisServer]:
    (tmp_path / "policies.yaml").write_text(POLICY)
    running = AegisServer(
        {
            "AEGIS_DATA_DIR": str(tmp_path / "data"),
            "AEGIS_API_TOKENS": API_TOKENS,
            "AEGIS_MODEL_SIGN_KEY": SIGN_KEY,
            "AEGIS_POLICIES": str(tmp_path / "policies.yaml"),
            "AEGIS_ROLLOUT_TICK_SECONDS": "0.2",
            "AEGIS_XDS_VALIDATE": "false",
        }
    ).start()
    yield running
    running.stop()


def get(server: AegisServer, path: str) -> Any:
    request = urllib.request.Request(
        server.url + path, headers={"Authorization": f"Bearer {TOKENS['viewer']}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def wait_for(server: AegisServer, predicate: Any, seconds: float = 30) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        document = get(server, "/v1/rollouts/m")
        if predicate(document):
            return document
        time.sleep(0.1)
    raise AssertionError(f"rollout never got there: {document}")


def test_a_killed_control_plane_resumes_the_rollout_where_it_stood(server: AegisServer) -> None:
    stack = AegisApi(server)
    for version in ("1", "2"):
        stack.register("m", version, f"weights {version}".encode())
    stack.promote("m", "1", "prod")
    stack.promote("m", "2", "canary")
    pausing = wait_for(server, lambda d: d["step"] == 2)
    paused_at = time.monotonic()
    server.stop(sig=signal.SIGKILL)
    server.start()
    resumed = get(server, "/v1/rollouts/m")
    assert (resumed["phase"], resumed["step"], resumed["canary_weight"]) == ("progressing", 2, 20)
    assert resumed["started_at"] == pausing["started_at"]
    done = wait_for(server, lambda d: d["phase"] == "succeeded")
    assert time.monotonic() - paused_at >= 6 - 1, "the 6 s pause counts the time the process was down too"
    reasons = [d["reason"] for d in done["decisions"]]
    assert sum("canary weight 0 -> 20" in r for r in reasons) == 1
    assert sum("canary weight 20 -> 50" in r for r in reasons) == 1
    versions = get(server, "/v1/registry/m")["stages"]
    assert versions == {"prod": "2", "canary": None}


def test_sighup_reloads_the_policy_files_at_once(tmp_path: Path) -> None:
    policies = tmp_path / "policies.yaml"
    policies.write_text(POLICY)
    server = AegisServer(
        {
            "AEGIS_DATA_DIR": str(tmp_path / "data"),
            "AEGIS_API_TOKENS": API_TOKENS,
            "AEGIS_MODEL_SIGN_KEY": SIGN_KEY,
            "AEGIS_POLICIES": str(policies),
            "AEGIS_POLICY_RELOAD_SECONDS": "600",  # only the signal can make it reload in time
        }
    ).start()
    try:
        assert [p["name"] for p in get(server, "/v1/policies")["policies"]] == ["slow"]
        policies.write_text(POLICY.replace("name: slow", "name: brisk"))
        assert server.process is not None
        server.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while [p["name"] for p in get(server, "/v1/policies")["policies"]] != ["brisk"]:
            assert time.monotonic() < deadline, "SIGHUP did not reload the policies"
            time.sleep(0.1)
    finally:
        server.stop()
