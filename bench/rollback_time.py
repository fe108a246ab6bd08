"""rollback_time: from the moment a canary starts failing to the moment its share of traffic is zero.

Real Envoy, Prometheus (1 s scrape), Alertmanager, reference model servers under a
steady load through Envoy. Each run registers a new faulty version (30 % 5xx),
promotes it to canary and measures, at the client, from its first failed request to
its last answer. Median of N runs for the analysis path (policy checks every 1 s over
a 3 s window) and for the alert path (the deploy/rules alert through Alertmanager).
Baseline: Flagger's documented rollback time `interval x threshold` at its smallest
interval (10 s) and threshold 1 = 10 s. Targets: 5 s alert path, 10 s analysis path.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import report
from controlplane.client import AegisClient
from controlplane.demo.loadgen import LoadGenerator
from controlplane.demo.processes import (
    ROOT,
    AegisServer,
    Alertmanager,
    Envoy,
    Prometheus,
    free_port,
    start_model_server,
    stop,
)

FLAGGER_BASELINE_SECONDS = 10.0
POLICIES = """\
policies:
  - name: analysed
    models: ["analysed"]
    steps: [{setWeight: 30}, {pause: {duration: 10m}}]
    analysis:
      interval: 1s
      window: 3s
      failureLimit: 1
      inconclusiveLimit: 100
      minRequests: 3
      metrics:
        - {name: error-rate, template: request-error-rate, thresholdRange: {max: 0.05}}
    alerts: {rollback: false}
  - name: alerted
    models: ["alerted"]
    steps: [{setWeight: 30}, {pause: {duration: 10m}}]
    alerts: {rollback: true}
