"""Static endpoints in the configuration: a YAML list in the config file or JSON in the environment,
each entry checked like `POST /v1/endpoints`, refused at start-up with the entry and field named."""

from __future__ import annotations

from pathlib import Path

import pytest

from controlplane.settings import SettingsError, load_settings


def test_a_config_file_lists_static_endpoints_per_model_version(tmp_path: Path) -> None:
    config = tmp_path / "aegis.yaml"
    config.write_text(
        "AEGIS_STATIC_ENDPOINTS:\n"
        "  - {model_name: fraud, version: '2', address: 10.0.0.7, port: 8000}\n"
        "  - {model_name: fraud, version: '2', address: 10.0.0.8, port: 8000}\n"
        "  - model_name: triton-resnet\n    version: '1'\n    address: '::1'\n    port: 8001\n"
    )
    assert load_settings({}, config_file=config).xds.static_endpoints == {
        ("fraud", "2"): frozenset({("10.0.0.7", 8000), ("10.0.0.8", 8000)}),
        ("triton-resnet", "1"): frozenset({("::1", 8001)}),
    }


def test_the_environment_gives_them_as_json_and_wins_over_the_file(tmp_path: Path) -> None:
    config = tmp_path / "aegis.yaml"
    config.write_text("AEGIS_STATIC_ENDPOINTS: [{model_name: a, version: '1', address: 10.0.0.1, port: 1}]\n")
    entry = '{"model_name": "b", "version": "2", "address": "10.0.0.2", "port": 2}'
    env = {"AEGIS_STATIC_ENDPOINTS": f"[{entry}]"}
    endpoints = load_settings(env, config_file=config).xds.static_endpoints
    assert endpoints == {("b", "2"): frozenset({("10.0.0.2", 2)})}
    assert load_settings({}).xds.static_endpoints == {}
    assert load_settings({"AEGIS_STATIC_ENDPOINTS": ""}).xds.static_endpoints == {}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("{model_name: a}",
         "AEGIS_STATIC_ENDPOINTS must be a list of {model_name, version, address, port}, not dict"),
        ("[a, b]", "AEGIS_STATIC_ENDPOINTS[0] must be a mapping"),
        ("[{model_name: a, version: '1', address: a.example, port: 80}]",
         "AEGIS_STATIC_ENDPOINTS[0]: address: Value error, 'a.example' must be an IP address"),
        ("[{model_name: a, version: 1, address: 10.0.0.1, port: 80}]",
         'AEGIS_STATIC_ENDPOINTS[0]: version: Input should be a valid string (quote it: version: "1")'),
        ("[{model_name: a, version: '1', address: 10.0.0.1, port: 0}]",
         "AEGIS_STATIC_ENDPOINTS[0]: port: Input should be greater than or equal to 1"),
        ("[{model_name: A/b, version: '1', address: 10.0.0.1, port: 80}]",
         "AEGIS_STATIC_ENDPOINTS[0]: model_name: Value error, model name 'A/b' is invalid"),
        ("[{model_name: a, version: '1', address: 10.0.0.1, port: 80, ttl_seconds: 5}]",
         "AEGIS_STATIC_ENDPOINTS[0]: ttl_seconds: Extra inputs are not permitted"),
        ("[{model_name: a, version: '1', address: 10.0.0.1}]",
         "AEGIS_STATIC_ENDPOINTS[0]: port: Field required"),
        ("[{model_name: a, version: '1', address: 10.0.0.1, port: 80},"
         " {model_name: a, version: '1', address: 10.0.0.1, port: 80}]",
         "AEGIS_STATIC_ENDPOINTS[1] repeats entry [0] (a 1 at 10.0.0.1:80)"),
        ("[{", "AEGIS_STATIC_ENDPOINTS is not YAML or JSON"),
    ],
)
def test_a_bad_entry_is_refused_at_start_up_naming_the_entry_and_field(value: str, message: str) -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings({"AEGIS_STATIC_ENDPOINTS": value})
    assert str(raised.value).startswith(message), str(raised.value)
