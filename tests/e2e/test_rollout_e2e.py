"""The whole loop: real Envoy, Prometheus, Alertmanager and model servers, Aegis deciding by itself.

(a) a healthy canary is promoted by the analysis, (b) a failing one is rolled back by the
analysis, (c) a firing Prometheus alert rolls a canary back through Alertmanager's webhook.
Each scenario runs a steady stream of predictions through Envoy, which is also what the
analysis and the alert rules measure. Timings are printed, never asserted beyond generous bounds.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.observed_stack import Load, Observed, decision_time, observed_stack, wait_for_phase
from tests.e2e.stack import Stack
from tests.e2e.traffic import send

MODEL = "fraud"
ALERT_MODEL = "alert-fraud"
ENDED = {"succeeded", "rolled_back", "paused"}  # paused: ends the wait early, the assertion says why

# `analysed` leaves alert rollback off on purpose: the rule AegisCanaryHighErrorRate fires for
# the failing canary of scenario (b) within ~3 s, before the analysis' second failed check, so
# with rollback on, (b) would race the alert path instead of proving the analysis path. Scenario
# (c) proves the alert path with a policy that has no analysis at all.
POLICIES = """\
policies:
  - name: alert-only
    models: ["alert-*"]
    steps:
      - setWeight: 50
      - pause: {duration: 10m}
    alerts: {rollback: true}
  - name: analysed
    models: ["fraud"]
    steps:
      - setWeight: 20
      - pause: {duration: 2s}
      - setWeight: 50
      - pause: {duration: 2s}
    analysis:
      interval: 2s
      window: 4s
      failureLimit: 1
      inconclusiveLimit: 100
      consecutiveErrorLimit: 10
      minRequests: 5
      metrics:
        - name: error-rate
          template: request-error-rate
          thresholdRange: {max: 0.05}
    alerts: {rollback: false}
