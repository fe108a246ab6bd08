"""The reference model server against the real Aegis app: download, verify, refuse, serve, announce.

One test sends announcements to a stub (`ControlPlaneStub`) that fails on demand,
to show failures are retried; it forwards everything else to the real app.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer, unused_port
from prometheus_client.parser import text_string_to_metric_families

from controlplane.settings import Settings
from modelserver.errors import ArtifactRejected, ArtifactUnavailable
from modelserver.faults import Faults
from modelserver.server import RunningModelServer, start_model_server
from modelserver.settings import ModelServerSettings
from registry.signing import keyring_from_env
from tests.conftest import SIGN_KEY, TOKENS, auth
from tests.integration.conftest import sha256_hex, upload_form

MODEL, VERSION = "fraud-model", "1.4.0"
ARTIFACT = b"gradient-boosted-trees " * 20_000  # ~460 KB: several chunks on the wire
ADMIN_TOKEN = "model-server-admin-token-123"
REPO_ROOT = Path(__file__).resolve().parents[2]

StartClient = Callable[[Settings], Awaitable[TestClient[Any, Any]]]


def expected_score(checksum: str, instance: Any) -> float:
    """The documented formula, computed here rather than by the code under test."""
    canonical = json.dumps(instance, sort_keys=True, separators=(",", ":"))
    return int.from_bytes(hashlib.sha256((checksum + canonical).encode()).digest()[:8], "big") / 2**64


@dataclass
class Aegis:
    client: TestClient[Any, Any]
    settings: Settings

    @property
    def url(self) -> str:
        return str(self.client.make_url("")).rstrip("/")

    async def register(self, data: bytes = ARTIFACT, version: str = VERSION) -> dict[str, Any]:
        form = upload_form({"model_name": MODEL, "version": version}, data)
        response = await self.client.post("/v1/registry/register", data=form, headers=auth("admin"))
        assert response.status == 201, await response.text()
        document: dict[str, Any] = await response.json()
        return document

    def blob_path(self, checksum: str) -> Path:
        return self.settings.server.data_dir / "blobs" / "sha256" / checksum[:2] / checksum


@pytest.fixture
async def aegis(start_client: StartClient, make_settings: Callable[..., Settings]) -> Aegis:
    settings = make_settings()
    return Aegis(await start_client(settings), settings)


@dataclass
class EndpointCall:
    method: str
    body: dict[str, Any]
    authorization: str | None


@dataclass
class ControlPlaneStub:
    """Records /v1/endpoints calls (the first `failures` answered 503); forwards the rest to Aegis."""

    upstream: str
    failures: int = 0
    calls: list[EndpointCall] = field(default_factory=list)
    url: str = ""

    async def endpoints(self, request: web.Request) -> web.Response:
        call = EndpointCall(request.method, await request.json(), request.headers.get("Authorization"))
        self.calls.append(call)
        if len(self.calls) <= self.failures:
            return web.json_response({"error": {"code": "unavailable", "message": "restarting"}}, status=503)
        return web.json_response({"status": "ok"})

    async def forward(self, request: web.Request) -> web.Response:
        headers = {k: v for k, v in request.headers.items() if k in ("Authorization", "Content-Type")}
        async with aiohttp.ClientSession() as session, session.request(
            request.method, self.upstream + request.path_qs, headers=headers, data=await request.read()
        ) as answer:
            body = await answer.read()
            return web.Response(status=answer.status, body=body, content_type=answer.content_type)


async def eventually(condition: Callable[[], Awaitable[bool]], *, within_seconds: float = 10.0) -> None:
    deadline = time.monotonic() + within_seconds
    while not await condition():
        assert time.monotonic() < deadline, f"not true within {within_seconds}s"
        await asyncio.sleep(0.05)


@pytest.fixture
async def control_plane(aegis: Aegis) -> AsyncIterator[ControlPlaneStub]:
    stub = ControlPlaneStub(aegis.url)
    app = web.Application()
    app.router.add_route("*", "/v1/endpoints", stub.endpoints)
    app.router.add_route("*", "/{tail:.*}", stub.forward)
    server = TestServer(app)
    await server.start_server()
    stub.url = str(server.make_url("")).rstrip("/")
    yield stub
    await server.close()


StartModelServer = Callable[..., Awaitable[RunningModelServer]]


@pytest.fixture
async def start_server(tmp_path: Path) -> AsyncIterator[StartModelServer]:
    """Start model servers in-process on free ports; each is closed at the end of the test."""
    started: list[RunningModelServer] = []

    async def start(
        registry_url: str, *, sign_key: str = SIGN_KEY, admin_token: str | None = ADMIN_TOKEN,
        faults: Faults | None = None, ttl_seconds: int = 10,
    ) -> RunningModelServer:
        settings = ModelServerSettings(
            MODEL, VERSION, port=0, registry_url=registry_url, token=TOKENS["operator"],
            ttl_seconds=ttl_seconds, faults=faults or Faults(), data_dir=tmp_path / "model-server",
            admin_token=admin_token,
        )
        keyring = keyring_from_env({"AEGIS_MODEL_SIGN_KEY": sign_key})
        server = await start_model_server(settings, keyring=keyring)
        started.append(server)
        return server

    yield start
    for server in started:
        await server.close()


def counts_by_code(metrics_text: str) -> dict[str, float]:
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == "aegis_model_requests_total":
                assert (sample.labels["model"], sample.labels["version"]) == (MODEL, VERSION)
                counts[sample.labels["code"]] = sample.value
    return counts


def sample_value(metrics_text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    raise AssertionError(f"no sample {name} {labels}")


async def test_a_verified_server_answers_kserve_v1_and_v2_from_its_artifact(
    aegis: Aegis, start_server: StartModelServer
) -> None:
    document = await aegis.register()
    checksum = sha256_hex(ARTIFACT)
    server = await start_server(aegis.url)
    assert server.artifact.path.read_bytes() == ARTIFACT
    async with aiohttp.ClientSession(server.url) as http:
        health = await http.get("/healthz")
        assert await health.json() == {
            "status": "ok", "model": MODEL, "version": VERSION, "checksum": checksum,
        }

        instances = [{"amount": 12.5, "country": "fr"}, {"amount": 9000, "country": "de"}]
        v1 = await http.post(f"/v1/models/{MODEL}:predict", json={"instances": instances})
        assert v1.status == 200
        assert v1.headers["x-model-version"] == VERSION
        assert await v1.json() == {
            "model_name": MODEL, "model_version": VERSION,
            "predictions": [expected_score(document["checksum"], i) for i in instances],
        }

        tensor = {"name": "amount", "shape": [2, 1], "datatype": "FP32", "data": [12.5, 9000]}
        v2 = await http.post(f"/v2/models/{MODEL}/infer", json={"id": "req-7", "inputs": [tensor]})
        assert v2.status == 200
        assert v2.headers["x-model-version"] == VERSION
        answer = await v2.json()
        assert (answer["model_name"], answer["model_version"], answer["id"]) == (MODEL, VERSION, "req-7")
        assert answer["outputs"] == [{
            "name": "score", "datatype": "FP64", "shape": [2],
            "data": [
                expected_score(checksum, {"amount": [12.5]}), expected_score(checksum, {"amount": [9000]}),
            ],
        }]

        wrong_model = await http.post("/v1/models/other-model:predict", json={"instances": [1]})
        assert wrong_model.status == 404
        assert wrong_model.headers["x-model-version"] == VERSION
        message = (await wrong_model.json())["error"]["message"]
        assert "serves model 'fraud-model', not 'other-model'" in message
        malformed = await http.post(f"/v2/models/{MODEL}/infer", data=b"{not json")
        assert malformed.status == 400
        assert (await malformed.json())["error"]["code"] == "malformed_request"
        no_instances = await http.post(f"/v1/models/{MODEL}:predict", json={"inputs": [1]})
        assert no_instances.status == 400
        assert "instances" in (await no_instances.json())["error"]["message"]

        metrics = await (await http.get("/metrics")).text()
        assert counts_by_code(metrics) == {"200": 2.0, "404": 1.0, "400": 2.0}
        assert sample_value(metrics, "aegis_model_request_duration_seconds_count", model=MODEL) == 5.0
        assert sample_value(
            metrics, "aegis_model_quality", model=MODEL, version=VERSION, metric="top_k_recall"
        ) == pytest.approx(0.95)


async def test_two_versions_answer_differently_for_the_same_input(
    aegis: Aegis, start_server: StartModelServer
) -> None:
    await aegis.register()
    first = await start_server(aegis.url)
    await aegis.register(b"retrained weights", version="1.5.0")
    async with aiohttp.ClientSession() as http:
        answer = await http.post(f"{first.url}/v1/models/{MODEL}:predict", json={"instances": [[1, 2]]})
        v1 = await answer.json()
    assert v1["predictions"] == [expected_score(sha256_hex(ARTIFACT), [1, 2])]
    assert v1["predictions"] != [expected_score(sha256_hex(b"retrained weights"), [1, 2])]


async def test_a_tampered_blob_is_refused_before_anything_is_served(
    aegis: Aegis, start_server: StartModelServer, tmp_path: Path
) -> None:
    document = await aegis.register()
    tampered = b"backdoored " + ARTIFACT
    aegis.blob_path(document["checksum"]).write_bytes(tampered)
    with pytest.raises(ArtifactRejected) as refused:
        await start_server(aegis.url)
    assert str(refused.value) == (
        f"checksum mismatch: registry says {document['checksum']}, "
        f"downloaded bytes hash to {sha256_hex(tampered)}"
    )
    assert list((tmp_path / "model-server").iterdir()) == []  # the rejected download is gone


async def test_an_artifact_signed_with_another_key_is_refused(
    aegis: Aegis, start_server: StartModelServer
) -> None:
    await aegis.register()
    with pytest.raises(ArtifactRejected, match="signature does not verify with key 'legacy'") as refused:
        await start_server(aegis.url, sign_key="not-the-registry-key")
    assert "not-the-registry-key" not in str(refused.value)


async def test_a_version_the_registry_does_not_have_is_refused_with_the_registry_message(
    aegis: Aegis, start_server: StartModelServer
) -> None:
    with pytest.raises(ArtifactUnavailable, match=f"GET /v1/registry/{MODEL}/{VERSION} answered 404"):
        await start_server(aegis.url)


async def test_faults_change_at_run_time_and_show_in_the_metrics(
    aegis: Aegis, start_server: StartModelServer
) -> None:
    await aegis.register()
    server = await start_server(aegis.url)
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    predict = f"/v1/models/{MODEL}:predict"
    async with aiohttp.ClientSession(server.url) as http:
        broken = await http.post("/admin/faults", json={"error_rate": 1.0, "quality": 0.42}, headers=admin)
        assert await broken.json() == {"error_rate": 1.0, "latency_ms": 0.0, "quality": 0.42}
        failed = [await http.post(predict, json={"instances": [i]}) for i in range(10)]
        assert [r.status for r in failed] == [500] * 10
        assert {r.headers["x-model-version"] for r in failed} == {VERSION}
        assert (await failed[0].json())["error"]["code"] == "injected_fault"

        healed = await http.post("/admin/faults", json={"error_rate": 0}, headers=admin)
        assert await healed.json() == {"error_rate": 0.0, "latency_ms": 0.0, "quality": 0.42}
        ok = [await http.post(predict, json={"instances": [i]}) for i in range(7)]
        assert [r.status for r in ok] == [200] * 7

        metrics = await (await http.get("/metrics")).text()
        assert counts_by_code(metrics) == {"500": 10.0, "200": 7.0}
        assert sample_value(metrics, "aegis_model_quality", metric="top_k_recall") == pytest.approx(0.42)
        current = await http.get("/admin/faults", headers=admin)
        assert await current.json() == {"error_rate": 0.0, "latency_ms": 0.0, "quality": 0.42}


async def test_added_latency_shows_in_the_duration_histogram(
    aegis: Aegis, start_server: StartModelServer
) -> None:
    await aegis.register()
    server = await start_server(aegis.url, faults=Faults(latency_ms=300))
    async with aiohttp.ClientSession(server.url) as http:
        assert (await http.post(f"/v1/models/{MODEL}:predict", json={"instances": [1]})).status == 200
        metrics = await (await http.get("/metrics")).text()
    bucket = "aegis_model_request_duration_seconds_bucket"
    # The sleep is a lower bound: the answer cannot have been faster than 300 ms.
    assert sample_value(metrics, bucket, le="0.25") == 0.0
    assert sample_value(metrics, bucket, le="+Inf") == 1.0


async def test_the_fault_switch_needs_the_admin_token_and_valid_values(
    aegis: Aegis, start_server: StartModelServer
) -> None:
    await aegis.register()
    server = await start_server(aegis.url)
    async with aiohttp.ClientSession(server.url) as http:
        assert (await http.post("/admin/faults", json={"error_rate": 1})).status == 401
        wrong = await http.post(
            "/admin/faults", json={"error_rate": 1}, headers={"Authorization": "Bearer nope"}
        )
        assert wrong.status == 401
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        for bad in ({"error_rate": 1.5}, {"latency_ms": -5}, {"quality": "high"}, {"error_rte": 0.5}):
            refused = await http.post("/admin/faults", json=bad, headers=admin)
            assert refused.status == 422, bad
            assert (await refused.json())["error"]["code"] == "invalid_input"
        assert await (await http.get("/admin/faults", headers=admin)).json() == Faults().as_document()
        assert (await http.post(f"/v1/models/{MODEL}:predict", json={"instances": [1]})).status == 200


async def test_without_an_admin_token_faults_are_fixed(aegis: Aegis, start_server: StartModelServer) -> None:
    await aegis.register()
    server = await start_server(aegis.url, admin_token=None, faults=Faults(error_rate=1.0))
    async with aiohttp.ClientSession(server.url) as http:
        refused = await http.post(
            "/admin/faults", json={"error_rate": 0}, headers={"Authorization": "Bearer x"}
        )
        assert refused.status == 403
        assert "set AEGIS_MODEL_SERVER_ADMIN_TOKEN" in (await refused.json())["error"]["message"]
        assert (await http.post(f"/v1/models/{MODEL}:predict", json={"instances": [1]})).status == 500


async def listed_endpoints(aegis: Aegis) -> list[tuple[str, str, str, int]]:
    response = await aegis.client.get("/v1/endpoints", headers=auth("viewer"))
    assert response.status == 200
    return [
        (e["model_name"], e["version"], e["address"], e["port"]) for e in (await response.json())["endpoints"]
    ]


async def test_aegis_lists_the_endpoint_while_the_server_runs_and_drops_it_on_close(
    aegis: Aegis, start_server: StartModelServer
) -> None:
    await aegis.register()
    server = await start_server(aegis.url)
    endpoint = (MODEL, VERSION, "127.0.0.1", server.port)

    async def listed() -> bool:
        return await listed_endpoints(aegis) == [endpoint]

    await eventually(listed)
    await server.close()
    assert await listed_endpoints(aegis) == []


async def test_registration_failures_are_retried_and_renewals_go_every_third_of_the_ttl(
    aegis: Aegis, control_plane: ControlPlaneStub, start_server: StartModelServer
) -> None:
    await aegis.register()
    control_plane.failures = 1  # the control plane is restarting when the server comes up
    server = await start_server(control_plane.url, ttl_seconds=1)

    async def renewed_twice_after_the_failure() -> bool:
        return len(control_plane.calls) >= 3

    await eventually(renewed_twice_after_the_failure)
    operator = f"Bearer {TOKENS['operator']}"
    identity = {"model_name": MODEL, "version": VERSION, "address": "127.0.0.1", "port": server.port}
    for call in control_plane.calls[:3]:
        assert call == EndpointCall("POST", {**identity, "ttl_seconds": 1}, operator)
    await server.close()
    assert control_plane.calls[-1] == EndpointCall("DELETE", identity, operator)
    assert [c.method for c in control_plane.calls].count("DELETE") == 1


def model_server_command(registry_url: str, port: int, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "controlplane.cli", "model-server", "--model", MODEL, "--version", VERSION,
        "--port", str(port), "--registry-url", registry_url, *extra,
    ]


def model_server_env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AEGIS_")}
    return {**env, "AEGIS_TOKEN": TOKENS["operator"], "AEGIS_MODEL_SIGN_KEY": SIGN_KEY, **overrides}


async def test_the_cli_exits_1_on_a_tampered_artifact(aegis: Aegis, tmp_path: Path) -> None:
    document = await aegis.register()
    aegis.blob_path(document["checksum"]).write_bytes(b"swapped")
    process = await asyncio.create_subprocess_exec(
        *model_server_command(aegis.url, unused_port(), "--data-dir", str(tmp_path / "ms")),
        env=model_server_env(), cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 1
    assert f"checksum mismatch: registry says {document['checksum']}" in stderr.decode()
    assert SIGN_KEY not in stderr.decode()


async def test_the_cli_serves_until_sigterm_then_withdraws_its_endpoint(aegis: Aegis) -> None:
    await aegis.register()
    port = unused_port()
    process = await asyncio.create_subprocess_exec(
        *model_server_command(aegis.url, port, "--ttl-seconds", "30"),
        env=model_server_env(), cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )

    async def announced() -> bool:
        return await listed_endpoints(aegis) == [(MODEL, VERSION, "127.0.0.1", port)]

    try:
        await eventually(announced, within_seconds=30)
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{port}/v1/models/{MODEL}:predict"
            answer = await http.post(url, json={"instances": [1]})
            assert answer.status == 200
            assert answer.headers["x-model-version"] == VERSION
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, stderr.decode()
    # Withdrawn at once, not after its 30 s TTL.
    assert await listed_endpoints(aegis) == []
