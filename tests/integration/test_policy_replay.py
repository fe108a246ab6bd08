"""`aegis policy replay` against a real Prometheus holding a deterministic history (promtool backfill).

The history is Envoy's per-arm counters every 5 s for 5 minutes, half an hour ago:
model `regress`, whose canary goes from prod's 0.5 % errors to 3 % at minute 2, and model
`incident`, whose two arms both go to 8 % errors from minute 1 to minute 3 (a shared
incident, above the policy's 4 % SLO). Latency is the same in both arms throughout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from controlplane.rollout.evaluation import SCRAPE_SETTLE_SECONDS
from controlplane.xds.resources import cluster_name
from tests.observability_processes import Prometheus, require_binary
from tests.processes import ROOT

STEP = 5  # seconds between samples
SAMPLES = 61  # 0 .. 300 s
REQUESTS = 500  # per arm per sample
BUCKETS = {"10": 400, "25": 490, "50": 500, "100": 500, "+Inf": 500}  # cumulative, per arm per sample

POLICY = """\
policies:
  - name: replayed
    models: ["*"]
    steps:
      - setWeight: 50
      - pause: {duration: 10m}
    analysis:
      interval: 10s
      window: 20s
      minRequests: 20
      metrics:
        - name: error-rate
          template: request-error-rate
          compare: baseline
          alpha: 0.01
          tolerance: 1.5x
          thresholdRange: {max: 0.04}
        - name: latency
          template: request-duration-p99
          compare: baseline
          thresholdRange: {max: 250}