"""

MODEL_SERVERS = [(MODEL, "1"), (MODEL, "2"), (MODEL, "3"), (ALERT_MODEL, "1"), (ALERT_MODEL, "2")]


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observed]:
    root = tmp_path_factory.mktemp("rollout")
    with observed_stack(
        root, policies=POLICIES, model_servers=MODEL_SERVERS, extra_env={"AEGIS_ROLLOUT_TICK_SECONDS": "0.5"}
    ) as running:
        print(f"\n[rollout e2e] processes' logs under {root}")
        yield running


def stage(stack: Stack, model: str, version: str) -> str:
    return str(stack.api("GET", f"/v1/registry/{model}/{version}", role="viewer")["stage"])


def weight_decision(rollout: dict[str, Any]) -> dict[str, Any]:
    """The decision that first gave the canary traffic (decisions come newest first)."""
    return next(d for d in reversed(rollout["decisions"]) if d["canary_weight"] > 0)


def final_decision(rollout: dict[str, Any]) -> dict[str, Any]:
    return next(d for d in rollout["decisions"] if d["phase"] == rollout["phase"])


def alert_metrics(stack: Stack) -> list[str]:
    with urllib.request.urlopen(f"{stack.aegis.url}/metrics", timeout=5) as response:
        text = response.read().decode()
    return [line for line in text.splitlines() if line.startswith("aegis_alerts_received_total")]


async def prepare(stack: Stack, model: str, versions: tuple[str, ...], prod: str) -> None:
    """Register `versions`, make `prod` prod with a healthy model server, wait until Envoy routes it."""
    for version in versions:
        stack.register(model, version, f"{model} weights {version}".encode() * 64)
    stack.promote(model, prod, "prod")
    await asyncio.to_thread(stack.start_model_server, model, prod)
    await asyncio.to_thread(stack.wait_acked, model)


async def canary_under_load(stack: Stack, model: str, version: str) -> tuple[dict[str, Any], Load, float]:
    """Promote `version` to canary while predictions flow; the rollout once it ended, the load,
    and the moment Envoy acknowledged the routes that follow the end."""
    async with Load(stack.gateway, model) as load:
        await asyncio.sleep(0.5)
        await asyncio.to_thread(stack.promote, model, version, "canary")
        rollout = await wait_for_phase(stack, model, ENDED, timeout=90)
        await asyncio.to_thread(stack.wait_acked, model)
        settled = time.time() + 0.2  # answers to requests routed before the acknowledgement are done by then
        await asyncio.sleep(1.5)
    return rollout, load, settled


async def test_a_healthy_canary_is_promoted_by_the_analysis(observed: Observed) -> None:
    stack = observed.stack
    await prepare(stack, MODEL, ("1", "2", "3"), prod="1")
    await asyncio.to_thread(stack.start_model_server, MODEL, "2")

    rollout, load, settled = await canary_under_load(stack, MODEL, "2")

    assert rollout["phase"] == "succeeded", rollout
    reasons = [d["reason"] for d in rollout["decisions"]]
    assert any("analysis passed" in reason for reason in reasons), reasons
    assert (stage(stack, MODEL, "2"), stage(stack, MODEL, "1")) == ("prod", "archived")
    tally = load.tally()
    assert {status for status, _ in tally} == {200}, tally  # both arms healthy: no 5xx, no 503
    assert tally[(200, "2")] > 0 and tally[(200, "1")] > 0, tally
    assert set(load.tally(since=settled)) == {(200, "2")}
    assert await send(stack.gateway, MODEL, 50) == {(200, "2"): 50}
    # What the real Envoy acknowledged, beside what the rollout set: all of it on 2.
    served = stack.api("GET", f"/v1/rollouts/{MODEL}", role="viewer")
    assert (served["finished"], served["canary_weight"], served["actual_canary_weight"]) == (True, 100, 100)
    started = decision_time(weight_decision(rollout))
    print(
        f"\n[a] canary weight set -> promoted: {decision_time(final_decision(rollout)) - started:.1f} s; "
        f"answers {dict(tally)}"
    )


async def test_b_a_failing_canary_is_rolled_back_by_the_analysis(observed: Observed) -> None:
    stack = observed.stack
    await asyncio.to_thread(stack.start_model_server, MODEL, "3", error_rate=0.5)

    rollout, load, settled = await canary_under_load(stack, MODEL, "3")

    assert rollout["phase"] == "rolled_back", rollout
    assert "error-rate" in rollout["message"] and "failureLimit" in rollout["message"], rollout["message"]
    assert (stage(stack, MODEL, "3"), stage(stack, MODEL, "2")) == ("staging", "prod")
    assert set(load.tally(since=settled)) == {(200, "2")}, load.tally(since=settled)
    assert await send(stack.gateway, MODEL, 100) == {(200, "2"): 100}

    weighted, rolled_back = decision_time(weight_decision(rollout)), decision_time(final_decision(rollout))
    first, last = load.first("3"), load.last("3")
    assert first is not None and last is not None, load.tally()
    assert rolled_back - weighted < 60
    print(
        f"\n[b] analysis path: canary weight set -> rollback decision {rolled_back - weighted:.1f} s, "
        f"-> last answer from the canary {last - weighted:.1f} s; first -> last answer from the canary "
        f"{last - first:.1f} s; message: {rollout['message']!r}; "
        f"answers {dict(load.tally())}; alerts seen by Aegis: {alert_metrics(stack)}"
    )


async def test_c_a_firing_alert_rolls_the_canary_back_at_once(observed: Observed) -> None:
    stack = observed.stack
    await prepare(stack, ALERT_MODEL, ("1", "2"), prod="1")
    await asyncio.to_thread(stack.start_model_server, ALERT_MODEL, "2", error_rate=0.5)

    rollout, load, settled = await canary_under_load(stack, ALERT_MODEL, "2")

    assert rollout["phase"] == "rolled_back", rollout
    assert "AegisCanaryHighErrorRate" in rollout["message"], rollout["message"]
    assert (stage(stack, ALERT_MODEL, "2"), stage(stack, ALERT_MODEL, "1")) == ("staging", "prod")
    assert set(load.tally(since=settled)) == {(200, "1")}, load.tally(since=settled)
    assert await send(stack.gateway, ALERT_MODEL, 50) == {(200, "1"): 50}

    weighted, rolled_back = decision_time(weight_decision(rollout)), decision_time(final_decision(rollout))
    first, last = load.first("2"), load.last("2")
    assert first is not None and last is not None, load.tally()
    assert last - first < 60
    print(
        f"\n[c] alert path: canary weight set -> rollback decision {rolled_back - weighted:.1f} s, "
        f"-> last answer from the canary (zero traffic) {last - weighted:.1f} s; "
        f"first -> last answer from the canary {last - first:.1f} s; "
        f"message: {rollout['message']!r}; answers {dict(load.tally())}; "
        f"alerts seen by Aegis: {alert_metrics(stack)}"
    )
