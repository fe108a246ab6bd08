"""The console in a real headless Chromium against a real stack (Aegis, Envoy, Prometheus, model servers).

One stack and one browser for the module; the tests run in order and build on each other:
sign in and see escaped metadata, a weight change reaching the page over server-sent
events (measured), a rollout advancing live, a viewer without buttons whose forged POST
is refused, a form without its CSRF token refused, and an operator's abort rolling back.
Screenshots go to $AEGIS_TEST_ARTIFACTS (default: the test's temporary directory).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.conftest import TOKENS
from tests.e2e.observed_stack import Observed, observed_stack
from tests.e2e.traffic import stream_for

CHROMIUM = "/usr/bin/chromium"  # Debian's package: Playwright's own browser download is not reachable
MODEL = "console-fraud"  # driven by a rollout
MANUAL = "console-manual"  # no policy: weights set by hand
XSS = "<script>window.aegisInjected = 1</script>"
REASON = '<img src=x onerror="window.aegisInjected = 2">first release'

POLICIES = """\
policies:
  - name: console-watch
    models: ["console-fraud"]
    steps:
      - setWeight: 20
      - pause: {duration: 2s}
      - setWeight: 40
      - pause: {}
    analysis:
      interval: 1s
      window: 4s
      failureLimit: 100
      inconclusiveLimit: 1000
      consecutiveErrorLimit: 1000
      minRequests: 5
      metrics:
        - name: error-rate
          template: request-error-rate
          thresholdRange: {max: 0.5}
    alerts: {rollback: false}
"""


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observed]:
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is missing: apt-get install chromium (./run test does it)")
    root = tmp_path_factory.mktemp("console")
    with observed_stack(
        root, policies=POLICIES, model_servers=[(MODEL, "1"), (MODEL, "2")],
        extra_env={"AEGIS_ROLLOUT_TICK_SECONDS": "0.25"},
    ) as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        # --no-sandbox: tests run as root, where Chromium's sandbox refuses to start.
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get("AEGIS_TEST_ARTIFACTS")
    folder = Path(given) if given else tmp_path_factory.mktemp("console-screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\n[console] screenshots in {folder}")
    return folder


@pytest.fixture(scope="module")
def operator(browser: Browser, observed: Observed) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    page = context.new_page()
    sign_in(page, observed, TOKENS["operator"])
    yield page
    context.close()


class BackgroundLoad:
    """Predictions through Envoy on a thread of its own (the browser's API is synchronous)."""

    def __init__(self, gateway: str, model: str) -> None:
        self.stop = asyncio.Event()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_until_complete, args=(stream_for(gateway, model, 600, stop=self.stop),)
        )

    def __enter__(self) -> BackgroundLoad:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(timeout=15)
        self.loop.close()


@pytest.fixture(scope="module")
def load(observed: Observed) -> Iterator[BackgroundLoad]:
    with BackgroundLoad(observed.stack.gateway, MODEL) as running:
        yield running


def console(observed: Observed, path: str = "") -> str:
    return f"{observed.stack.aegis.url}/ui/{path}"


def sign_in(page: Page, observed: Observed, token: str) -> None:
    page.goto(console(observed))
    expect(page).to_have_url(console(observed, "sign-in"))  # not signed in: sent to the form
    page.fill("input[name=token]", token)
    page.click("button[type=submit]")
    expect(page).to_have_url(console(observed))


def csrf_of(page: Page) -> str:
    return page.locator("form.who input[name=csrf_token]").get_attribute("value") or ""


