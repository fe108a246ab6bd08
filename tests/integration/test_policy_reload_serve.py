"""Policy reload on a real `aegis serve`: a bad file is reported (API, metric, log) and never stops reloading.

Issue 9, finding 5: `setWeight: <5,000 digits>` or 5,000 nested `[` killed the reload
task without a log line, so later edits and SIGHUP were ignored; at start-up the same
file made `aegis serve` exit 1.
"""

from __future__ import annotations

import json
import signal
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.configmap_volume import ConfigMapVolume
from tests.conftest import API_TOKENS, SIGN_KEY, TOKENS
from tests.processes import AegisServer

GOOD = """\
policies:
  - name: steady
    models: ["*"]
    steps:
      - setWeight: {weight}
"""
HUGE_WEIGHT = GOOD.format(weight="9" * 5000)  # the error is on line 5
DEEP = "policies: " + "[" * 5000 + "\n"  # the error is on line 1


def settings(tmp_path: Path, policies: Path, **env: str) -> dict[str, str]:
    return {
        "AEGIS_DATA_DIR": str(tmp_path / "data"),
        "AEGIS_API_TOKENS": API_TOKENS,
        "AEGIS_MODEL_SIGN_KEY": SIGN_KEY,
        "AEGIS_POLICIES": str(policies),
        "AEGIS_XDS_VALIDATE": "false",
        **env,
    }


@pytest.fixture
def serve() -> Iterator[Callable[[dict[str, str]], AegisServer]]:
    started: list[AegisServer] = []

    def start(env: dict[str, str]) -> AegisServer:
        server = AegisServer(env)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


def get(server: AegisServer, path: str) -> Any:
    viewer = {"Authorization": f"Bearer {TOKENS['viewer']}"}
    request = urllib.request.Request(server.url + path, headers=viewer)
    with urllib.request.urlopen(request, timeout=5) as response:
        body = response.read()
    return json.loads(body) if path.startswith("/v1/") else body.decode()


def wait_for_policies(server: AegisServer, check: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    status: dict[str, Any] = {}
    for _ in range(200):
        status = get(server, "/v1/policies")
        if check(status):
            return status
        time.sleep(0.1)
    raise AssertionError(f"GET /v1/policies never got there: {status}")


def weights(status: dict[str, Any]) -> list[int]:
    return [step["setWeight"] for policy in status["policies"] for step in policy["steps"]]


def errors_at(lines: list[int]) -> Callable[[dict[str, Any]], bool]:
    return lambda status: [error["line"] for error in status["errors"]] == lines


def in_force(expected: list[int]) -> Callable[[dict[str, Any]], bool]:
    return lambda status: bool(status["ok"]) and weights(status) == expected


def error_metric(server: AegisServer) -> float:
    line = next(x for x in get(server, "/metrics").splitlines() if x.startswith("aegis_policy_errors "))
    return float(line.split()[1])


def log_of(server: AegisServer) -> str:
    return (Path(server.env["AEGIS_DATA_DIR"]) / "aegis.log").read_text(errors="replace")


def test_an_edit_that_breaks_the_file_is_reported_and_the_fix_is_picked_up(
    tmp_path: Path, serve: Callable[[dict[str, str]], AegisServer]
) -> None:
    policy_file = tmp_path / "policies.yaml"
    policy_file.write_text(GOOD.format(weight=10))
    server = serve(settings(tmp_path, policy_file, AEGIS_POLICY_RELOAD_SECONDS="0.2"))
    assert weights(get(server, "/v1/policies")) == [10]

    last_good = 10
    for broken, line, field in ((HUGE_WEIGHT, 5, "policies[0].steps[0].setWeight"), (DEEP, 1, "")):
        policy_file.write_text(broken)
        status = wait_for_policies(server, errors_at([line]))
        errors = [(e["file"], e["line"], e["field"]) for e in status["errors"]]
        assert errors == [(str(policy_file), line, field)]
        assert weights(status) == [last_good]  # the last good version stays in force
        assert error_metric(server) == 1
        assert f"policy error: {policy_file}:{line}:" in log_of(server)

        last_good = 30 + line
        policy_file.write_text(GOOD.format(weight=last_good))  # the loop is alive: a fix is read
        wait_for_policies(server, in_force([last_good]))
        assert error_metric(server) == 0


def test_sighup_reloads_after_a_bad_file(
    tmp_path: Path, serve: Callable[[dict[str, str]], AegisServer]
) -> None:
    policy_file = tmp_path / "policies.yaml"
    policy_file.write_text(GOOD.format(weight=10))
    # Polling off in practice (an hour): only SIGHUP reloads.
    server = serve(settings(tmp_path, policy_file, AEGIS_POLICY_RELOAD_SECONDS="3600"))
    assert server.process is not None
    for text, error_line in ((DEEP, 1), (HUGE_WEIGHT, 5)):
        policy_file.write_text(text)
        server.process.send_signal(signal.SIGHUP)
        status = wait_for_policies(server, errors_at([error_line]))
        assert weights(status) == [10]
    policy_file.write_text(GOOD.format(weight=40))
    server.process.send_signal(signal.SIGHUP)
    wait_for_policies(server, in_force([40]))
    assert server.process.poll() is None


def test_a_bad_file_at_start_up_is_reported_and_the_other_files_load(
    tmp_path: Path, serve: Callable[[dict[str, str]], AegisServer]
) -> None:
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "10-deep.yaml").write_text(DEEP)
    (folder / "20-huge.yaml").write_text(HUGE_WEIGHT.replace("steady", "huge"))
    (folder / "30-good.yaml").write_text(GOOD.format(weight=20).replace("steady", "good"))
    server = serve(settings(tmp_path, folder))  # started: before, it exited 1

    status = get(server, "/v1/policies")
    assert status["ok"] is False
    assert [p["name"] for p in status["policies"]] == ["good"]
    assert [(Path(e["file"]).name, e["line"]) for e in status["errors"]] == [("10-deep.yaml", 1),
                                                                             ("20-huge.yaml", 5)]
    assert error_metric(server) == 2
    log = log_of(server)
    assert f"policy error: {folder / '10-deep.yaml'}:1: nested more than 64 levels" in log
    assert f"policy error: {folder / '20-huge.yaml'}:5: policies[0].steps[0].setWeight" in log


def test_a_configmap_update_reaches_a_running_server(
    tmp_path: Path, serve: Callable[[dict[str, str]], AegisServer]
) -> None:
    volume = ConfigMapVolume(tmp_path / "policies")
    volume.write({"default.yaml": GOOD.format(weight=10)})
    server = serve(settings(tmp_path, volume.root, AEGIS_POLICY_RELOAD_SECONDS="0.2"))
    assert weights(get(server, "/v1/policies")) == [10]
    # `kubectl apply` of the ConfigMap, as the kubelet lands it: a new directory, a symlink swap.
    volume.write({"default.yaml": GOOD.format(weight=20)})
    status = wait_for_policies(server, in_force([20]))
    # Reported under the name the operator knows, not the kubelet's hidden directory.
    assert [policy["source"] for policy in status["policies"]] == [f"{volume.root / 'default.yaml'}:2"]
