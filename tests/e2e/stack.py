"""A whole Aegis deployment on free local ports: `aegis serve`, Envoy and reference model servers.

Envoy runs the shipped ADS bootstrap (envoy/envoy.yaml) against Aegis's gRPC port by
default; `transport` picks delta ADS or the REST bootstrap (envoy/envoy-rest.yaml).

Synchronous on purpose: a stack outlives a test's event loop, and every piece is a
real process stopped by PID.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from controlplane.demo.processes import start_model_server
from tests.conftest import API_TOKENS, SIGN_KEY, TOKENS
from tests.processes import AegisServer, Envoy, XdsTransport, free_port, stop


class ApiError(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status = status


class AegisApi:
    """The API calls tests make against a running `aegis serve`."""

    def __init__(self, aegis: AegisServer) -> None:
        self.aegis = aegis

    def api(self, method: str, path: str, body: Any = None, *, role: str = "admin") -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.aegis.url + path,
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {TOKENS[role]}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise ApiError(exc.code, exc.read().decode()) from None

    def register(
        self, model: str, version: str, artifact: bytes, *, metadata: dict[str, Any] | None = None
    ) -> None:
        boundary = "aegis-e2e-boundary"
        claims: dict[str, Any] = {"model_name": model, "version": version}
        if metadata is not None:
            claims["metadata"] = metadata
        metadata_part = json.dumps(claims)
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="metadata"\r\n'
                f"Content-Type: application/json\r\n\r\n{metadata_part}\r\n"
                f'--{boundary}\r\nContent-Disposition: form-data; name="artifact"; filename="model.bin"\r\n'
                f"Content-Type: application/octet-stream\r\n\r\n"
            ).encode()
            + artifact
            + f"\r\n--{boundary}--\r\n".encode()
        )
        request = urllib.request.Request(
            self.aegis.url + "/v1/registry/register",
            data=body,
            method="POST",
            headers={
                "Authorization": f"Bearer {TOKENS['admin']}",
                "Content-Type": f"multipart/form-data; boundary={boundary}",
            },
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status in (200, 201)

    def promote(self, model: str, version: str, stage: str) -> None:
        self.api("POST", f"/v1/registry/{model}/{version}/promote", {"stage": stage}, role="operator")

    def set_traffic(self, model: str, weights: dict[str, int], **extra: Any) -> dict[str, Any]:
        document: dict[str, Any] = self.api(
            "PUT", f"/v1/traffic/{model}", {"weights": weights, **extra}, role="operator"
        )
        return document

    def wait_acked(self, model: str, *, timeout: float = 30) -> dict[str, Any]:
        """Until every live Envoy runs the routes that carry the model's current weights."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            document: dict[str, Any] = self.api("GET", f"/v1/traffic/{model}", role="viewer")
            if document["acked"] and document["nodes_total"] >= 1:
                return document
            time.sleep(0.05)
        raise TimeoutError(f"traffic for {model} not acknowledged: {document}")


# Envoy's xDS node token in every stack: the shipped bootstrap sends it, Aegis requires it.
NODE_TOKEN = "e2e-xds-node-token"


class Stack(AegisApi):
    def __init__(
        self,
        root: Path,
        *,
        hold_seconds: float = 5.0,
        xds_listener: bool = False,
        node_tokens: bool = True,
        transport: XdsTransport = XdsTransport.ADS,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.root = root
        self.transport = transport
        self.hold_seconds = hold_seconds
        self.listener_port = free_port()
        # With xds_listener, discovery is served on its own port (AEGIS_XDS_LISTEN), not the API's.
        self.xds_port: int | None = free_port() if xds_listener else None
        super().__init__(
            AegisServer(
                {
                    "AEGIS_DATA_DIR": str(root / "aegis"),
                    "AEGIS_API_TOKENS": API_TOKENS,
                    "AEGIS_MODEL_SIGN_KEY": SIGN_KEY,
                    "AEGIS_ENVOY_LISTENER": f"127.0.0.1:{self.listener_port}",
                    "AEGIS_XDS_HOLD_SECONDS": str(hold_seconds),
                    "AEGIS_XDS_NODE_STALE_SECONDS": "15",
                    **({"AEGIS_XDS_NODE_TOKENS": f"*:{NODE_TOKEN}"} if node_tokens else {}),
                    **({"AEGIS_XDS_LISTEN": f"127.0.0.1:{self.xds_port}"} if self.xds_port else {}),
                    **(extra_env or {}),
                }
            )
        )
        self.envoy: Envoy | None = None
        self.model_servers: dict[tuple[str, str], subprocess.Popen[bytes]] = {}

    @property
    def gateway(self) -> str:
        return f"http://127.0.0.1:{self.listener_port}"

    def start(self) -> Stack:
        self.aegis.start()
        self.envoy = Envoy(
            self.root / "envoy",
            xds_port=self.aegis.xds_port(self.transport),
            node_token=NODE_TOKEN,
            transport=self.transport,
        ).start()
        return self

    def close(self) -> None:
        for process in self.model_servers.values():
            stop(process)
        if self.envoy is not None:
            self.envoy.stop()
        self.aegis.stop()

    # --- model servers ---------------------------------------------------------

    def start_model_server(self, model: str, version: str, *, ttl: int = 3, **faults: float) -> int:
        return self._start_model_server(model, version, free_port(), ttl=ttl, faults=faults)

    def _start_model_server(
        self, model: str, version: str, port: int, *, ttl: int, faults: dict[str, float]
    ) -> int:
        self.model_servers[(model, version)] = start_model_server(
            aegis_url=self.aegis.url,
            token=TOKENS["operator"],
            sign_key=SIGN_KEY,
            model=model,
            version=version,
            port=port,
            workdir=self.root,
            ttl_seconds=ttl,
            faults=faults,
        )
        self.wait_endpoint(model, version, port)
        return port

    def wait_endpoint(self, model: str, version: str, port: int, *, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            listed = self.api("GET", "/v1/endpoints", role="viewer")["endpoints"]
            if any((e["model_name"], e["version"], e["port"]) == (model, version, port) for e in listed):
                return
            time.sleep(0.05)
        raise TimeoutError(f"{model} {version} never announced its endpoint")

    def kill_model_server(self, model: str, version: str) -> None:
        stop(self.model_servers.pop((model, version)), sig=signal.SIGKILL)
