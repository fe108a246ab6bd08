"""docker-compose.yml and the Dockerfile agree with the repository and with the shipped configs.

No Docker engine runs here, so this reads the files: what compose mounts exists, what the
Dockerfile copies exists and is what `pip install .` needs, and every address one service
uses to reach another (Envoy's bootstrap, Prometheus's targets, Alertmanager's webhook, the
model servers' flags) is where that service listens. Tokens the services present are ones
Aegis accepts with the role they need.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from controlplane.openapi import openapi_document
from controlplane.settings import load_settings
from controlplane.xds.credentials import NodeCredentials
from registry.auth import Role, TokenTable
from registry.blob_stores import S3Blobs

ROOT = Path(__file__).resolve().parents[2]
MODEL_SERVERS = ("model-server-1", "model-server-2")
REPLICAS = ("aegis", "aegis-2")
# Compose's `${NAME:-default}`; a bare `${NAME}` would have no value without the environment.
INTERPOLATION = re.compile(r"\$\{(?P<name>\w+)(?::-(?P<default>[^}]*))?\}")


def load_yaml(relative: str) -> Any:
    return yaml.safe_load((ROOT / relative).read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = load_yaml("docker-compose.yml")
    assert isinstance(document, dict)
    return document


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return dict(compose["services"])


def with_defaults(value: str) -> str:
    """The value compose gives with an empty environment; a variable without a default fails."""

    def default(match: re.Match[str]) -> str:
        assert match["default"] is not None, f"${{{match['name']}}} has no default placeholder"
        return match["default"]

    return INTERPOLATION.sub(default, value)


def host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def flag(command: list[str], name: str) -> str:
    values = [item.split("=", 1)[1] for item in command if item.startswith(f"{name}=")]
    assert len(values) == 1, f"{name} given {len(values)} times in {command}"
    return values[0]


def option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Bind mounts of a service: container path -> host path (relative to the repository)."""
    found = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith(("./", "/")):
            found[target] = source
    return found


def aegis_listen(services: dict[str, Any]) -> tuple[str, int]:
    return host_port(services["aegis"]["environment"]["AEGIS_LISTEN"])


def socket_address(node: dict[str, Any]) -> tuple[str, int]:
    address = node["socket_address"]
    return address["address"], int(address["port_value"])


def scrape_targets(prometheus: dict[str, Any], job: str) -> set[tuple[str, int]]:
    (config,) = (c for c in prometheus["scrape_configs"] if c["job_name"] == job)
    return {host_port(target) for static in config["static_configs"] for target in static["targets"]}


# -- files --------------------------------------------------------------------------------------------


def test_every_service_is_there_on_the_host_network(services: dict[str, Any]) -> None:
    assert set(services) == {
        *REPLICAS, "postgres", "minio", "minio-bucket", "envoy", "prometheus", "alertmanager", "grafana",
        *MODEL_SERVERS,
    }
    for name, service in services.items():
        assert service.get("network_mode") == "host", name
        assert "ports" not in service, f"{name}: ports are not mapped on the host network"


