"""The Grafana dashboard's queries against a real Prometheus scraping a real stack during a rollout.

Grafana itself does not run here; what it would send does. Every panel's PromQL is taken from
deploy/grafana/dashboards/aegis.json, its variables substituted as Grafana would (`$model`, and
`$__rate_interval` from the provisioned data source's scrape interval), and run as the range
query a time-series panel makes over the minute a canary rollout took. Every query must
evaluate; the panels a rollout feeds must return data, with the numbers the rollout made.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.e2e.observed_stack import Load, Observed, observed_stack, wait_for_phase
from tests.observability_processes import Prometheus
from tests.processes import ROOT

GRAFANA = ROOT / "deploy" / "grafana"
MODEL = "dash"
POLICIES = """\
policies:
  - name: dashboard
    models: ["dash"]
    steps:
      - setWeight: 50
      - pause: {duration: 4s}
    analysis:
      interval: 1s
      window: 3s
      minRequests: 5
      inconclusiveLimit: 100
      metrics:
        - name: error-rate
          template: request-error-rate
          thresholdRange: {max: 0.05}
    alerts: {rollback: false}
"""
# The panels a rollout feeds, which must show data after one; the others must evaluate.
FED_BY_A_ROLLOUT = {
    "Canary weight: desired and served", "Weight per version: desired and served", "Rollout step",
    "Rollout phase", "Endpoints per version", "Requests per second", "Error rate (5xx share)",
    "Latency p50 and p99", "Verdicts per metric", "Envoy nodes", "Config sent",
    "Registrations since start", "Stage changes since start",
}
QUIET_WITHOUT_INCIDENTS = {"Alertmanager alerts received", "Rejected versions"}
STEP_SECONDS = 1


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observed]:
    root = tmp_path_factory.mktemp("grafana")
    with observed_stack(
        root, policies=POLICIES, model_servers=[(MODEL, "1"), (MODEL, "2")],
        extra_env={"AEGIS_ROLLOUT_TICK_SECONDS": "0.5"},
    ) as running:
        yield running


def dashboard() -> dict[str, Any]:
    document: dict[str, Any] = json.loads((GRAFANA / "dashboards" / "aegis.json").read_text())
    return document


def panels() -> list[dict[str, Any]]:
    return [panel for panel in dashboard()["panels"] if panel["type"] != "row"]


def rate_interval(step_seconds: int) -> str:
    """Grafana's `$__rate_interval`: max($__interval + scrape interval, 4 * scrape interval),
    the scrape interval being the data source's `timeInterval`."""
    (source,) = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    scrape = int(re.fullmatch(r"(\d+)s", source["jsonData"]["timeInterval"]).group(1))  # type: ignore[union-attr]
    return f"{max(step_seconds + scrape, 4 * scrape)}s"


def substituted(expr: str) -> str:
    text = expr.replace("$__rate_interval", rate_interval(STEP_SECONDS)).replace("$model", MODEL)
    assert "$" not in text, f"a dashboard variable this test does not know: {text}"
    return text


def query_range(prometheus: Prometheus, expr: str, start: float, end: float) -> list[dict[str, Any]]:
    """What a Grafana time-series panel asks; an error answer fails with Prometheus's message."""
    query = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": STEP_SECONDS})
    try:
        with urllib.request.urlopen(f"{prometheus.url}/api/v1/query_range?{query}", timeout=10) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        pytest.fail(f"{expr!r} does not evaluate: {exc.read().decode()}")
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def seen(series: list[dict[str, Any]], **labels: str) -> set[float]:
    """Every value the matching series took over the range."""
    return {
        float(value)
        for one in series if labels.items() <= one["metric"].items()
        for _, value in one["values"]
    }


def highest(series: list[dict[str, Any]], **labels: str) -> float:
    """The largest value the matching series took. A rate over a window with no requests is NaN,
    and max() over a set holding NaN depends on the set's order: NaN is left out."""
    return max(value for value in seen(series, **labels) if not math.isnan(value))


def test_the_dashboard_names_the_provisioned_data_source_and_every_panel_is_classified() -> None:
    (source,) = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    document = dashboard()
    ids = [panel["id"] for panel in document["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": source["uid"]}, panel["title"]
        assert all(target["datasource"]["uid"] == source["uid"] for target in panel["targets"])
    (variable,) = document["templating"]["list"]
    assert variable["datasource"]["uid"] == source["uid"]
    assert {panel["title"] for panel in panels()} == FED_BY_A_ROLLOUT | QUIET_WITHOUT_INCIDENTS


async def test_every_panel_evaluates_and_the_rollout_panels_show_the_rollout(observed: Observed) -> None:
    stack, prometheus = observed.stack, observed.prometheus
    began = time.time()
    for version in ("1", "2"):
        stack.register(MODEL, version, f"dashboard weights {version}".encode() * 64)
    stack.promote(MODEL, "1", "prod")
    for version in ("1", "2"):
        await asyncio.to_thread(stack.start_model_server, MODEL, version)
    await asyncio.to_thread(stack.wait_acked, MODEL)
    async with Load(stack.gateway, MODEL, workers=2):
        await asyncio.sleep(1.5)
        await asyncio.to_thread(stack.promote, MODEL, "2", "canary")
        rollout = await wait_for_phase(stack, MODEL, {"succeeded", "rolled_back", "paused"}, timeout=60)
        assert rollout["phase"] == "succeeded", rollout
        await asyncio.sleep(2.5)  # the last weights and counters scraped (Aegis every second here)

    # The model variable offers the model, as Grafana's label_values() asks for it.
    query = urllib.parse.urlencode({"match[]": "aegis_traffic_weight"})
    with urllib.request.urlopen(f"{prometheus.url}/api/v1/label/model/values?{query}", timeout=5) as response:
        assert MODEL in json.loads(response.read())["data"]

    end = time.time()
    results = {
        (panel["title"], target["refId"]): query_range(prometheus, substituted(target["expr"]), began, end)
        for panel in panels()
        for target in panel["targets"]
    }
    empty = sorted(
        title for title in FED_BY_A_ROLLOUT
        if not any(series for (name, _), series in results.items() if name == title)
    )
    assert not empty, f"panels with no data after a rollout: {empty}"

    canary = "Canary weight: desired and served"
    assert {50, 100} <= seen(results[(canary, "A")])  # the step, then promoted
    assert 50 in seen(results[(canary, "B")])  # what Envoy acknowledged at that step
    per_version = "Weight per version: desired and served"
    assert highest(results[(per_version, "B")], version="2") == 100  # promoted: all of it on 2
    assert highest(results[(per_version, "A")], version="1") == 100
    requests = results[("Requests per second", "A")]
    assert highest(requests, version="1") > 0 and highest(requests, version="2") > 0
    assert highest(results[("Error rate (5xx share)", "A")]) == 0  # both arms healthy
    assert highest(results[("Latency p50 and p99", "A")], version="2") > 0
    assert highest(results[("Verdicts per metric", "A")], metric="error-rate", verdict="pass") > 0
    assert highest(results[("Envoy nodes", "A")]) == 1
    assert highest(results[("Registrations since start", "A")], outcome="created") == 2
    assert highest(results[("Stage changes since start", "A")], stage="prod", action="promote") == 2
    assert highest(results[("Endpoints per version", "A")], version="2") == 1