"""


def errors(model: str, arm: str, offset: int) -> int:
    """5xx in the sample at `offset` seconds: 0.5 % (2 or 3 of 500) unless an incident or a regression."""
    normal = 2 + (offset // STEP) % 2
    if model == "regress" and arm == "2" and offset >= 120:
        return 15  # 3 %: 6x prod
    if model == "incident" and 60 <= offset < 180:
        return 40  # 8 % in both arms
    return normal


def openmetrics(start: int) -> str:
    """Every series with its samples in time order, each family contiguous, ending with # EOF."""
    requests, buckets = [], []
    for model in ("regress", "incident"):
        for arm in ("1", "2"):
            labels = f'envoy_cluster_name="{cluster_name(model, arm)}",instance="envoy:9901"'
            ok = failed = 0
            ok_lines, failed_lines = [], []
            for sample in range(SAMPLES):
                offset = sample * STEP
                bad = errors(model, arm, offset)
                ok, failed = ok + REQUESTS - bad, failed + bad
                ok_lines.append(f'envoy_cluster_upstream_rq_xx{{{labels},envoy_response_code_class="2"}} '
                                f"{ok} {start + offset}")
                failed_lines.append(f'envoy_cluster_upstream_rq_xx{{{labels},envoy_response_code_class="5"}} '
                                    f"{failed} {start + offset}")
            requests += ok_lines + failed_lines
            for le, count in BUCKETS.items():
                buckets += [f'envoy_cluster_upstream_rq_time_bucket{{{labels},le="{le}"}} '
                            f"{count * (sample + 1)} {start + sample * STEP}" for sample in range(SAMPLES)]
    return "\n".join([
        "# TYPE envoy_cluster_upstream_rq_xx unknown", *requests,
        "# TYPE envoy_cluster_upstream_rq_time_bucket unknown", *buckets, "# EOF", "",
    ])


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Prometheus, int]]:
    root = tmp_path_factory.mktemp("replay")
    start = (int(time.time()) - 1800) // 60 * 60
    source = root / "history.om"
    source.write_text(openmetrics(start))
    prometheus = Prometheus(root / "prometheus", scrape_targets=[])
    made = subprocess.run(
        [require_binary("promtool"), "tsdb", "create-blocks-from", "openmetrics", str(source),
         str(prometheus.workdir / "data")],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert made.returncode == 0, made.stdout + made.stderr
    prometheus.start()
    try:
        yield prometheus, start
    finally:
        prometheus.stop()


def replay(prometheus: Prometheus, policy: Path, model: str, start: int, *extra: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "controlplane.cli", "policy", "replay", str(policy), "--model", model,
         # Ticks one settle after the samples: each reads the sample of its own instant.
         "--stable", "1", "--canary", "2", "--from", str(start + 10 + SCRAPE_SETTLE_SECONDS),
         "--to", str(start + 300 + SCRAPE_SETTLE_SECONDS),
         "--prometheus", prometheus.url, *extra],
        capture_output=True, text=True, timeout=60, check=False, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def verdicts(tick: dict[str, Any]) -> dict[str, str]:
    return {v["metric"]: v["verdict"] for v in tick["verdicts"]}


def seconds(tick: dict[str, Any], start: int) -> int:
    """The instant the tick read its counters at, in seconds from the history's start."""
    at = datetime.fromisoformat(tick["at"].replace("Z", "+00:00")).timestamp()
    return round(at - SCRAPE_SETTLE_SECONDS) - start


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("policy") / "policy.yaml"
    path.write_text(POLICY)
    return path


def test_a_six_fold_error_regression_in_history_is_rolled_back_within_two_ticks_of_its_start(
    history: tuple[Prometheus, int], policy: Path
) -> None:
    prometheus, start = history
    ticks = json.loads(replay(prometheus, policy, "regress", start, "--json"))

    timeline = [(seconds(t, start), t["phase"], verdicts(t)) for t in ticks]
    assert timeline[0] == (10, "progressing", {})  # the weight is set; Envoy runs it by the next tick
    analysed = [(at, kinds) for at, _phase, kinds in timeline if kinds]
    assert analysed[0][0] == 40  # acknowledged at 20, a 20 s window later
    before = [kinds["error-rate"] for at, kinds in analysed if at <= 120]
    assert set(before) == {"hold"}, timeline
    last = ticks[-1]
    assert last["phase"] == "rolled_back" and 130 <= seconds(last, start) <= 140, timeline
    check = next(c for c in last["checks"] if c["check"] == "error-rate")
    canary, baseline = (next(a for a in check["arms"] if a["arm"] == arm) for arm in ("canary", "baseline"))
    # A tick is 10 s: two samples of 500 requests per arm, counted exactly from the raw counters.
    assert canary["tick"]["requests"] == baseline["tick"]["requests"] == 1000
    assert canary["tick"]["events"] == 30 and baseline["tick"]["events"] == 5
    assert check["verdict"] == "fail" and check["e_value"] >= check["threshold"] == 100
    assert "rolled back at once (a sequential test's fail)" in last["reason"]
    # The first analysis counted from a reading under the weight: the one at 30 s, not the one at 10 s.
    first = next(t for t in ticks if t["checks"])
    first_arms = {a["arm"]: a["tick"]["requests"] for a in first["checks"][0]["arms"]}
    assert first_arms == {"canary": 1000, "baseline": 1000}


def test_a_shared_incident_in_history_holds_as_baseline_unhealthy_then_the_canary_is_promoted(
    history: tuple[Prometheus, int], policy: Path
) -> None:
    prometheus, start = history
    text = replay(prometheus, policy, "incident", start)
    again = replay(prometheus, policy, "incident", start)
    ticks = json.loads(replay(prometheus, policy, "incident", start, "--json"))

    assert text == again  # the same history gives the same decisions, to the character
    analysed = {seconds(t, start): verdicts(t)["error-rate"] for t in ticks if t["verdicts"]}
    assert {analysed[at] for at in range(70, 181, 10)} == {"baseline_unhealthy"}, analysed
    assert "fail" not in analysed.values()
    # Prod recovered at 180 s: two healthy ticks still count as the incident (recovering), the
    # third ends it; both checks had ruled out a 1.5x regression meanwhile (the arms are alike),
    # so that tick ends the timed pause early and promotes.
    assert [analysed[at] for at in (190, 200)] == ["baseline_unhealthy"] * 2, analysed
    assert analysed[210] == "pass" and seconds(ticks[-1], start) == 210, analysed
    assert ticks[-1]["phase"] == "succeeded" and "step 2 ended early" in ticks[-1]["reason"]
    assert "baseline unhealthy, holding" in text
    assert "outcome: succeeded" in text
