"""Schemathesis against the OpenAPI document a real `aegis serve` serves: no 5xx, answers as documented.

The server is a real process on a free port with SQLite and tokens; the fuzzer sends
the admin token, so every authenticated operation is exercised past its role check.
A model with a prod and a staging version is registered first, so that the documented
path examples (`fraud`, `2.0.0`) reach the operations' logic instead of a 404.
The run is bounded by examples per operation; the subprocess timeout is a backstop.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from controlplane.demo.processes import AegisServer
from registry.schemas import CANARY, MODEL, STABLE
from tests.conftest import API_TOKENS, SIGN_KEY, TOKENS

CONFIG = Path(__file__).with_name("schemathesis.toml")
EXAMPLES_PER_OPERATION = 80
RUN_TIMEOUT_SECONDS = 300
# The policy matches the documented model: a promotion to canary by the fuzzer starts a
# rollout, so the rollout operations meet a live one too.
POLICY = f"""
policies:
  - name: default
    models: ["{MODEL}"]
    steps:
      - setWeight: 10
      - pause: {{}}
"""


@pytest.fixture
def server(tmp_path: Path) -> Iterator[AegisServer]:
    policies = tmp_path / "policies.yaml"
    policies.write_text(POLICY)
    aegis = AegisServer(
        {
            "AEGIS_DATA_DIR": str(tmp_path / "data"),
            "AEGIS_API_TOKENS": API_TOKENS,
            "AEGIS_MODEL_SIGN_KEY": SIGN_KEY,
            "AEGIS_POLICIES": str(policies),
            "AEGIS_XDS_HOLD_SECONDS": "0",
            # Every publish would start an Envoy to validate it: thousands of cases, minutes.
            "AEGIS_XDS_VALIDATE": "false",
            "AEGIS_PROMETHEUS_URL": "http://127.0.0.1:9",  # nothing listens: analysis reports "error"
            "AEGIS_LOG_LEVEL": "WARNING",
        }
    ).start()
    yield aegis
    aegis.stop()


async def seed(url: str) -> None:
    admin = {"Authorization": f"Bearer {TOKENS['admin']}"}
    async with aiohttp.ClientSession(url, headers=admin) as http:
        for version in (STABLE, CANARY):
            form = aiohttp.FormData()
            form.add_field("metadata", json.dumps({"model_name": MODEL, "version": version}),
                           content_type="application/json")
            form.add_field("artifact", f"{MODEL} {version}".encode(), filename="model.bin")
            async with http.post("/v1/registry/register", data=form) as response:
                assert response.status == 201, await response.text()
        async with http.post(f"/v1/registry/{MODEL}/{STABLE}/promote", json={"stage": "prod"}) as response:
            assert response.status == 200, await response.text()


def run_schemathesis(url: str, report_dir: Path) -> dict[str, Any]:
    command = [
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG), "run",
        f"{url}/v1/openapi.json",
        "--header", f"Authorization: Bearer {TOKENS['admin']}",
        "--max-examples", str(EXAMPLES_PER_OPERATION),
        # Not "coverage": its generator dies inside Hypothesis on Python 3.11 now and then
        # ("AST constructor recursion depth mismatch"), a fault of the tool, not of a request.
        "--phases", "examples,fuzzing",
        "--seed", "20261202",
        "--workers", "2",
        "--request-timeout", "30",
        "--report", "json", "--report-dir", str(report_dir),
    ]
    # Run in the report folder: schemathesis keeps a crash cache in its working directory.
    report_dir.mkdir(parents=True, exist_ok=True)
    finished = subprocess.run(
        command, capture_output=True, text=True, timeout=RUN_TIMEOUT_SECONDS, check=False, cwd=report_dir
    )
    reports = sorted(report_dir.glob("*.json"))
    assert reports, f"schemathesis wrote no report:\n{finished.stdout[-4000:]}\n{finished.stderr[-4000:]}"
    report: dict[str, Any] = json.loads(reports[-1].read_text())
    # The failures and errors sections, not the progress lines before them.
    report["output"] = finished.stdout[finished.stdout.find("=====") :]
    return report


async def test_fuzzing_the_served_document_finds_no_5xx_and_no_undocumented_answer(
    server: AegisServer, tmp_path: Path
) -> None:
    await seed(server.url)

    report = run_schemathesis(server.url, tmp_path / "report")

    failures = {failure["title"]: failure for failure in report["failures"]}
    summary = f"{report['test_cases']} in {report['running_time']:.0f} s; failures: {report['failures']}"
    print(f"schemathesis: {summary}")
    assert report["complete"], summary
    assert report["test_cases"]["generated"] >= 10 * EXAMPLES_PER_OPERATION, summary
    assert failures == {}, f"{summary}\n{report['output'][-20000:]}"
    assert report["errors"] == [], f"{summary}\n{report['output'][-20000:]}"