def test_a_sign_in_shows_the_models_and_metadata_as_text(
    browser: Browser, observed: Observed, operator: Page, artifacts: Path
) -> None:
    stack = observed.stack
    for version in ("1", "2"):
        stack.register(MODEL, version, f"weights {version}".encode() * 64, metadata={"owner": XSS})
    stack.api("POST", f"/v1/registry/{MODEL}/1/promote", {"stage": "prod", "reason": REASON}, role="operator")

    # A wrong token is refused with a message, and no session cookie.
    context = browser.new_context()
    page = context.new_page()
    page.goto(console(observed, "sign-in"))
    page.fill("input[name=token]", "not-a-token")
    page.click("button[type=submit]")
    expect(page.locator("#sign-in-error")).to_contain_text("not valid")
    assert [c["name"] for c in context.cookies()] == ["aegis_sign_in"]
    context.close()

    operator.goto(console(observed))
    row = operator.locator(f"tr[data-model='{MODEL}']")
    expect(row).to_contain_text("1: 100")
    cookie = next(c for c in operator.context.cookies() if c["name"] == "aegis_session")
    assert (cookie["httpOnly"], cookie["sameSite"], cookie["path"]) == (True, "Strict", "/ui/")
    assert cookie["expires"] > time.time() + 3600

    operator.goto(console(observed, f"models/{MODEL}"))
    metadata = operator.locator("tr[data-version='2'] td.metadata")
    expect(metadata).to_contain_text(XSS)  # shown as text: the markup is in the visible text
    expect(operator.locator(".timeline")).to_contain_text(REASON)
    expect(operator.locator("tr[data-version='1']")).to_contain_text("verifies")
    assert operator.evaluate("window.aegisInjected") is None  # neither the script nor the img ran
    operator.screenshot(path=artifacts / "console-model.png", full_page=True)


def test_b_a_weight_change_reaches_the_page_over_sse(observed: Observed, operator: Page) -> None:
    stack = observed.stack
    for version in ("1", "2"):
        stack.register(MANUAL, version, f"manual {version}".encode() * 64)
    stack.promote(MANUAL, "1", "prod")
    stack.promote(MANUAL, "2", "canary")  # no policy matches: no rollout, weights by hand
    operator.goto(console(observed))
    canary = operator.locator(f"tr[data-model='{MANUAL}'] [data-weight='2']")
    stack.set_traffic(MANUAL, {"1": 95, "2": 5})  # the first split with a canary is validated by Envoy
    expect(canary).to_have_text("5")

    delays = []
    for weight in (10, 20, 30, 40, 50):
        before = time.time() * 1000
        stack.set_traffic(MANUAL, {"1": 100 - weight, "2": weight})
        expect(canary).to_have_text(str(weight))
        placed = float(operator.locator("#models-live").get_attribute("data-updated-at") or 0)
        delays.append(placed - before)
    assert all(0 < delay < 5000 for delay in delays), delays
    print(
        f"\n[console] PUT /v1/traffic -> the models page shows the weight (SSE): median "
        f"{statistics.median(delays):.0f} ms, max {max(delays):.0f} ms, "
        f"{[round(d) for d in delays]} ms"
    )


def test_c_a_rollout_advances_live_in_the_page(
    observed: Observed, operator: Page, load: BackgroundLoad, artifacts: Path
) -> None:
    stack = observed.stack
    stack.start_model_server(MODEL, "1")
    stack.start_model_server(MODEL, "2")
    stack.wait_acked(MODEL)
    stack.promote(MODEL, "2", "canary")

    operator.goto(console(observed, f"models/{MODEL}/rollout"))
    # The page was loaded once: everything after this arrives over server-sent events.
    expect(operator.locator("#desired-weight")).to_have_text("20 %", timeout=15_000)
    expect(operator.locator("#desired-weight")).to_have_text("40 %", timeout=20_000)
    expect(operator.locator("#served-weight")).to_have_text("40 %", timeout=10_000)
    expect(operator.locator("#step")).to_have_text("4 of 4")
    expect(operator.locator("#phase")).to_have_text("paused")  # `pause: {}` waits for an operator
    expect(operator.locator(".decisions")).to_contain_text("error-rate: pass")
    # Prometheus has scraped Envoy's per-arm counters by now: both arms draw a line.
    expect(operator.locator("#charts-live polyline.line-canary").first).to_be_visible(timeout=15_000)
    expect(operator.locator("#charts-live polyline.line-stable").first).to_be_visible()
    for action in ("promote", "promote-full", "resume", "abort"):
        expect(operator.locator(f"button.action-{action}")).to_be_visible()
    operator.screenshot(path=artifacts / "console-rollout-progressing.png", full_page=True)
    operator.goto(console(observed))
    expect(operator.locator(f"tr[data-model='{MODEL}']")).to_contain_text("paused")
    operator.screenshot(path=artifacts / "console-models.png", full_page=True)


