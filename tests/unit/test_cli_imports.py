"""`aegis` builds its whole parser without importing a web server, a database layer or Prometheus's
client: a command such as `aegis models` is one HTTP request, and it started in ~4 s on the CI
machine when every command imported the server."""

from __future__ import annotations

import json
import subprocess
import sys

from controlplane.demo.processes import clean_environment

HEAVY = ("aiohttp", "sqlalchemy", "grpc", "prometheus_client", "controlplane.app", "modelserver.server")


def modules_after(code: str) -> set[str]:
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    return set(json.loads(done.stdout.splitlines()[-1]))


def test_building_the_parser_imports_no_server_library() -> None:
    loaded = modules_after("from controlplane.cli import _parser\n_parser()")
    assert "controlplane.ops_cli" in loaded  # the probe did build the parser
    assert sorted(m for m in HEAVY if m in loaded) == []


def test_a_settings_error_is_exit_2_with_its_message() -> None:
    """The errors that mean "fix your input" are known even though settings load lazily."""
    done = subprocess.run(
        [sys.executable, "-m", "controlplane.cli", "serve"],
        env={**clean_environment(), "AEGIS_LISTEN": "not-an-address"},
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("aegis: ") and "AEGIS_LISTEN" in done.stderr
    assert "Traceback" not in done.stderr
