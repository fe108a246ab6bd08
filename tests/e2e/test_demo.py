"""The README's main command, run on this checkout: a healthy rollout succeeds, a faulty one rolls back."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.processes import ROOT


def processes_mentioning(text: str) -> list[str]:
    """Command lines of running processes that mention `text` (the demo's work directory)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in command:
            found.append(command)
    return found


@pytest.mark.parametrize("mode", [[], ["--alert"]], ids=["analysis", "alert"])
def test_the_demo_promotes_v2_rolls_back_v3_and_leaves_nothing_running(
    tmp_path: Path, mode: list[str]
) -> None:
    workdir = tmp_path / "demo"
    result = subprocess.run(
        [str(ROOT / "run"), "demo", *mode, "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "v2 (healthy): succeeded" in result.stdout
    assert "rolled_back by " + ("an Alertmanager alert" if mode else "the canary analysis") in result.stdout
    assert "result: OK, both outcomes happened" in result.stdout
    # The console's address and a token to sign in with, for a newcomer's browser.
    console = next(line for line in result.stdout.splitlines() if "watch the rollouts in a browser" in line)
    assert re.search(
        r"console: http://127\.0\.0\.1:\d+/ui/ \(sign in with the viewer token \S{20,}\)$", console
    ), console
    reason = next(line for line in result.stdout.splitlines() if line.strip().startswith("reason:"))
    assert ("AegisCanaryHighErrorRate" if mode else "failureLimit") in reason
    assert processes_mentioning(str(workdir)) == []
