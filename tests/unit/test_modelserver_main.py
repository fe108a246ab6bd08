"""`aegis model-server` flags and environment into settings: flags win, secrets come from the environment."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from modelserver.arguments import add_model_server_arguments
from modelserver.faults import Faults, FaultValueError
from modelserver.main import settings_from_args
from modelserver.settings import ModelServerSettings, announced_address


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_model_server_arguments(parser)
    return parser.parse_args(["--model", "fraud", "--version", "2", "--port", "9001", *argv])


def test_defaults_follow_the_contract() -> None:
    settings = settings_from_args(parse(), {})
    assert settings == ModelServerSettings(
        "fraud", "2", 9001, host="127.0.0.1", registry_url="http://127.0.0.1:8080", token="",
        ttl_seconds=10, faults=Faults(error_rate=0.0, latency_ms=0.0, quality=0.95), data_dir=None,
        admin_token=None,
    )


def test_the_environment_supplies_url_and_tokens_and_flags_win() -> None:
    env = {"AEGIS_URL": "http://aegis:8080", "AEGIS_TOKEN": "op", "AEGIS_MODEL_SERVER_ADMIN_TOKEN": "adm"}
    from_env = settings_from_args(parse(), env)
    assert (from_env.registry_url, from_env.token, from_env.admin_token) == ("http://aegis:8080", "op", "adm")
    flagged = settings_from_args(
        parse("--registry-url", "http://other:1", "--admin-token", "flag-admin", "--data-dir", "/tmp/m",
              "--ttl-seconds", "4", "--error-rate", "0.2", "--latency-ms", "50", "--quality", "0.5"),
        env,
    )
    assert (flagged.registry_url, flagged.admin_token, flagged.data_dir, flagged.ttl_seconds) == (
        "http://other:1", "flag-admin", Path("/tmp/m"), 4,
    )
    assert flagged.faults == Faults(error_rate=0.2, latency_ms=50.0, quality=0.5)


def test_secrets_stay_out_of_the_settings_repr() -> None:
    env = {"AEGIS_TOKEN": "op-secret", "AEGIS_MODEL_SERVER_ADMIN_TOKEN": "adm-secret"}
    settings = settings_from_args(parse(), env)
    assert "op-secret" not in repr(settings) and "adm-secret" not in repr(settings)


def test_out_of_range_fault_flags_are_refused() -> None:
    with pytest.raises(FaultValueError, match=r"error_rate is 1\.5"):
        settings_from_args(parse("--error-rate", "1.5"), {})


@pytest.mark.parametrize("argv", [("--ttl-seconds", "0"), ("--port", "70000"), ("--port", "x")])
def test_bad_numbers_are_argument_errors(argv: tuple[str, ...]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse(*argv)
    assert exited.value.code == 2


@pytest.mark.parametrize(
    ("argv", "announced"),
    [
        ((), "127.0.0.1"),
        (("--host", "10.0.0.5"), "10.0.0.5"),
        (("--host", "0.0.0.0", "--advertise-address", "10.0.0.5"), "10.0.0.5"),
    ],
)
def test_the_announced_address_is_one_envoy_can_reach(argv: tuple[str, ...], announced: str) -> None:
    assert announced_address(settings_from_args(parse(*argv), {})) == announced


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_a_wildcard_listen_address_needs_an_advertised_one(host: str) -> None:
    with pytest.raises(ValueError, match="--advertise-address"):
        announced_address(settings_from_args(parse("--host", host), {}))
