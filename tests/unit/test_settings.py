"""Settings: environment over file, secrets from files, clear errors that never show a secret."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from controlplane.cluster.identity import replica_id
from controlplane.settings import SettingsError, load_settings
from registry.blob_stores import BlobStoreTarget, DataDirBlobs, S3Blobs, SharedDirectoryBlobs


def test_defaults_follow_the_design() -> None:
    settings = load_settings({})
    assert (settings.server.host, settings.server.port) == ("127.0.0.1", 8080)
    assert settings.server.effective_database_url.endswith("aegis-data/aegis.db")
    assert settings.registry.max_artifact_bytes == 10 * 1024**3
    assert settings.integrations.prometheus_url == "http://127.0.0.1:9090"
    assert settings.integrations.envoy_listener == "127.0.0.1:10000"


def test_environment_wins_over_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "aegis.yaml"
    config.write_text("AEGIS_LISTEN: 0.0.0.0:9000\nAEGIS_MAX_ARTIFACT_BYTES: 1000\n")
    settings = load_settings({"AEGIS_LISTEN": "127.0.0.1:7000"}, config_file=config)
    assert settings.server.port == 7000
    assert settings.registry.max_artifact_bytes == 1000


def test_secrets_come_from_files(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("admin:from-file\n")
    settings = load_settings({"AEGIS_API_TOKENS_FILE": str(tokens)})
    assert settings.security.tokens.authenticate("Bearer from-file").name == "admin"


def test_xds_listener_and_node_tokens(tmp_path: Path) -> None:
    default = load_settings({})
    assert (default.xds.listen, default.xds.node_credentials.required) == (None, False)
    tokens = tmp_path / "xds-tokens"
    tokens.write_text("envoy-1:node-secret\n")
    settings = load_settings(
        {"AEGIS_XDS_LISTEN": "10.0.0.5:18080", "AEGIS_XDS_NODE_TOKENS_FILE": str(tokens)}
    )
    assert settings.xds.listen == ("10.0.0.5", 18080)
    assert settings.xds.node_credentials.check("Bearer node-secret").allows("envoy-1")
    assert "node-secret" not in repr(settings)
def test_the_body_read_timeout_defaults_to_30_seconds_and_can_be_set() -> None:
    assert load_settings({}).server.body_read_timeout_seconds == 30.0
    assert load_settings({"AEGIS_BODY_READ_TIMEOUT_SECONDS": "2.5"}).server.body_read_timeout_seconds == 2.5


def test_postgres_urls_get_the_async_driver() -> None:
    settings = load_settings({"AEGIS_DATABASE_URL": "postgresql://u@h:5432/db"})
    assert settings.server.database_url == "postgresql+asyncpg://u@h:5432/db"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"AEGIS_LISTEN": "nope"}, "AEGIS_LISTEN"),
        ({"AEGIS_MAX_ARTIFACT_BYTES": "-1"}, "AEGIS_MAX_ARTIFACT_BYTES"),
        ({"AEGIS_MAX_ARTIFACT_BYTES": "lots"}, "AEGIS_MAX_ARTIFACT_BYTES"),
        ({"AEGIS_DATABASE_URL": "mysql://secretpw@h/db"}, "AEGIS_DATABASE_URL"),
        ({"AEGIS_API_TOKENS": "king:secretpw"}, "AEGIS_API_TOKENS"),
        ({"AEGIS_MODEL_SIGN_KEYS": "secretpw"}, "AEGIS_MODEL_SIGN_KEYS"),
        ({"AEGIS_XDS_NODE_TOKENS": "secretpw"}, "AEGIS_XDS_NODE_TOKENS"),
        ({"AEGIS_XDS_LISTEN": "internal"}, "AEGIS_XDS_LISTEN"),
        ({"AEGIS_XDS_LISTEN": "127.0.0.1:8080"}, "AEGIS_XDS_LISTEN must differ from AEGIS_LISTEN"),
        ({"AEGIS_XDS_MAX_NODES": "0"}, "AEGIS_XDS_MAX_NODES"),
        ({"AEGIS_BODY_READ_TIMEOUT_SECONDS": "0"}, "AEGIS_BODY_READ_TIMEOUT_SECONDS must be positive"),
        ({"AEGIS_BODY_READ_TIMEOUT_SECONDS": "soon"}, "AEGIS_BODY_READ_TIMEOUT_SECONDS"),
    ],
)
def test_bad_settings_name_the_setting_and_hide_the_secret(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings(env)
    assert message in str(raised.value)
    assert "secretpw" not in str(raised.value)


def test_a_broken_config_file_is_reported(tmp_path: Path) -> None:
    config = tmp_path / "aegis.yaml"
    config.write_text("AEGIS_LISTEN: [unclosed\n")
    with pytest.raises(SettingsError, match="not valid YAML"):
        load_settings({}, config_file=config)
    config.write_text("listen: 1\n")
    with pytest.raises(SettingsError, match="unknown settings"):
        load_settings({}, config_file=config)


def test_the_public_url_defaults_to_the_listen_address() -> None:
    settings = load_settings({"AEGIS_LISTEN": "10.1.2.3:9000"})
    assert settings.server.public_url == "http://10.1.2.3:9000"
    assert settings.server.public_url_guessed is False
    assert load_settings({"AEGIS_LISTEN": "[::1]:9000"}).server.public_url == "http://[::1]:9000"


@pytest.mark.parametrize("listen", ["0.0.0.0:8080", "[::]:8080"])
def test_a_wildcard_listen_address_makes_the_public_url_a_guess_from_the_hostname(listen: str) -> None:
    settings = load_settings({"AEGIS_LISTEN": listen})
    assert settings.server.public_url == f"http://{socket.gethostname()}:8080"
    assert settings.server.public_url_guessed is True
    configured = load_settings({"AEGIS_LISTEN": listen, "AEGIS_PUBLIC_URL": "https://aegis.example.com/"})
    assert configured.server.public_url == "https://aegis.example.com"
    assert configured.server.public_url_guessed is False


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("ftp://aegis.example.com", "http:// or https://"),
        ("aegis.example.com:8080", "http:// or https://"),
        ("https://", "no host"),
        ("https://aegis.example.com/?next=1", "query or a fragment"),
        ("https://aegis.example.com/#top", "query or a fragment"),
        ("https://aegis.example.com?", "query or a fragment"),
        ("https://aegis.example.com:http", "port"),
        ("https://user:secretpw@aegis.example.com", "credentials"),
    ],
)
def test_a_bad_public_url_is_refused_with_the_reason(url: str, problem: str) -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings({"AEGIS_PUBLIC_URL": url})
    assert "AEGIS_PUBLIC_URL" in str(raised.value)
    assert problem in str(raised.value)
    assert "secretpw" not in str(raised.value)


def test_grpc_ads_listens_on_18000_by_default_and_off_turns_it_off() -> None:
    assert load_settings({}).xds.grpc_listen == ("127.0.0.1", 18000)
    assert load_settings({"AEGIS_XDS_GRPC_LISTEN": "0.0.0.0:18443"}).xds.grpc_listen == ("0.0.0.0", 18443)
    assert load_settings({"AEGIS_XDS_GRPC_LISTEN": "off"}).xds.grpc_listen is None
    assert load_settings({}).xds.grpc_tls is None


def _tls_files(tmp_path: Path) -> dict[str, str]:
    from tests.certificates import Authority

    authority = Authority()
    server = authority.issue("aegis", ips=("127.0.0.1",), server=True)
    cert, key = server.write(tmp_path, "server")
    ca = tmp_path / "ca.pem"
    ca.write_bytes(authority.pem)
    other_key = tmp_path / "other.key"
    other_key.write_bytes(authority.issue("someone else").key)
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    return {"cert": str(cert), "key": str(key), "ca": str(ca), "other_key": str(other_key), "junk": str(junk)}


def test_grpc_tls_reads_the_pem_files_and_mutual_tls_adds_the_client_ca(tmp_path: Path) -> None:
    files = _tls_files(tmp_path)
    tls = load_settings(
        {"AEGIS_XDS_GRPC_TLS_CERT": files["cert"], "AEGIS_XDS_GRPC_TLS_KEY": files["key"]}
    ).xds.grpc_tls
    assert tls is not None and not tls.mutual
    assert b"PRIVATE KEY" not in repr(tls).encode()
    mutual = load_settings(
        {"AEGIS_XDS_GRPC_TLS_CERT": files["cert"], "AEGIS_XDS_GRPC_TLS_KEY": files["key"],
         "AEGIS_XDS_GRPC_TLS_CLIENT_CA": files["ca"]}
    ).xds.grpc_tls
    assert mutual is not None and mutual.mutual


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"AEGIS_XDS_GRPC_LISTEN": "grpc"}, "AEGIS_XDS_GRPC_LISTEN"),
        ({"AEGIS_XDS_GRPC_LISTEN": "127.0.0.1:8080"}, "AEGIS_XDS_GRPC_LISTEN must differ from AEGIS_LISTEN"),
        ({"AEGIS_XDS_LISTEN": "127.0.0.1:18000"}, "AEGIS_XDS_GRPC_LISTEN must differ from AEGIS_XDS_LISTEN"),
        ({"AEGIS_XDS_GRPC_TLS_KEY": "{key}"}, "_TLS_KEY is set without AEGIS_XDS_GRPC_TLS_CERT"),
        ({"AEGIS_XDS_GRPC_TLS_CERT": "{cert}"}, "_TLS_CERT is set without AEGIS_XDS_GRPC_TLS_KEY"),
        ({"AEGIS_XDS_GRPC_TLS_CLIENT_CA": "{ca}"}, "AEGIS_XDS_GRPC_TLS_CLIENT_CA is set without"),
        ({"AEGIS_XDS_GRPC_TLS_CERT": "{cert}", "AEGIS_XDS_GRPC_TLS_KEY": "{cert}.missing"},
         "AEGIS_XDS_GRPC_TLS_KEY='"),
        ({"AEGIS_XDS_GRPC_TLS_CERT": "{junk}", "AEGIS_XDS_GRPC_TLS_KEY": "{key}"},
         "AEGIS_XDS_GRPC_TLS_CERT is not a PEM certificate"),
        ({"AEGIS_XDS_GRPC_TLS_CERT": "{cert}", "AEGIS_XDS_GRPC_TLS_KEY": "{junk}"},
         "AEGIS_XDS_GRPC_TLS_KEY is not an unencrypted PEM private key"),
        ({"AEGIS_XDS_GRPC_TLS_CERT": "{cert}", "AEGIS_XDS_GRPC_TLS_KEY": "{other_key}"},
         "is not the key of AEGIS_XDS_GRPC_TLS_CERT"),
        ({"AEGIS_XDS_GRPC_TLS_CERT": "{cert}", "AEGIS_XDS_GRPC_TLS_KEY": "{key}",
          "AEGIS_XDS_GRPC_TLS_CLIENT_CA": "{junk}"}, "AEGIS_XDS_GRPC_TLS_CLIENT_CA is not a PEM"),
    ],
)
def test_bad_grpc_settings_are_clear_at_start_up(tmp_path: Path, env: dict[str, str], message: str) -> None:
    files = _tls_files(tmp_path)
    with pytest.raises(SettingsError) as raised:
        load_settings({name: value.format(**files) for name, value in env.items()})
    assert message in str(raised.value)
    assert "PRIVATE KEY" not in str(raised.value)


@pytest.mark.parametrize(
    ("text", "target"),
    [
        ("", DataDirBlobs()),
        ("file:///srv/aegis/blobs", SharedDirectoryBlobs(Path("/srv/aegis/blobs"))),
        ("file://localhost/srv/my%20blobs/", SharedDirectoryBlobs(Path("/srv/my blobs"))),
        ("s3://models", S3Blobs("models", "")),
        ("s3://models.example-1/aegis/prod/", S3Blobs("models.example-1", "aegis/prod")),
    ],
)
def test_the_blob_store_is_the_data_directory_a_shared_directory_or_a_bucket(
    text: str, target: BlobStoreTarget
) -> None:
    assert load_settings({"AEGIS_BLOB_STORE": text}).registry.blob_store == target


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("gs://models/aegis", "unknown scheme 'gs'; use file:///path"),
        ("/srv/blobs", "unknown scheme '(none)'"),
        ("file://srv/blobs", "three slashes"),
        ("file:relative/path", "absolute path"),
        ("s3://", "names no bucket: write s3://BUCKET"),
        ("s3:///prefix", "names no bucket"),
        ("s3://Models", "'Models' is not a valid bucket name"),
        ("s3://ab", "'ab' is not a valid bucket name"),
        ("s3://models?endpoint=http://minio", "AWS_ENDPOINT_URL"),
    ],
)
def test_a_bad_blob_store_is_refused_at_start_up_with_what_to_write(text: str, message: str) -> None:
    with pytest.raises(SettingsError, match="AEGIS_BLOB_STORE") as raised:
        load_settings({"AEGIS_BLOB_STORE": text})
    assert message in str(raised.value)


def test_the_leader_lease_is_10_seconds_and_the_replica_id_optional() -> None:
    defaults = load_settings({})
    assert (defaults.cluster.leader_lease_seconds, defaults.cluster.replica_id) == (10.0, "")
    chosen = load_settings({"AEGIS_LEADER_LEASE_SECONDS": "3", "AEGIS_REPLICA_ID": "aegis-0"})
    assert (chosen.cluster.leader_lease_seconds, chosen.cluster.replica_id) == (3.0, "aegis-0")
    assert defaults.cluster.follow_reconcile_seconds == 30.0
    assert load_settings({"AEGIS_FOLLOW_RECONCILE_SECONDS": "5"}).cluster.follow_reconcile_seconds == 5.0


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"AEGIS_LEADER_LEASE_SECONDS": "0"}, "AEGIS_LEADER_LEASE_SECONDS must be positive"),
        ({"AEGIS_LEADER_LEASE_SECONDS": "ten"}, "AEGIS_LEADER_LEASE_SECONDS='ten' is not a number"),
        ({"AEGIS_FOLLOW_RECONCILE_SECONDS": "0"}, "AEGIS_FOLLOW_RECONCILE_SECONDS must be positive"),
        ({"AEGIS_REPLICA_ID": " aegis-0"}, "AEGIS_REPLICA_ID must be 1 to 255 printable characters"),
        ({"AEGIS_REPLICA_ID": "a" * 256}, "AEGIS_REPLICA_ID must be 1 to 255 printable characters"),
        ({"AEGIS_REPLICA_ID": "aegis\n0"}, "AEGIS_REPLICA_ID must be 1 to 255 printable characters"),
    ],
)
def test_bad_cluster_settings_say_what_to_set(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        load_settings(env)


def test_the_default_replica_id_is_made_once_and_kept_in_the_data_dir(tmp_path: Path) -> None:
    first = replica_id("", tmp_path / "a")
    assert first == replica_id("", tmp_path / "a")  # a restart comes back under the same id
    assert (tmp_path / "a" / "replica-id").read_text().strip() == first
    assert first != replica_id("", tmp_path / "b")  # two data dirs on one host: two replicas
    assert replica_id("given", tmp_path / "a") == "given"
