"""Process settings, read once at start-up from an optional YAML file and the environment.

The environment wins over the file. Secrets (keys, tokens) may be given directly or
as `*_FILE` paths; they are never part of a repr, a log line or an error message.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from controlplane.notifications.targets import NotificationSettings, NotifySettingError, parse_webhooks
from controlplane.traffic.static_endpoints import StaticEndpointError, StaticEndpoints, parse_static_endpoints
from controlplane.xds.ads_tls import GrpcTls, TlsConfigError, check_server_tls
from controlplane.xds.credentials import NodeCredentials, NodeTokenConfigError
from controlplane.xds.nodes import DEFAULT_MAX_NODES
from registry.auth import TokenTable
from registry.blob_stores import BlobStoreTarget, DataDirBlobs, parse_blob_store
from registry.http import DEFAULT_BODY_READ_TIMEOUT_SECONDS
from registry.signing import Keyring, keyring_from_env

DEFAULT_MAX_ARTIFACT_BYTES = 10 * 1024**3  # 10 GiB: large models fit, a runaway upload does not fill the disk
# gRPC ADS: the port go-control-plane's examples and most Envoy bootstraps use for xDS.
DEFAULT_XDS_GRPC_LISTEN = "127.0.0.1:18000"


class SettingsError(ValueError):
    """A setting cannot be used; the message names the setting and what to change."""


@dataclass(frozen=True)
class ServerSettings:
    """Where the process listens and keeps its state."""

    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = Path("aegis-data")
    # SQLite in the data directory by default; PostgreSQL (postgresql+asyncpg://) as an option.
    database_url: str = ""
    # The origin (and optional path prefix) clients reach this process at: signed download
    # URLs are built on it, never on a request's Host header, which the client chooses.
    public_url: str = "http://127.0.0.1:8080"
    # True when AEGIS_PUBLIC_URL was not set and the listen address is a wildcard, so the
    # public URL is a guess from the machine's hostname (start-up warns about it).
    public_url_guessed: bool = False
    # Seconds a request body may go without a byte arriving before a 408 and a closed
    # connection: long enough for a congested link, short enough that stalled
    # clients cannot pile up connections (nginx's client_body_timeout is 60 s).
    body_read_timeout_seconds: float = DEFAULT_BODY_READ_TIMEOUT_SECONDS

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.data_dir / 'aegis.db'}"


@dataclass(frozen=True)
class RegistrySettings:
    # Bytes; a larger upload is refused with 413 before it fills the disk.
    max_artifact_bytes: int = DEFAULT_MAX_ARTIFACT_BYTES
    # Seconds a signed download URL stays valid: long enough for a model server to start.
    download_url_ttl_seconds: int = 900
    # Where artifact bytes live (AEGIS_BLOB_STORE): the data directory by default.
    blob_store: BlobStoreTarget = field(default_factory=DataDirBlobs)


@dataclass(frozen=True)
class SecuritySettings:
    tokens: TokenTable = field(repr=False, default_factory=TokenTable)
    keyring: Keyring = field(repr=False, default_factory=Keyring)
    # Signs download URLs; generated and kept in the data directory when not given.
    url_signing_key: bytes | None = field(repr=False, default=None)


@dataclass(frozen=True)
class XdsSettings:
    """How Aegis serves Envoy; must agree with the bootstrap in envoy/envoy.yaml."""

    # Seconds an up-to-date poll is held open before a 304: shorter than Envoy's
    # request_timeout (10 s in the bootstrap) or every held poll counts as a failure.
    hold_seconds: float = 5.0
    # Seconds without a poll after which a node no longer counts for acknowledgements.
    node_stale_seconds: float = 30.0
    # RDS polling given to a REST Envoy inside the listener (LDS/CDS polling is in
    # envoy/envoy-rest.yaml, with the same 250 ms and the trade-off measured there).
    rds_refresh_delay_ms: int = 250
    rds_request_timeout_ms: int = 10000
    # Run `envoy --mode validate` on structurally new configs when the binary is there.
    validate: bool = True
    # (host, port) of a separate listener for /v3/discovery:* (AEGIS_XDS_LISTEN), so
    # discovery can stay on an internal interface; None: served on AEGIS_LISTEN.
    listen: tuple[str, int] | None = None
    # Which bearer token may speak for which node (AEGIS_XDS_NODE_TOKENS); empty:
    # polls are taken from anyone and no node counts as authenticated.
    node_credentials: NodeCredentials = field(repr=False, default_factory=NodeCredentials)
    # Nodes tracked at most; past it the least recently seen is forgotten. Above any
    # real fleet, low enough that made-up node ids cannot grow memory without bound.
    # Nodes with an open ADS stream go last, so keep it above the number of Envoys.
    max_nodes: int = DEFAULT_MAX_NODES
    # (host, port) of the gRPC ADS listener (AEGIS_XDS_GRPC_LISTEN; port 0: any free
    # port); None ("off"): no ADS, REST only.
    grpc_listen: tuple[str, int] | None = ("127.0.0.1", 18000)
    # Server TLS for the gRPC listener, mutual with a client CA (AEGIS_XDS_GRPC_TLS_*);
    # None: plaintext (keep the listener on an internal interface then).
    grpc_tls: GrpcTls | None = None
    # (model, version) -> (address, port)s always in Envoy's config (AEGIS_STATIC_ENDPOINTS).
    static_endpoints: StaticEndpoints = field(default_factory=dict)


@dataclass(frozen=True)
class IntegrationSettings:
    prometheus_url: str = "http://127.0.0.1:9090"
    # Seconds a Prometheus query may take: a slow answer counts as an error, not a wait.
    prometheus_timeout_seconds: float = 3.0
    policies_path: Path | None = None
    envoy_listener: str = "127.0.0.1:10000"
    # Seconds between rollout ticks: pauses and analysis intervals are checked this often.
    rollout_tick_seconds: float = 1.0
    # Seconds between checks of the policy files for edits (SIGHUP reloads at once).
    policy_reload_seconds: float = 2.0
    # Webhooks told about rollout events (AEGIS_NOTIFY_*).
    notifications: NotificationSettings = field(default_factory=NotificationSettings)


@dataclass(frozen=True)
class ClusterSettings:
    """Several replicas on one PostgreSQL database (SQLite: one replica, always the leader)."""

    # AEGIS_REPLICA_ID; empty: made from the hostname and data directory, kept in the data directory.
    replica_id: str = ""
    # Seconds a leader's lease lasts without renewal (renewed every fifth of it; the leader
    # stops acting after two thirds of it without a renewal). client-go uses 15.
    leader_lease_seconds: float = 10.0
    # Seconds between the follower's full reconciles when nothing asks for one: the backstop
    # for a notification lost without the listener noticing (every reconnect reconciles anyway).
    follow_reconcile_seconds: float = 30.0


@dataclass(frozen=True)
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    registry: RegistrySettings = field(default_factory=RegistrySettings)
    security: SecuritySettings = field(default_factory=SecuritySettings)
    integrations: IntegrationSettings = field(default_factory=IntegrationSettings)
    xds: XdsSettings = field(default_factory=XdsSettings)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)


def load_settings(env: Mapping[str, str] | None = None, config_file: Path | None = None) -> Settings:
    """Merge the YAML config file (if any) under the environment; validate everything once."""
    environ = dict(os.environ if env is None else env)
    config_path = config_file or _optional_path(environ.get("AEGIS_CONFIG"))
    merged = {**_read_config_file(config_path), **environ} if config_path else environ
    host, port = parse_listen(merged.get("AEGIS_LISTEN", "127.0.0.1:8080"), "AEGIS_LISTEN")
    public_url, guessed = _public_url(merged.get("AEGIS_PUBLIC_URL", ""), host, port)
    server = ServerSettings(
        host=host,
        port=port,
        data_dir=Path(merged.get("AEGIS_DATA_DIR", "aegis-data")),
        database_url=_database_url(merged.get("AEGIS_DATABASE_URL", "")),
        public_url=public_url,
        public_url_guessed=guessed,
        body_read_timeout_seconds=_positive_float(
            merged, "AEGIS_BODY_READ_TIMEOUT_SECONDS", DEFAULT_BODY_READ_TIMEOUT_SECONDS
        ),
    )
    registry = RegistrySettings(
        max_artifact_bytes=_positive_int(merged, "AEGIS_MAX_ARTIFACT_BYTES", DEFAULT_MAX_ARTIFACT_BYTES),
        download_url_ttl_seconds=_positive_int(merged, "AEGIS_DOWNLOAD_URL_TTL_SECONDS", 900),
        blob_store=_blob_store(merged.get("AEGIS_BLOB_STORE", "")),
    )
    try:
        tokens = TokenTable.parse(_secret(merged, "AEGIS_API_TOKENS"))
        keyring = keyring_from_env(
            {**merged, "AEGIS_MODEL_SIGN_KEY": _secret(merged, "AEGIS_MODEL_SIGN_KEY"),
             "AEGIS_MODEL_SIGN_KEYS": _secret(merged, "AEGIS_MODEL_SIGN_KEYS")}
        )
    except ValueError as exc:
        raise SettingsError(str(exc)) from exc
    url_key = _secret(merged, "AEGIS_URL_SIGNING_KEY")
    security = SecuritySettings(tokens, keyring, url_key.encode() if url_key else None)
    integrations = IntegrationSettings(
        prometheus_url=merged.get("AEGIS_PROMETHEUS_URL", "http://127.0.0.1:9090"),
        prometheus_timeout_seconds=_non_negative_float(merged, "AEGIS_PROMETHEUS_TIMEOUT_SECONDS", 3.0),
        policies_path=_optional_path(merged.get("AEGIS_POLICIES")),
        envoy_listener=merged.get("AEGIS_ENVOY_LISTENER", "127.0.0.1:10000"),
        rollout_tick_seconds=_non_negative_float(merged, "AEGIS_ROLLOUT_TICK_SECONDS", 1.0) or 1.0,
        policy_reload_seconds=_non_negative_float(merged, "AEGIS_POLICY_RELOAD_SECONDS", 2.0) or 2.0,
        notifications=_notification_settings(merged),
    )
    cluster = ClusterSettings(
        replica_id=_replica_id(merged.get("AEGIS_REPLICA_ID", "")),
        leader_lease_seconds=_positive_float(merged, "AEGIS_LEADER_LEASE_SECONDS", 10.0),
        follow_reconcile_seconds=_positive_float(merged, "AEGIS_FOLLOW_RECONCILE_SECONDS", 30.0),
    )
    return Settings(server, registry, security, integrations, _xds_settings(merged, server), cluster)


REPLICA_ID_MAX_CHARS = 255


def _replica_id(value: str) -> str:
    if len(value) > REPLICA_ID_MAX_CHARS or not value.isprintable() or value != value.strip():
        raise SettingsError(
            f"AEGIS_REPLICA_ID must be 1 to {REPLICA_ID_MAX_CHARS} printable characters without "
            "surrounding spaces (e.g. the pod or host name), or unset"
        )
    return value


def _blob_store(text: str) -> BlobStoreTarget:
    try:
        return parse_blob_store(text)
    except ValueError as exc:
        raise SettingsError(str(exc)) from exc


def _xds_settings(values: Mapping[str, str], server: ServerSettings) -> XdsSettings:
    hold = _non_negative_float(values, "AEGIS_XDS_HOLD_SECONDS", 5.0)
    timeout_ms = _positive_int(values, "AEGIS_XDS_RDS_REQUEST_TIMEOUT_MS", 10000)
    if hold * 1000 >= timeout_ms:
        raise SettingsError(
            f"AEGIS_XDS_HOLD_SECONDS ({hold}) must be shorter than Envoy's request_timeout "
            f"({timeout_ms} ms), or every held poll fails"
        )
    listen_text = values.get("AEGIS_XDS_LISTEN", "")
    listen = parse_listen(listen_text, "AEGIS_XDS_LISTEN") if listen_text else None
    if listen is not None and listen[1] != 0 and listen == (server.host, server.port):
        raise SettingsError(
            "AEGIS_XDS_LISTEN must differ from AEGIS_LISTEN: unset it to serve xDS on the API listener"
        )
    try:
        credentials = NodeCredentials.parse(_secret(values, "AEGIS_XDS_NODE_TOKENS"))
    except NodeTokenConfigError as exc:
        raise SettingsError(str(exc)) from exc
    grpc_listen = _grpc_listen(values, server, listen)
    return XdsSettings(
        hold_seconds=hold,
        node_stale_seconds=_non_negative_float(values, "AEGIS_XDS_NODE_STALE_SECONDS", 30.0),
        rds_refresh_delay_ms=_positive_int(values, "AEGIS_XDS_RDS_REFRESH_DELAY_MS", 250),
        rds_request_timeout_ms=timeout_ms,
        validate=values.get("AEGIS_XDS_VALIDATE", "true").lower() not in ("0", "false", "no", "off"),
        listen=listen,
        node_credentials=credentials,
        max_nodes=_positive_int(values, "AEGIS_XDS_MAX_NODES", DEFAULT_MAX_NODES),
        grpc_listen=grpc_listen,
        grpc_tls=_grpc_tls(values),
        static_endpoints=_static_endpoints(values.get("AEGIS_STATIC_ENDPOINTS", "")),
    )


def _notification_settings(values: Mapping[str, str]) -> NotificationSettings:
    try:
        webhooks = parse_webhooks(values.get("AEGIS_NOTIFY_WEBHOOKS", ""))
    except NotifySettingError as exc:
        raise SettingsError(str(exc)) from None
    key = _secret(values, "AEGIS_NOTIFY_SIGNING_KEY")
    return NotificationSettings(
        webhooks=webhooks,
        signing_key=key.encode() if key else None,
        max_attempts=_positive_int(values, "AEGIS_NOTIFY_MAX_ATTEMPTS", 6),
        retry_seconds=_positive_float(values, "AEGIS_NOTIFY_RETRY_SECONDS", 1.0),
        queue_size=_positive_int(values, "AEGIS_NOTIFY_QUEUE_SIZE", 1000),
    )


def _static_endpoints(text: str) -> StaticEndpoints:
    try:
        return parse_static_endpoints(text)
    except StaticEndpointError as exc:
        raise SettingsError(str(exc)) from None


def _grpc_listen(
    values: Mapping[str, str], server: ServerSettings, rest_listen: tuple[str, int] | None
) -> tuple[str, int] | None:
    text = values.get("AEGIS_XDS_GRPC_LISTEN", "") or DEFAULT_XDS_GRPC_LISTEN
    if text.strip().lower() == "off":
        return None
    listen = parse_listen(text, "AEGIS_XDS_GRPC_LISTEN")
    for other, name in (((server.host, server.port), "AEGIS_LISTEN"), (rest_listen, "AEGIS_XDS_LISTEN")):
        if listen[1] != 0 and listen == other:
            raise SettingsError(
                f"AEGIS_XDS_GRPC_LISTEN must differ from {name}: gRPC ADS needs a listener of its own "
                "(or set it to 'off')"
            )
    return listen


def _grpc_tls(values: Mapping[str, str]) -> GrpcTls | None:
    """AEGIS_XDS_GRPC_TLS_CERT + _KEY (PEM files), and _CLIENT_CA for mutual TLS."""
    cert, key, ca = (
        values.get(f"AEGIS_XDS_GRPC_TLS_{part}", "") for part in ("CERT", "KEY", "CLIENT_CA")
    )
    if not (cert or key or ca):
        return None
    if not (cert and key):
        if cert:
            problem = "AEGIS_XDS_GRPC_TLS_CERT is set without AEGIS_XDS_GRPC_TLS_KEY"
        elif key:
            problem = "AEGIS_XDS_GRPC_TLS_KEY is set without AEGIS_XDS_GRPC_TLS_CERT"
        else:
            problem = "AEGIS_XDS_GRPC_TLS_CLIENT_CA is set without AEGIS_XDS_GRPC_TLS_CERT and _KEY"
        raise SettingsError(
            f"{problem}: TLS on the gRPC listener needs the server's certificate and key "
            "(PEM files); mutual TLS adds AEGIS_XDS_GRPC_TLS_CLIENT_CA"
        )
    try:
        return check_server_tls(
            _pem_file(cert, "AEGIS_XDS_GRPC_TLS_CERT"),
            _pem_file(key, "AEGIS_XDS_GRPC_TLS_KEY"),
            _pem_file(ca, "AEGIS_XDS_GRPC_TLS_CLIENT_CA") if ca else None,
        )
    except TlsConfigError as exc:
        raise SettingsError(str(exc)) from exc


def _pem_file(path: str, name: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise SettingsError(f"{name}={path!r} cannot be read: {exc.strerror}") from exc


def _non_negative_float(values: Mapping[str, str], name: str, default: float) -> float:
    raw = values.get(name)
    if raw is None or raw == "":
        return default
    try:
        number = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number") from None
    if number < 0:
        raise SettingsError(f"{name} must not be negative, not {number}")
    return number


def _positive_float(values: Mapping[str, str], name: str, default: float) -> float:
    number = _non_negative_float(values, name, default)
    if number == 0:
        raise SettingsError(f"{name} must be positive, not 0")
    return number


def parse_listen(value: str, name: str) -> tuple[str, int]:
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise SettingsError(f"{name}={value!r} is not host:port (e.g. 127.0.0.1:8080)")
    return host.strip("[]"), int(port_text)


WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", "*"})


def _public_url(configured: str, host: str, port: int) -> tuple[str, bool]:
    """AEGIS_PUBLIC_URL checked, or `http://<listen address>`; True when that is a guess.

    A wildcard listen address names no host a client can use; the machine's hostname is
    the best guess (it is what other hosts and containers usually resolve), and start-up
    warns that AEGIS_PUBLIC_URL should say it.
    """
    if not configured:
        guessed = host in WILDCARD_HOSTS
        name = socket.gethostname() if guessed else host
        return f"http://{f'[{name}]' if ':' in name else name}:{port}", guessed
    parsed = urllib.parse.urlsplit(configured)
    problem = None
    if parsed.scheme not in ("http", "https"):
        problem = "must start with http:// or https://"
    elif not parsed.hostname:
        problem = "has no host"
    elif parsed.username is not None or parsed.password is not None:
        problem = "must not carry credentials"
    elif parsed.query or parsed.fragment or configured.endswith(("?", "#")):
        problem = "must not have a query or a fragment"
    else:
        try:
            parsed.port  # noqa: B018 - raises ValueError on a port that is not a number
        except ValueError:
            problem = "has a port that is not a number from 0 to 65535"
    if problem is not None:
        shown = "" if parsed.password is not None else f"={configured!r}"  # never echo a password
        raise SettingsError(
            f"AEGIS_PUBLIC_URL{shown} {problem}; give the URL clients reach Aegis at, "
            "e.g. https://aegis.example.com or http://10.0.0.5:8080"
        )
    return configured.rstrip("/"), False


def url_signing_key(settings: Settings) -> bytes:
    """The configured URL key, or one kept in the data directory so URLs survive a restart."""
    if settings.security.url_signing_key:
        return settings.security.url_signing_key
    return kept_secret(settings.server.data_dir / "url-signing.key").encode()


def kept_secret(path: Path) -> str:
    """A random secret kept in `path` (mode 0600), made on first use so it survives restarts."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