"""


class Bench:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.operator = secrets.token_urlsafe(16)
        self.admin = secrets.token_urlsafe(16)
        self.sign_key = secrets.token_hex(16)
        self.listener = free_port()
        (root / "policies.yaml").write_text(POLICIES)
        self.prometheus = Prometheus(
            root / "prometheus", scrape_targets=[], rule_files=[ROOT / "deploy/rules/aegis-canary.rules.yml"]
        )
        self.aegis = AegisServer(
            {
                "AEGIS_DATA_DIR": str(root / "aegis"),
                "AEGIS_MODEL_SIGN_KEY": self.sign_key,
                "AEGIS_API_TOKENS": f"admin:{self.admin},operator:{self.operator}",
                "AEGIS_POLICIES": str(root / "policies.yaml"),
                "AEGIS_PROMETHEUS_URL": self.prometheus.url,
                "AEGIS_ENVOY_LISTENER": f"127.0.0.1:{self.listener}",
                "AEGIS_ROLLOUT_TICK_SECONDS": "0.25",
                "AEGIS_LOG_LEVEL": "WARNING",
            }
        )
        self.model_ports = {(m, str(v)): free_port() for m in ("analysed", "alerted") for v in range(1, 12)}
        self.servers: list[subprocess.Popen[bytes]] = []
        self.envoy: Envoy | None = None
        self.alertmanager: Alertmanager | None = None

    def start(self) -> None:
        self.aegis.start()
        self.envoy = Envoy(self.root / "envoy", xds_port=self.aegis.grpc_port).start()
        self.alertmanager = Alertmanager(
            self.root / "am",
            webhook_url=f"{self.aegis.url}/v1/alerts/alertmanager",
            bearer_token=self.operator,
        ).start()
        self.prometheus.scrape_targets = [
            ("envoy", f"127.0.0.1:{self.envoy.admin_port}", "/stats/prometheus")
        ] + [(f"{m}-{v}", f"127.0.0.1:{p}", "/metrics") for (m, v), p in self.model_ports.items()]
        self.prometheus.alertmanager_url = self.alertmanager.url
        self.prometheus.start()
        self.prometheus.wait_for_up("envoy", timeout=30)

    def stop(self) -> None:
        for process in self.servers:
            stop(process)
        for part in (self.prometheus, self.alertmanager, self.envoy):
            if part is not None:
                part.stop()
        self.aegis.stop()

    def client(self) -> AegisClient:
        return AegisClient(self.aegis.url, self.operator)

    def register(self, model: str, version: str) -> None:
        boundary = "bench"
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="metadata"\r\n\r\n'
            f'{{"model_name": "{model}", "version": "{version}"}}\r\n--{boundary}\r\n'
            'Content-Disposition: form-data; name="artifact"; filename="m"\r\n\r\n'
        ).encode()
        body = head + os.urandom(4096) + f"\r\n--{boundary}--\r\n".encode()
        request = urllib.request.Request(
            f"{self.aegis.url}/v1/registry/register",
            data=body,
            method="POST",
            headers={
                "Authorization": f"Bearer {self.admin}",
                "Content-Type": f"multipart/form-data; boundary={boundary}",
            },
        )
        urllib.request.urlopen(request, timeout=30).close()

    def model_server(self, model: str, version: str, *, error_rate: float) -> None:
        self.servers.append(
            start_model_server(
                aegis_url=self.aegis.url,
                token=self.operator,
                sign_key=self.sign_key,
                model=model,
                version=version,
                port=self.model_ports[(model, version)],
                workdir=self.root,
                faults={"error_rate": error_rate},
            )
        )


async def measure(bench: Bench, model: str, runs: int) -> list[float]:
    client = bench.client()
    bench.register(model, "1")
    bench.model_server(model, "1", error_rate=0.0)
    client.call("POST", f"/v1/registry/{model}/1/promote", {"stage": "prod"})
    load = LoadGenerator(f"http://127.0.0.1:{bench.listener}", model, rate=50)
    load.start()
    timings = []
    try:
        for run in range(2, runs + 2):
            version = str(run)
            await asyncio.to_thread(bench.register, model, version)
            await asyncio.to_thread(bench.model_server, model, version, error_rate=0.3)
            await asyncio.sleep(6)  # Prometheus scrapes the new server before it gets traffic
            client.call("POST", f"/v1/registry/{model}/{version}/promote", {"stage": "canary"})
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                rollout = client.call("GET", f"/v1/rollouts/{model}")
                if rollout["canary_version"] == version and rollout["phase"] == "rolled_back":
                    break
                await asyncio.sleep(0.2)
            else:
                raise RuntimeError(f"{model} {version} was never rolled back: {rollout}")
            await asyncio.sleep(3)  # any straggling answer from the canary would show here
            timings.append(load.last_answer[version] - load.first_error[version])
            print(f"{model} run {run - 1}: {timings[-1]:.2f} s ({rollout['message'][:90]})", file=sys.stderr)
    finally:
        await load.stop()
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="aegis-bench-rollback-") as scratch:
        bench = Bench(Path(scratch))
        try:
            bench.start()
            analysis = asyncio.run(measure(bench, "analysed", args.runs))
            alert = asyncio.run(measure(bench, "alerted", args.runs))
        finally:
            bench.stop()
    analysis_median, alert_median = statistics.median(analysis), statistics.median(alert)
    report(
        "rollback_time",
        value=alert_median,
        unit="s",
        baseline="Flagger interval x threshold at its minimum (10 s x 1)",
        baseline_value=FLAGGER_BASELINE_SECONDS,
        target=5.0,
        higher_is_better=False,
        details={
            "alert_path": {
                "median_s": round(alert_median, 2),
                "runs_s": [round(t, 2) for t in alert],
                "target_s": 5.0,
                "meets_target": alert_median <= 5.0,
            },
            "analysis_path": {
                "median_s": round(analysis_median, 2),
                "runs_s": [round(t, 2) for t in analysis],
                "target_s": 10.0,
                "meets_target": analysis_median <= 10.0,
                "ratio_to_baseline": round(analysis_median / FLAGGER_BASELINE_SECONDS, 3),
            },
        },
    )


if __name__ == "__main__":
    main()
