"""The console over HTTP without a browser: roles as the API has them, CSRF, cookies, sessions ending.

The real app on SQLite through aiohttp's client; the browser tests (tests/e2e) show the
same pages against a whole stack.
"""

from __future__ import annotations

import asyncio
import html
import logging
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from controlplane.settings import Settings
from tests.conftest import SIGN_KEY, TOKENS, auth
from tests.integration.conftest import hmac_hex, sha256_hex, upload_form

Client = TestClient[Any, Any]
PAGES = ("/ui/", "/ui/models/fraud", "/ui/alerts", "/ui/xds", "/ui/cluster")
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture
async def console(
    start_client: Callable[[Settings], Awaitable[Client]], make_settings: Callable[..., Settings]
) -> Client:
    client = await start_client(make_settings())
    artifact = b"weights" * 100
    checksum = sha256_hex(artifact)
    metadata = {
        "model_name": "fraud", "version": "1", "checksum": checksum,
        "signature": hmac_hex(SIGN_KEY, "fraud", "1", checksum), "metadata": {"owner": "<script>x</script>"},
    }
    answer = await client.post(
        "/v1/registry/register", data=upload_form(metadata, artifact), headers=auth("admin")
    )
    assert answer.status == 201, await answer.text()
    return client


async def sign_in(client: Client, role: str) -> str:
    """Sign in as `role` in this client's cookie jar; the session's CSRF token."""
    form = await client.get("/ui/sign-in")
    token = CSRF.search(await form.text())
    assert token is not None
    answer = await client.post(
        "/ui/sign-in", data={"csrf_token": token[1], "token": TOKENS[role]}, allow_redirects=False
    )
    assert answer.status == 303, await answer.text()
    page = await client.get("/ui/")
    found = CSRF.search(await page.text())
    assert found is not None
    return found[1]


async def test_without_a_session_pages_send_to_sign_in_and_actions_are_401(console: Client) -> None:
    for path in (*PAGES, "/ui/live/models"):
        answer = await console.get(path, allow_redirects=False)
        assert (answer.status, answer.headers.get("Location")) == (303, "/ui/sign-in"), path
    for path in ("/ui/models/fraud/rollout/abort", "/ui/sign-out"):
        answer = await console.post(path, data={"csrf_token": "x"})
        assert answer.status == 401, path
    # An API token in the header is no console session: the console signs in through its form.
    answer = await console.get("/ui/", headers=auth("admin"), allow_redirects=False)
    assert answer.status == 303


@pytest.mark.parametrize(("role", "action_status"), [("viewer", 403), ("operator", 404), ("admin", 404)])
async def test_each_role_sees_every_page_and_acts_as_the_api_allows(
    console: Client, role: str, action_status: int
) -> None:
    csrf = await sign_in(console, role)
    for path in PAGES:
        answer = await console.get(path)
        assert answer.status == 200, path
        assert f'<em class="role">{role}</em>' in await answer.text()
    # An operator reaches the runner, which has no rollout to abort (404, as the API answers);
    # a viewer is stopped by the role first, as POST /v1/rollouts/fraud/abort stops it.
    answer = await console.post("/ui/models/fraud/rollout/abort", data={"csrf_token": csrf})
    text = await answer.text()
    assert answer.status == action_status, text
    api = await console.post("/v1/rollouts/fraud/abort", headers=auth(role))
    assert api.status == action_status
    if role == "viewer":
        assert "needs the operator role" in text


async def test_a_form_without_the_sessions_csrf_token_is_403(console: Client) -> None:
    csrf = await sign_in(console, "operator")
    for form in ({}, {"csrf_token": ""}, {"csrf_token": csrf[:-1]}, {"csrf_token": csrf + "0"}):
        answer = await console.post("/ui/models/fraud/rollout/abort", data=form)
        assert answer.status == 403, form
        assert "CSRF token is missing or wrong" in await answer.text()
    answer = await console.post("/ui/sign-out", data={}, allow_redirects=False)
    assert answer.status == 403
    assert (await console.get("/ui/", allow_redirects=False)).status == 200  # still signed in


async def test_the_sign_in_form_needs_its_own_cookie_and_a_valid_token(console: Client) -> None:
    # Posted from elsewhere (no sign-in cookie): 403, no session.
    answer = await console.post("/ui/sign-in", data={"csrf_token": "x", "token": TOKENS["admin"]})
    assert answer.status == 403
    form = await console.get("/ui/sign-in")
    token = CSRF.search(await form.text())
    assert token is not None
    answer = await console.post("/ui/sign-in", data={"csrf_token": token[1], "token": "wrong"})
    assert answer.status == 401
    assert "not valid" in await answer.text()
    assert "aegis_session" not in {cookie.key for cookie in console.session.cookie_jar}


async def test_cookies_are_httponly_strict_scoped_and_expire(console: Client) -> None:
    form = await console.get("/ui/sign-in")
    token = CSRF.search(await form.text())
    assert token is not None
    answer = await console.post(
        "/ui/sign-in", data={"csrf_token": token[1], "token": TOKENS["viewer"]}, allow_redirects=False
    )
    cookie = answer.cookies["aegis_session"]
    assert (cookie["httponly"], cookie["samesite"], cookie["path"], cookie["max-age"]) == (
        True, "Strict", "/ui/", "28800"
    )
    assert not cookie["secure"]  # plain http and an http public URL
    page = await console.get("/ui/")
    assert page.headers["Content-Security-Policy"].startswith("default-src 'none'; script-src 'self'")
    assert page.headers["Cache-Control"] == "no-store"


