"""The demo's live view: stages, the rollout, per-arm traffic and each decision with its reason (pure)."""

from __future__ import annotations

from typing import Any

from controlplane.demo.loadgen import ArmStats
from controlplane.rollout_cli import table


def render(
    *,
    title: str,
    model: dict[str, Any] | None,
    rollout: dict[str, Any] | None,
    arms: list[ArmStats],
    elapsed: float,
    log: list[str],
    console: str = "",
) -> str:
    lines = [f"Aegis demo: {title}   ({elapsed:5.1f} s)", *([console] if console else []), ""]
    if model is not None:
        rows: list[tuple[str, ...]] = [("VERSION", "STAGE", "SHA256", "KEY")]
        rows += [(v["version"], v["stage"], v["checksum"][:12], v["key_id"]) for v in model["versions"]]
        lines += [table(rows), ""]
    if rollout is not None:
        lines.append(
            f"rollout of {rollout['canary_version']} (policy {rollout['policy']}): {rollout['phase']}, "
            f"step {rollout['step']}/{rollout['steps']}, canary weight {rollout['canary_weight']}%, "
            f"{'acknowledged by Envoy' if rollout['acknowledged'] else 'waiting for Envoy'}"
        )
        lines.append("")
    rows = [("ANSWERED BY", "REQ/S", "ERRORS", "P99 MS")]
    rows += [(a.version, f"{a.rate:.1f}", f"{a.error_rate:.1%}", f"{a.p99_ms:.1f}") for a in arms]
    lines += [table(rows) if arms else "no traffic yet", ""]
    if rollout is not None:
        lines.append("decisions (newest first):")
        for decision in rollout.get("decisions", [])[:6]:
            lines.append(
                f"  {decision['at'][11:19]}  w={decision['canary_weight']:<3} {decision['reason'][:150]}"
            )
        lines.append("")
    lines += log[-6:]
    return "\n".join(lines)