def test_d_a_viewer_sees_no_buttons_and_a_forged_post_is_refused(
    browser: Browser, observed: Observed
) -> None:
    context = browser.new_context()
    page = context.new_page()
    sign_in(page, observed, TOKENS["viewer"])
    page.goto(console(observed, f"models/{MODEL}/rollout"))
    expect(page.locator("#phase")).to_have_text("paused")
    expect(page.locator("#actions")).to_have_count(0)
    expect(page.locator("button[class^=action-]")).to_have_count(0)

    # The viewer's own session and CSRF token, posted by hand: the role is what refuses it.
    answer = page.request.post(
        console(observed, f"models/{MODEL}/rollout/abort"), form={"csrf_token": csrf_of(page)}
    )
    assert answer.status == 403, answer.text()
    assert "operator role" in answer.text()
    context.close()
    assert observed.stack.api("GET", f"/v1/rollouts/{MODEL}", role="viewer")["phase"] == "paused"


def test_e_a_form_without_its_csrf_token_is_refused(observed: Observed, operator: Page) -> None:
    abort = console(observed, f"models/{MODEL}/rollout/abort")
    assert operator.request.post(abort, form={}).status == 403
    assert operator.request.post(abort, form={"csrf_token": "guessed"}).status == 403
    # A page of another site posting the form: SameSite=Strict keeps the session cookie home.
    forged = operator.context.new_page()
    forged.set_content(
        f'<form method="post" action="{abort}"><input name="csrf_token" value="x"></form>'
    )
    with forged.expect_navigation():
        forged.evaluate("document.forms[0].submit()")
    expect(forged.locator("h1")).to_have_text("401")
    forged.close()
    assert observed.stack.api("GET", f"/v1/rollouts/{MODEL}", role="viewer")["phase"] == "paused"


def test_f_an_operator_aborts_and_sees_it_rolled_back(
    observed: Observed, operator: Page, artifacts: Path
) -> None:
    operator.goto(console(observed, f"models/{MODEL}/rollout"))
    operator.once("dialog", lambda dialog: dialog.accept())  # "abort the rollout of …?"
    operator.click("button.action-abort")
    expect(operator.locator("#phase")).to_have_text("rolled_back", timeout=10_000)
    expect(operator.locator("#desired-weight")).to_have_text("0 %")
    expect(operator.locator("#served-weight")).to_have_text("0 %", timeout=10_000)
    expect(operator.locator("#message")).to_contain_text("abort by operator")
    expect(operator.locator("#actions")).to_have_count(0)
    operator.screenshot(path=artifacts / "console-rollout-rolled-back.png", full_page=True)

    stack = observed.stack
    assert stack.api("GET", f"/v1/registry/{MODEL}/2", role="viewer")["stage"] == "staging"
    traffic = stack.wait_acked(MODEL)
    assert traffic["weights"] == {"1": 100}, traffic
    operator.goto(console(observed, f"models/{MODEL}"))
    expect(operator.locator(".rollouts")).to_contain_text("rolled_back")
    # The past rollout, from the model's history: its decisions and charts, no buttons.
    operator.click(".rollouts a")
    expect(operator.locator("#phase")).to_have_text("rolled_back")
    expect(operator.locator(".decisions")).to_contain_text("abort by operator")
    expect(operator.locator("#charts-live polyline.line-canary").first).to_be_visible()
    expect(operator.locator("#actions")).to_have_count(0)


def test_g_the_replicas_and_envoy_nodes_pages_name_the_replica(
    observed: Observed, operator: Page, artifacts: Path
) -> None:
    cluster = observed.stack.api("GET", "/v1/cluster", role="viewer")
    operator.goto(console(observed))
    operator.click("nav a:text('Replicas')")
    expect(operator.locator("h1")).to_have_text("Replicas")
    expect(operator.locator("#leader")).to_have_text(cluster["leader_id"])
    expect(operator.locator("#epoch")).to_have_text(str(cluster["epoch"]))
    expect(operator.locator("tr.this")).to_contain_text("live · leader")
    operator.screenshot(path=artifacts / "console-replicas.png", full_page=True)
    operator.goto(console(observed, "xds"))
    # The stack's Envoy is attached to this (the only) replica.
    expect(operator.locator("section.node h2").first).to_contain_text(f"replica {cluster['replica_id']}")