async def test_the_cookie_is_secure_when_the_public_url_is_https(
    start_client: Callable[[Settings], Awaitable[Client]], make_settings: Callable[..., Settings]
) -> None:
    client = await start_client(make_settings(AEGIS_PUBLIC_URL="https://aegis.example.com"))
    answer = await client.get("/ui/sign-in")
    assert answer.cookies["aegis_sign_in"]["secure"]


async def test_signing_out_ends_the_session_and_its_live_stream(
    console: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    csrf = await sign_in(console, "viewer")
    session_id = next(c.value for c in console.session.cookie_jar if c.key == "aegis_session")
    async with console.get("/ui/live/models") as live:
        assert live.headers["Content-Type"] == "text/event-stream"
        first = await live.content.readuntil(b"\n\n")
        assert first.startswith(b"event: fragment\ndata: {")
        # Signed out elsewhere (another tab): the open stream says so and ends.
        async with aiohttp.ClientSession(cookies={"aegis_session": session_id}) as other:
            answer = await other.post(
                console.make_url("/ui/sign-out"), data={"csrf_token": csrf}, allow_redirects=False
            )
            assert answer.status == 303
        rest = await live.content.read()
        assert rest.endswith(b"event: end\ndata: signed out\n\n")
    # The old cookie, replayed, is no session any more.
    async with aiohttp.ClientSession(cookies={"aegis_session": session_id}) as replay:
        answer = await replay.get(console.make_url("/ui/"), allow_redirects=False)
        assert answer.status == 303
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert session_id not in logged and TOKENS["viewer"] not in logged and csrf not in logged


async def test_bad_names_and_unknown_rollouts_are_4xx_pages_never_500(console: Client) -> None:
    await sign_in(console, "viewer")
    for path, status in (
        ("/ui/models/Bad..Name", 422),
        ("/ui/models/ghost", 404),
        ("/ui/models/fraud/rollout", 404),
        ("/ui/models/fraud/rollouts/99", 404),
        ("/ui/nothing-here", 404),
    ):
        answer = await console.get(path)
        assert answer.status == status, path
        assert answer.content_type == "text/html", path
    page = await console.get("/ui/models/fraud")
    assert "&lt;script&gt;x&lt;/script&gt;" in await page.text()
    assert "<script>x</script>" not in await page.text()


async def test_the_cluster_page_shows_every_replica_the_leader_and_the_envoy_nodes_replica(
    start_client: Callable[[Settings], Awaitable[Client]], make_settings: Callable[..., Settings],
    database_url: str, tmp_path: Path,
) -> None:
    """On SQLite one replica leads for good; on PostgreSQL a second replica's page names the first."""
    # Replica ids are free text in AEGIS_REPLICA_ID: shown as text, never as markup.
    first = await start_client(make_settings(
        database_url, AEGIS_REPLICA_ID="<b>aegis-a</b>", AEGIS_DATA_DIR=tmp_path / "a",
        AEGIS_LEADER_LEASE_SECONDS=2,
    ))
    client, names = first, ["<b>aegis-a</b>"]
    if "postgresql" in database_url:
        client = await start_client(make_settings(
            database_url, AEGIS_REPLICA_ID="aegis-b", AEGIS_DATA_DIR=tmp_path / "b",
            AEGIS_LEADER_LEASE_SECONDS=2,
        ))
        names.append("aegis-b")
    api = await until(client, lambda c: c["leader_id"] is not None and len(c["replicas"]) == len(names))
    poll = {"node": {"id": "edge-1", "cluster": "gateway"}, "version_info": ""}
    assert (await client.post("/v3/discovery:clusters", json=poll)).status == 200

    await sign_in(client, "viewer")
    text = await (await client.get("/ui/cluster")).text()
    assert '<a href="/ui/cluster">Replicas</a>' in text
    for name in names:
        assert f"<code>{html.escape(name)}</code>" in text
    assert "<b>aegis-a</b>" not in text
    leader = html.escape(api["leader_id"])
    assert f"<dt>leader</dt><dd id=\"leader\">{leader}</dd>" in text
    assert f"<dt>epoch</dt><dd id=\"epoch\">{api['epoch']}</dd>" in text
    assert f"{len(names)} of {len(names)} replica{'s' if len(names) > 1 else ''} live" in text
    assert text.count('<span class="ok">live</span>') == len(names)
    assert text.count("<strong>leader</strong>") == 1
    assert all(f"<td>{html.escape(r['address'])}</td>" in text for r in api["replicas"])
    assert "(this one)" in text and f"<code>{html.escape(api['replica_id'])}</code> ({api['role']})" in text
    nodes = await (await client.get("/ui/xds")).text()
    assert f"replica {html.escape(names[-1])} ·" in nodes


async def until(client: Client, done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """`GET /v1/cluster` once the replicas' first heartbeats and the lease are in (a few seconds)."""
    for _ in range(100):
        answer = await client.get("/v1/cluster", headers=auth("viewer"))
        assert answer.status == 200, await answer.text()
        cluster: dict[str, Any] = await answer.json()
        if done(cluster):
            return cluster
        await asyncio.sleep(0.1)
    raise AssertionError(f"the cluster did not settle: {cluster}")
