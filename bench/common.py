"""Helpers shared by the benchmarks: free ports, a real `aegis serve`, memory readings, the JSON line."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ADMIN_TOKEN = "bench-admin-token"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_bytes(pid: int, field: str = "VmRSS") -> int:
    """Resident memory (VmRSS) or its peak so far (VmHWM) of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not found for pid {pid}")


@contextmanager
def running_server(data_dir: Path, **env: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`aegis serve` on a free port; stopped by PID on exit."""
    port = free_port()
    full_env = {
        **os.environ,
        "AEGIS_LISTEN": f"127.0.0.1:{port}",
        "AEGIS_DATA_DIR": str(data_dir),
        "AEGIS_API_TOKENS": f"admin:{ADMIN_TOKEN}",
        "AEGIS_MODEL_SIGN_KEY": "bench-sign-key",
        "AEGIS_LOG_LEVEL": "WARNING",
        **env,
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "controlplane.cli", "serve"], env=full_env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process)
        yield url, process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_healthy(url: str, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            stderr = process.stderr.read().decode() if process.stderr else ""
            raise RuntimeError(f"aegis serve exited early: {stderr[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("aegis serve did not become healthy")


def report(
    name: str, *, value: float, unit: str, baseline: str, baseline_value: float, target: float,
    higher_is_better: bool = True, details: dict[str, Any] | None = None,
) -> None:
    """Print the one JSON line every benchmark ends with; ratio = value / baseline_value."""
    ratio = value / baseline_value if baseline_value else float("nan")
    meets = ratio >= target if higher_is_better else value <= target
    print(json.dumps({
        "name": name, "value": round(value, 3), "unit": unit, "baseline": baseline,
        "baseline_value": round(baseline_value, 3), "ratio": round(ratio, 3), "target": target,
        "meets_target": meets, "details": details or {},
    }))
