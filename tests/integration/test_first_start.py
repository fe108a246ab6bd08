"""A first start: `./run serve --config FILE` keeps the file's data directory, and says what is missing.

`./run serve` is run for real, with its virtualenv stood in by this interpreter (so
nothing is installed): the script's own logic is what is tested.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from controlplane.demo.processes import clean_environment
from tests.conftest import API_TOKENS, SIGN_KEY
from tests.processes import ROOT, AegisServer, free_port, stop, wait_for_http


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A checkout with ./run whose .venv is this interpreter, marked as installed for this pyproject."""
    root = tmp_path / "checkout"
    (root / ".venv" / "bin").mkdir(parents=True)
    for name in ("run", "pyproject.toml"):
        shutil.copy2(ROOT / name, root / name)
    (root / ".venv" / "bin" / "python").symlink_to(sys.executable)
    aegis = root / ".venv" / "bin" / "aegis"
    aegis.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m controlplane.cli "$@"\n')
    aegis.chmod(0o755)
    stamp = hashlib.sha256((root / "pyproject.toml").read_bytes()).hexdigest()
    (root / ".venv" / ".aegis-installed").write_text(stamp + "\n")
    return root


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        stop(process)


@pytest.mark.parametrize("named", ["relative", "absolute"])
def test_run_serve_with_a_config_file_keeps_its_data_dir_and_says_what_is_missing(
    tmp_path: Path, checkout: Path, processes: list[subprocess.Popen[bytes]], named: str
) -> None:
    caller = tmp_path / "ops"  # ./run is called from elsewhere, with a config file named from there
    caller.mkdir()
    port = free_port()
    data_dir = tmp_path / "data-from-config"
    (caller / "aegis.yaml").write_text(
        f"AEGIS_LISTEN: 127.0.0.1:{port}\nAEGIS_DATA_DIR: {data_dir}\nAEGIS_API_TOKENS: {API_TOKENS}\n"
        "AEGIS_XDS_VALIDATE: 'false'\n"
    )
    log_path = tmp_path / "serve.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [str(checkout / "run"), "serve", "--config",
             "aegis.yaml" if named == "relative" else str(caller / "aegis.yaml")],
            cwd=caller, env=clean_environment(), stdout=log, stderr=subprocess.STDOUT,
        )
    processes.append(process)
    wait_for_http(f"http://127.0.0.1:{port}/healthz", process=process)

    assert (data_dir / "aegis.db").is_file()  # the file's data directory, not ./run's
    assert not (checkout / "aegis-data").exists()
    log_text = log_path.read_text()
    assert "no model signing key: every registration is refused until one is set" in log_text
    assert "set AEGIS_MODEL_SIGN_KEY" in log_text
    assert "no rollout policies: AEGIS_POLICIES is not set" in log_text


def test_a_policy_folder_with_no_policy_is_said_at_start_up(tmp_path: Path) -> None:
    (tmp_path / "policies").mkdir()
    server = AegisServer({
        "AEGIS_DATA_DIR": str(tmp_path / "data"), "AEGIS_API_TOKENS": API_TOKENS,
        "AEGIS_MODEL_SIGN_KEY": SIGN_KEY, "AEGIS_POLICIES": str(tmp_path / "policies"),
    }).start()
    server.stop()
    log_text = (tmp_path / "data" / "aegis.log").read_text()
    assert f"no rollout policy in force from {tmp_path / 'policies'}" in log_text
    assert "no model signing key" not in log_text
