"""Helpers shared by the benchmarks: free ports, a real `aegis serve`, memory readings, the JSON line."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from controlplane.demo.processes import AegisServer, free_port

__all__ = ["ADMIN_TOKEN", "free_port", "report", "rss_bytes", "running_server"]

ADMIN_TOKEN = "bench-admin-token"


def rss_bytes(pid: int, field: str = "VmRSS") -> int:
    """Resident memory (VmRSS) or its peak so far (VmHWM) of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not found for pid {pid}")


@contextmanager
def running_server(data_dir: Path, **env: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`aegis serve` on a free port (its log in data_dir); stopped by PID on exit."""
    server = AegisServer({
        "AEGIS_DATA_DIR": str(data_dir),
        "AEGIS_API_TOKENS": f"admin:{ADMIN_TOKEN}",
        "AEGIS_MODEL_SIGN_KEY": "bench-sign-key",
        "AEGIS_LOG_LEVEL": "WARNING",
        **env,
    }).start()
    try:
        assert server.process is not None
        yield server.url, server.process
    finally:
        server.stop()


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