def test_every_mounted_file_or_folder_exists_and_named_volumes_are_declared(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    declared = set(compose.get("volumes") or {})
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts {source}, which is not in the repository"
            else:
                assert not source.startswith("/"), f"{name} mounts the absolute host path {source}"
                assert source in declared, f"{name} uses volume {source!r}, not declared under volumes:"


def test_the_dockerfile_copies_what_pip_install_needs_and_it_exists(services: dict[str, Any]) -> None:
    for name in (*REPLICAS, *MODEL_SERVERS):
        build = services[name]["build"]
        assert (ROOT / build["context"] / build["dockerfile"]).resolve() == ROOT / "Dockerfile", name
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    copied: set[str] = set()
    for line in lines:
        words = line.split()
        if words[:1] == ["COPY"] and not any(word.startswith("--from") for word in words):
            for source in words[1:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
                copied.add(source.rstrip("/"))
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = [p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]]
    assert {"pyproject.toml", project["project"]["readme"], *packages} <= copied
    assert "FROM python:3.11-slim" in lines
    assert 'ENTRYPOINT ["aegis"]' in lines and "aegis" in project["project"]["scripts"]


def dockerfile_environment() -> dict[str, str]:
    """The ENV of the image the Dockerfile builds (continuation lines joined)."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    environment: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            for item in shlex.split(line[4:]):
                name, _, value = item.partition("=")
                environment[name] = value
    return environment


def test_the_image_listens_on_all_interfaces_while_aegis_alone_stays_on_loopback() -> None:
    # Inside a container 127.0.0.1 is the container's own loopback: a published port never reaches it.
    inside = load_settings(dockerfile_environment())
    assert (inside.server.host, inside.server.port) == ("0.0.0.0", 8080)
    assert inside.xds.grpc_listen == ("0.0.0.0", 18000)  # Envoys outside the container reach ADS
    assert inside.server.data_dir == Path("/var/lib/aegis")
    outside = load_settings({})
    assert (outside.server.host, outside.server.port) == ("127.0.0.1", 8080)
    assert outside.xds.grpc_listen == ("127.0.0.1", 18000)


def test_configs_are_mounted_where_the_commands_and_each_other_look(services: dict[str, Any]) -> None:
    envoy, prometheus, alertmanager = services["envoy"], services["prometheus"], services["alertmanager"]
    assert mounts(envoy)[option(envoy["command"], "-c")] == "./envoy/envoy-replicas.yaml"
    prometheus_config = flag(prometheus["command"], "--config.file")
    assert mounts(prometheus)[prometheus_config] == "./deploy/prometheus.yml"
    rule_dir = PurePosixPath(load_yaml("deploy/prometheus.yml")["rule_files"][0]).parent
    assert mounts(prometheus)[str(PurePosixPath(prometheus_config).parent / rule_dir)] == "./deploy/rules"
    assert mounts(alertmanager)[flag(alertmanager["command"], "--config.file")] == "./deploy/alertmanager.yml"
    (receiver,) = load_yaml("deploy/alertmanager.yml")["receivers"]
    credentials = receiver["webhook_configs"][0]["http_config"]["authorization"]["credentials_file"]
    # A relative credentials_file is read from the config file's folder, in compose as outside it.
    assert not credentials.startswith("/")
    alertmanager_config = PurePosixPath(flag(alertmanager["command"], "--config.file"))
    token_file = str(alertmanager_config.parent / credentials)
    assert mounts(alertmanager)[token_file] == "./deploy/compose/alertmanager-token.example"
    for name in REPLICAS:
        environment = services[name]["environment"]
        assert mounts(services[name])[environment["AEGIS_POLICIES"]] == "./deploy/policies", name


def test_grafana_provisions_prometheus_and_the_dashboards_from_the_mounted_folders(
    services: dict[str, Any],
) -> None:
    grafana = services["grafana"]
    provisioning = mounts(grafana)["/etc/grafana/provisioning"]  # Grafana's default GF_PATHS_PROVISIONING
    assert provisioning == "./deploy/grafana/provisioning"
    (provider,) = load_yaml("deploy/grafana/provisioning/dashboards/aegis.yml")["providers"]
    dashboards = mounts(grafana)[provider["options"]["path"]]
    assert dashboards == "./deploy/grafana/dashboards"
    home = PurePosixPath(grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert (ROOT / dashboards / home.relative_to(provider["options"]["path"])).is_file()
    (source,) = load_yaml("deploy/grafana/provisioning/datasources/prometheus.yml")["datasources"]
    url = urlsplit(source["url"])
    prometheus_listen = host_port(flag(services["prometheus"]["command"], "--web.listen-address"))
    assert (url.hostname, url.port) == prometheus_listen
    for path in (ROOT / dashboards).glob("*.json"):
        text = path.read_text()
        assert '"uid": "' + source["uid"] + '"' in text and "${DS_" not in text, path  # no import-time inputs
    assert grafana["environment"]["GF_SERVER_HTTP_ADDR"] == "127.0.0.1"  # see Networking
    assert grafana["depends_on"] == ["prometheus"]


# -- addresses ----------------------------------------------------------------------------------------


def xds_addresses(bootstrap: dict[str, Any]) -> list[tuple[str, int]]:
    (xds,) = (c for c in bootstrap["static_resources"]["clusters"] if c["name"] == "xds_cluster")
    (endpoints,) = xds["load_assignment"]["endpoints"]
    return [socket_address(e["endpoint"]["address"]) for e in endpoints["lb_endpoints"]]


def xds_address(bootstrap_path: str) -> tuple[str, int]:
    (address,) = xds_addresses(load_yaml(bootstrap_path))
    return address


def test_envoy_finds_aegis_and_prometheus_finds_envoys_admin(services: dict[str, Any]) -> None:
    environment = {key: with_defaults(value) for key, value in services["aegis"]["environment"].items()}
    settings = load_settings(environment)
    admin = socket_address(load_yaml("envoy/envoy.yaml")["admin"]["address"])

    # ADS (the mounted bootstrap) goes to the gRPC listener; REST (envoy-rest.yaml) to the API's.
    assert xds_address("envoy/envoy.yaml") == settings.xds.grpc_listen == ("127.0.0.1", 18000)
    assert xds_address("envoy/envoy-rest.yaml") == aegis_listen(services) == ("127.0.0.1", 8080)
    assert scrape_targets(load_yaml("deploy/prometheus.yml"), "envoy") == {admin} == {("127.0.0.1", 9901)}


def test_envoys_xds_node_token_is_one_aegis_requires_for_its_node(services: dict[str, Any]) -> None:
    required = NodeCredentials.parse(with_defaults(services["aegis"]["environment"]["AEGIS_XDS_NODE_TOKENS"]))
    token = with_defaults(services["envoy"]["environment"]["AEGIS_XDS_NODE_TOKEN"])
    bootstrap = load_yaml("envoy/envoy.yaml")
    assert required.required
    assert required.check(f"Bearer {token}").allows(bootstrap["node"]["id"])


def test_prometheus_scrapes_aegis_and_the_model_servers_where_they_listen(services: dict[str, Any]) -> None:
    prometheus = load_yaml("deploy/prometheus.yml")
    model_server_ports = {int(option(services[name]["command"], "--port")) for name in MODEL_SERVERS}

    assert scrape_targets(prometheus, "aegis") == {aegis_listen(services)}
    assert scrape_targets(prometheus, "model-servers") == {("127.0.0.1", port) for port in model_server_ports}
    assert model_server_ports == {8501, 8502}


def test_prometheus_alerts_alertmanager_and_aegis_queries_prometheus(services: dict[str, Any]) -> None:
    prometheus = load_yaml("deploy/prometheus.yml")
    (alerting,) = prometheus["alerting"]["alertmanagers"]
    alertmanager_listen = host_port(flag(services["alertmanager"]["command"], "--web.listen-address"))
    prometheus_listen = host_port(flag(services["prometheus"]["command"], "--web.listen-address"))
    aegis_prometheus = urlsplit(services["aegis"]["environment"]["AEGIS_PROMETHEUS_URL"])

    assert {host_port(t) for t in alerting["static_configs"][0]["targets"]} == {alertmanager_listen}
    assert alertmanager_listen == ("127.0.0.1", 9093)
    assert (aegis_prometheus.hostname, aegis_prometheus.port) == prometheus_listen


def test_alertmanager_and_the_model_servers_call_aegis_where_it_listens(services: dict[str, Any]) -> None:
    (receiver,) = load_yaml("deploy/alertmanager.yml")["receivers"]
    webhook = urlsplit(receiver["webhook_configs"][0]["url"])

    assert (webhook.hostname, webhook.port) == aegis_listen(services)
    assert webhook.path in openapi_document()["paths"]
    for name in MODEL_SERVERS:
        aegis_url = urlsplit(services[name]["environment"]["AEGIS_URL"])
        assert (aegis_url.hostname, aegis_url.port) == aegis_listen(services), name


def replica_settings(services: dict[str, Any], name: str) -> Any:
    return load_settings({key: with_defaults(value) for key, value in services[name]["environment"].items()})


def test_envoy_lists_both_replicas_and_is_the_single_replica_bootstrap_otherwise(
    services: dict[str, Any],
) -> None:
    several, single = load_yaml("envoy/envoy-replicas.yaml"), load_yaml("envoy/envoy.yaml")
    grpc_listens = [replica_settings(services, name).xds.grpc_listen for name in REPLICAS]
    assert xds_addresses(several) == grpc_listens == [("127.0.0.1", 18000), ("127.0.0.1", 18001)]
    for bootstrap in (several, single):  # nothing else may drift between the two
        (xds,) = (c for c in bootstrap["static_resources"]["clusters"] if c["name"] == "xds_cluster")
        del xds["load_assignment"]["endpoints"]
    assert several == single


def test_the_replicas_share_the_database_the_bucket_and_the_keys_and_nothing_else(
    services: dict[str, Any],
) -> None:
    first, second = (replica_settings(services, name) for name in REPLICAS)
    assert first.server.database_url == second.server.database_url
    assert first.server.database_url.startswith("postgresql+asyncpg://")
    assert first.registry.blob_store == second.registry.blob_store == S3Blobs("aegis-artifacts", "aegis")
    # A download URL signed by one replica verifies on the other.
    assert first.security.url_signing_key == second.security.url_signing_key is not None
    environments = [services[name]["environment"] for name in REPLICAS]
    assert len({e["AEGIS_REPLICA_ID"] for e in environments}) == 2
    assert (first.server.port, second.server.port) == (8080, 8081)
    assert [urlsplit(e["AEGIS_PUBLIC_URL"]).port for e in environments] == [8080, 8081]
    data_volumes = [
        v.split(":")[0] for name in REPLICAS for v in services[name]["volumes"] if "/var/lib/aegis" in v
    ]
    assert len(set(data_volumes)) == 2
    for name in REPLICAS:
        assert set(services[name]["depends_on"]) == {"postgres", "minio-bucket"}


def test_aegis_reaches_postgres_and_minio_with_their_credentials_and_the_bucket_is_made(
    services: dict[str, Any],
) -> None:
    aegis = {key: with_defaults(value) for key, value in services["aegis"]["environment"].items()}
    postgres = services["postgres"]
    database = urlsplit(aegis["AEGIS_DATABASE_URL"])
    postgres_env = {key: with_defaults(value) for key, value in postgres["environment"].items()}
    assert (database.username, database.password, database.path) == (
        postgres_env["POSTGRES_USER"], postgres_env["POSTGRES_PASSWORD"], f"/{postgres_env['POSTGRES_DB']}"
    )
    assert (database.hostname, database.port) == ("127.0.0.1", 5432)
    assert "listen_addresses=127.0.0.1" in postgres["command"] and "port=5432" in postgres["command"]

    minio = services["minio"]
    assert minio["image"].startswith("minio/minio")
    minio_env = {key: with_defaults(value) for key, value in minio["environment"].items()}
    endpoint = urlsplit(aegis["AWS_ENDPOINT_URL"])
    assert (endpoint.hostname, endpoint.port) == host_port(option(minio["command"], "--address"))
    assert (aegis["AWS_ACCESS_KEY_ID"], aegis["AWS_SECRET_ACCESS_KEY"]) == (
        minio_env["MINIO_ROOT_USER"], minio_env["MINIO_ROOT_PASSWORD"]
    )
    (script,) = services["minio-bucket"]["command"]
    bucket = load_settings(aegis).registry.blob_store
    assert isinstance(bucket, S3Blobs)
    assert f"mc alias set aegis {aegis['AWS_ENDPOINT_URL']} " in script
    assert script.endswith(f"mc mb --ignore-existing aegis/{bucket.bucket}")
    assert services["minio-bucket"]["depends_on"] == {"minio": {"condition": "service_healthy"}}


# -- secrets ------------------------------------------------------------------------------------------


def test_every_token_a_service_presents_is_accepted_with_the_role_it_needs(services: dict[str, Any]) -> None:
    environment = services["aegis"]["environment"]
    tokens = TokenTable.parse(with_defaults(environment["AEGIS_API_TOKENS"]))
    alertmanager_token = (ROOT / "deploy/compose/alertmanager-token.example").read_text().strip()

    assert tokens.authenticate(f"Bearer {alertmanager_token}").role is Role.OPERATOR
    for name in MODEL_SERVERS:
        model_server = services[name]["environment"]
        token = with_defaults(model_server["AEGIS_TOKEN"])
        assert tokens.authenticate(f"Bearer {token}").role >= Role.OPERATOR, name
        # The model server verifies the signature Aegis made: the same key, from the same variable.
        assert model_server["AEGIS_MODEL_SIGN_KEY"] == environment["AEGIS_MODEL_SIGN_KEY"], name
    assert {principal.role for _, principal in tokens.entries} == {Role.ADMIN, Role.OPERATOR}


def test_secrets_are_variables_whose_defaults_say_they_are_placeholders(services: dict[str, Any]) -> None:
    aegis = services["aegis"]["environment"]
    values = [aegis[key] for key in (
        "AEGIS_API_TOKENS", "AEGIS_MODEL_SIGN_KEY", "AEGIS_URL_SIGNING_KEY", "AEGIS_DATABASE_URL",
        "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
    )]
    values += [services["postgres"]["environment"]["POSTGRES_PASSWORD"]]
    values += list(services["minio"]["environment"].values())
    values += [services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"]]
    for name in MODEL_SERVERS:
        values += [services[name]["environment"][key] for key in ("AEGIS_TOKEN", "AEGIS_MODEL_SIGN_KEY")]

    for value in values:
        defaults = [match["default"] for match in INTERPOLATION.finditer(value)]
        assert defaults, f"{value!r} is not taken from a variable"
        assert all(default.startswith("change-me-") for default in defaults), value
    assert (ROOT / "deploy/compose/alertmanager-token.example").read_text().startswith("change-me-")