def _secret(values: Mapping[str, str], name: str) -> str:
    """A secret from NAME, or from the file named by NAME_FILE."""
    direct = values.get(name, "")
    file_name = values.get(f"{name}_FILE", "")
    if direct or not file_name:
        return direct
    try:
        return Path(file_name).read_text().strip()
    except OSError as exc:
        raise SettingsError(f"{name}_FILE names a file that cannot be read: {exc.strerror}") from exc


def _read_config_file(path: Path) -> dict[str, str]:
    try:
        document: Any = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise SettingsError(f"config file {path} cannot be read: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise SettingsError(f"config file {path} is not valid YAML: {exc}") from exc
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise SettingsError(f"config file {path} must be a mapping of AEGIS_* settings")
    unknown = [key for key in document if not str(key).startswith("AEGIS_")]
    if unknown:
        raise SettingsError(f"config file {path}: unknown settings {unknown}; keys are AEGIS_* names")
    # A list or mapping (AEGIS_STATIC_ENDPOINTS) travels as JSON, as it would in the environment.
    return {
        str(key): json.dumps(value) if isinstance(value, list | dict) else str(value)
        for key, value in document.items()
    }


def _database_url(url: str) -> str:
    # Accept the URLs people paste, and pick the async driver for them.
    for plain, async_form in (
        ("postgresql://", "postgresql+asyncpg://"),
        ("postgres://", "postgresql+asyncpg://"),
        ("sqlite:///", "sqlite+aiosqlite:///"),
    ):
        if url.startswith(plain):
            return async_form + url[len(plain):]
    if url and not url.startswith(("postgresql+asyncpg://", "sqlite+aiosqlite://")):
        raise SettingsError(
            "AEGIS_DATABASE_URL must be a sqlite:/// or postgresql:// URL"
        )
    return url


def _positive_int(values: Mapping[str, str], name: str, default: int) -> int:
    raw = values.get(name)
    if raw is None or raw == "":
        return default
    try:
        number = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not an integer") from None
    if number <= 0:
        raise SettingsError(f"{name} must be positive, not {number}")
    return number


def _optional_path(value: str | None) -> Path | None:
    return Path(value) if value else None
