"""The registry API against the running app, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from controlplane.settings import Settings
from tests.conftest import SIGN_KEY, auth
from tests.integration.conftest import Register, hmac_hex, sha256_hex, stored_files, upload_form

ARTIFACT = b"weights-v1" * 1000


async def test_registration_returns_a_signed_staging_version(register: Register) -> None:
    response = await register("fraud-model", "1.0.0", ARTIFACT)
    assert response.status == 201
    document = await response.json()
    checksum = sha256_hex(ARTIFACT)
    assert document["checksum"] == checksum
    assert document["signature"] == hmac_hex(SIGN_KEY, "fraud-model", "1.0.0", checksum)
    assert document["key_id"] == "legacy"
    assert document["stage"] == "staging"
    assert document["size_bytes"] == len(ARTIFACT)
    history = document["metadata"]["_registry"]["promotion_history"]
    assert [h["to_stage"] for h in history] == ["staging"]
    assert history[0]["actor"] == "admin"


async def test_same_bytes_again_is_idempotent_and_other_bytes_conflict(
    register: Register, settings: Settings
) -> None:
    first = await (await register("m", "1", ARTIFACT)).json()
    again = await register("m", "1", ARTIFACT)
    assert again.status == 200
    assert await again.json() == first
    other = await register("m", "1", b"different bytes")
    assert other.status == 409
    assert "immutable" in (await other.json())["error"]["message"]
    assert stored_files(settings.server.data_dir) == [f"sha256/{first['checksum'][:2]}/{first['checksum']}"]


@pytest.mark.parametrize(
    ("model_name", "version"),
    [
        ("a|b", "1"), ("m", "1|2"), ("a/b", "1"), ("m", "../1"), ("..", "1"), ("m", ".."),
        ("", "1"), ("m", ""), ("x" * 129, "1"), ("m", "v" * 65), ("Upper", "1"), ("models", "1"),
    ],
)
async def test_bad_names_are_422_and_keep_nothing(
    register: Register, client: TestClient[Any, Any], settings: Settings, model_name: str, version: str
) -> None:
    response = await register(model_name, version, ARTIFACT)
    assert response.status == 422
    error = (await response.json())["error"]
    assert error["code"] == "invalid_input"
    assert "invalid" in error["message"] or "reserved" in error["message"]
    assert stored_files(settings.server.data_dir) == []
    listing = await client.get("/v1/registry/models", headers=auth("viewer"))
    assert (await listing.json())["models"] == []


async def test_checksum_and_signature_claims_must_match_the_bytes(
    register: Register, client: TestClient[Any, Any], settings: Settings
) -> None:
    wrong_checksum = await register("m", "1", ARTIFACT, checksum=sha256_hex(b"other"))
    assert wrong_checksum.status == 422
    assert "checksum mismatch" in (await wrong_checksum.json())["error"]["message"]
    forged = await register("m", "1", ARTIFACT, signature="ab" * 32, key_id="legacy")
    assert forged.status == 422
    assert "signature does not verify" in (await forged.json())["error"]["message"]
    unknown_key = await register("m", "1", ARTIFACT, signature="ab" * 32, key_id="nope")
    assert unknown_key.status == 422
    assert stored_files(settings.server.data_dir) == []
    assert (await client.get("/v1/registry/m", headers=auth("viewer"))).status == 404
    good = hmac_hex(SIGN_KEY, "m", "1", sha256_hex(ARTIFACT))
    signed = await register("m", "1", ARTIFACT, checksum=sha256_hex(ARTIFACT), signature=good)
    assert signed.status == 201
    assert (await signed.json())["signature"] == good


async def test_malformed_uploads_get_400_with_a_reason(
    client: TestClient[Any, Any], settings: Settings
) -> None:
    cases = [
        upload_form("{not json", ARTIFACT),
        upload_form("[1, 2]", ARTIFACT),
    ]
    for form in cases:
        response = await client.post("/v1/registry/register", data=form, headers=auth("admin"))
        assert response.status == 400, await response.text()
        assert "metadata part" in (await response.json())["error"]["message"]
    no_multipart = await client.post(
        "/v1/registry/register", json={"model_name": "m"}, headers=auth("admin")
    )
    assert no_multipart.status == 400
    assert "multipart" in (await no_multipart.json())["error"]["message"]
    assert stored_files(settings.server.data_dir) == []


async def test_oversized_upload_is_413_and_leaves_no_file(
    make_settings: Any, database_url: str, start_client: Any
) -> None:
    settings = make_settings(database_url, AEGIS_MAX_ARTIFACT_BYTES=4096)
    client = await start_client(settings)
    metadata = {"model_name": "m", "version": "1"}
    response = await client.post(
        "/v1/registry/register", data=upload_form(metadata, b"x" * 100_000), headers=auth("admin")
    )
    assert response.status == 413
    assert "AEGIS_MAX_ARTIFACT_BYTES" in (await response.json())["error"]["message"]
    assert stored_files(settings.server.data_dir) == []
    small = await client.post(
        "/v1/registry/register", data=upload_form(metadata, b"x" * 4096), headers=auth("admin")
    )
    assert small.status == 201


async def test_validate_detects_a_blob_altered_on_disk_and_promotion_is_refused(
    register: Register, client: TestClient[Any, Any], settings: Settings
) -> None:
    document = await (await register("m", "1", ARTIFACT)).json()
    ok = await (await client.get("/v1/registry/m/1/validate", headers=auth("viewer"))).json()
    assert ok == {
        "valid": True, "checksum_ok": True, "signature_ok": True, "checksum": document["checksum"],
        "actual_checksum": document["checksum"], "key_id": "legacy", "problems": [],
    }
    blob = settings.server.data_dir / "blobs" / "sha256" / document["checksum"][:2] / document["checksum"]
    blob.write_bytes(b"tampered" + ARTIFACT)
    response = await client.get("/v1/registry/m/1/validate", headers=auth("viewer"))
    assert response.status == 200
    report = await response.json()
    assert report["valid"] is False
    assert report["checksum_ok"] is False
    assert report["signature_ok"] is True
    refused = await promote(client, "1", "canary")
    assert refused.status == 409
    assert "fails validation" in (await refused.json())["error"]["message"]
    blob.unlink()
    missing = await (await client.get("/v1/registry/m/1/validate", headers=auth("viewer"))).json()
    assert missing["valid"] is False
    assert "missing" in missing["problems"][0]


async def promote(client: TestClient[Any, Any], version: str, stage: str, **extra: Any) -> Any:
    return await client.post(
        f"/v1/registry/m/{version}/promote", json={"stage": stage, **extra}, headers=auth("operator")
    )


async def stages_of(client: TestClient[Any, Any]) -> dict[str, str]:
    model = await (await client.get("/v1/registry/m", headers=auth("viewer"))).json()
    return {v["version"]: v["stage"] for v in model["versions"]}


async def test_stages_move_staging_canary_prod_and_archive_the_old_prod(
    register: Register, client: TestClient[Any, Any]
) -> None:
    for version in ("1", "2", "3"):
        await register("m", version, version.encode() * 100)
    assert (await promote(client, "1", "prod")).status == 200
    assert (await promote(client, "2", "canary", reason="try v2")).status == 200
    second_canary = await promote(client, "3", "canary")
    assert second_canary.status == 409
    assert "already has canary 2" in (await second_canary.json())["error"]["message"]
    assert (await promote(client, "2", "prod")).status == 200
    assert await stages_of(client) == {"1": "archived", "2": "prod", "3": "staging"}
    model = await (await client.get("/v1/registry/m", headers=auth("viewer"))).json()
    assert model["stages"] == {"prod": "2", "canary": None}
    history = model["versions"][1]["metadata"]["_registry"]["promotion_history"]
    assert [(h["from_stage"], h["to_stage"], h["actor"]) for h in history] == [
        ("staging", "staging", "admin"), ("staging", "canary", "operator"), ("canary", "prod", "operator"),
    ]
    assert history[1]["reason"] == "try v2"
    bad_stage = await promote(client, "3", "production")
    assert bad_stage.status == 422


async def test_rollback_returns_canary_to_staging_then_prod_to_the_previous_prod(
    register: Register, client: TestClient[Any, Any]
) -> None:
    for version in ("1", "2", "3"):
        await register("m", version, version.encode() * 100)
    await promote(client, "1", "prod")
    await promote(client, "2", "prod")
    await promote(client, "3", "canary")
    rollback = await client.post("/v1/registry/m/rollback", json={"reason": "bad"}, headers=auth("operator"))
    assert rollback.status == 200
    assert await stages_of(client) == {"1": "archived", "2": "prod", "3": "staging"}
    await client.post("/v1/registry/m/rollback", headers=auth("operator"))
    assert await stages_of(client) == {"1": "prod", "2": "archived", "3": "staging"}
    nothing_left = await client.post("/v1/registry/m/rollback", headers=auth("operator"))
    assert nothing_left.status == 409
    assert "no earlier prod" in (await nothing_left.json())["error"]["message"]
    unknown = await client.post("/v1/registry/nope/rollback", headers=auth("operator"))
    assert unknown.status == 404


async def test_ten_concurrent_canary_promotions_have_exactly_one_winner(
    register: Register, client: TestClient[Any, Any]
) -> None:
    versions = [str(n) for n in range(10)]
    for version in versions:
        assert (await register("m", version, f"artifact {version}".encode())).status == 201
    responses = await asyncio.gather(*(promote(client, v, "canary") for v in versions))
    statuses = sorted(r.status for r in responses)
    assert statuses == [200] + [409] * 9
    stages = await stages_of(client)
    assert list(stages.values()).count("canary") == 1


async def test_data_survives_a_restart(
    register: Register, client: TestClient[Any, Any], settings: Settings, start_client: Any
) -> None:
    await register("m", "1", ARTIFACT)
    await promote(client, "1", "prod")
    before = await (await client.get("/v1/registry/m/1", headers=auth("viewer"))).json()
    await client.close()
    restarted = await start_client(settings)
    after = await restarted.get("/v1/registry/m/1", headers=auth("viewer"))
    assert await after.json() == before
    download = await restarted.get("/v1/registry/m/1/artifact", headers=auth("viewer"))
    assert await download.read() == ARTIFACT


async def test_a_200_mib_upload_round_trips(register: Register, client: TestClient[Any, Any]) -> None:
    artifact = os.urandom(1 << 20) * 200
    response = await register("big", "1", artifact)
    assert response.status == 201
    assert (await response.json())["checksum"] == sha256_hex(artifact)
    download = await client.get("/v1/registry/big/1/artifact", headers=auth("viewer"))
    assert download.headers["X-Aegis-Checksum-Sha256"] == sha256_hex(artifact)
    assert sha256_hex(await download.read()) == sha256_hex(artifact)


async def test_signed_download_urls_work_without_a_token_until_expired_or_altered(
    register: Register, client: TestClient[Any, Any]
) -> None:
    await register("m", "1", ARTIFACT)
    assert (await client.get("/v1/registry/m/1/artifact")).status == 401
    signed = await (await client.post("/v1/registry/m/1/artifact-url", headers=auth("viewer"))).json()
    assert signed["checksum"] == sha256_hex(ARTIFACT)
    path = signed["url"][signed["url"].index("/v1/"):]
    response = await client.get(path)
    assert response.status == 200
    assert await response.read() == ARTIFACT
    altered = path.replace("/m/1/", "/m/2/")
    assert (await client.get(altered)).status == 403
    tampered_sig = path[:-4] + ("0000" if not path.endswith("0000") else "1111")
    assert (await client.get(tampered_sig)).status == 403
    later_expiry = path.replace("expires=", "expires=9")
    assert (await client.get(later_expiry)).status == 403
    short = await (
        await client.post("/v1/registry/m/1/artifact-url", json={"ttl_seconds": 1}, headers=auth("viewer"))
    ).json()
    await asyncio.sleep(2.1)
    expired = await client.get(short["url"][short["url"].index("/v1/"):])
    assert expired.status == 403
    assert "expired" in (await expired.json())["error"]["message"]


async def test_metrics_count_registrations_and_promotions(
    register: Register, client: TestClient[Any, Any]
) -> None:
    await register("m", "1", ARTIFACT)
    await register("m", "1", ARTIFACT)
    await promote(client, "1", "prod")
    text = await (await client.get("/metrics")).text()
    assert 'aegis_registry_registrations_total{outcome="created"} 1.0' in text
    assert 'aegis_registry_registrations_total{outcome="already_registered"} 1.0' in text
    assert 'aegis_registry_promotions_total{action="promote",stage="prod"} 1.0' in text
    assert "process_resident_memory_bytes" in text
    assert SIGN_KEY not in text


async def test_unknown_models_and_versions_are_404_with_a_hint(client: TestClient[Any, Any]) -> None:
    for path in ("/v1/registry/nope", "/v1/registry/nope/1", "/v1/registry/nope/1/validate"):
        response = await client.get(path, headers=auth("viewer"))
        assert response.status == 404
        assert "GET /v1/registry" in (await response.json())["error"]["message"]
    traversal = await client.get("/v1/registry/m/..%2F..%2Fetc/validate", headers=auth("viewer"))
    assert traversal.status in (404, 422)


async def test_stage_changes_are_announced_after_commit(
    register: Register, client: TestClient[Any, Any]
) -> None:
    from registry.api import SERVICE

    seen: list[tuple[str, str, str]] = []

    async def listener(changes: list[Any]) -> None:
        seen.extend((c.version, c.from_stage.value, c.to_stage.value) for c in changes)

    client.app[SERVICE].on_stage_change(listener)
    await register("m", "1", ARTIFACT)
    await register("m", "2", ARTIFACT + b"2")
    await promote(client, "1", "prod")
    await promote(client, "2", "canary")
    assert seen == [("1", "staging", "prod"), ("2", "staging", "canary")]


