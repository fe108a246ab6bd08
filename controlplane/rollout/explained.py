"""Compared checks as text: a decision's evidence for `aegis rollout status` and `aegis policy replay`."""

from __future__ import annotations

from typing import Any


def check_lines(checks: list[dict[str, Any]], indent: str = "      ") -> list[str]:
    """Each check against the baseline: its verdict and evidence, then per arm the counts and rates."""
    lines = []
    for check in checks:
        evidence = ""
        if check.get("e_value") is not None:
            evidence = (
                f"  e-value {check['e_value']:.3g} (fails at {check['threshold']:g}), "
                f"within {check['tolerance']}: {check['pass_e_value']:.3g}"
            )
        ratio = check.get("observed_ratio")
        shown_ratio = f"  ratio {ratio:.2f}x" if ratio is not None else ""
        health = "" if check.get("baseline_healthy", True) else "  baseline unhealthy"
        lines.append(f"{indent}{check['check']} [{check['verdict']}] counting {check['counted']}:"
                     f"{evidence}{shown_ratio}{health}")
        for arm in check.get("arms", []):
            lines.append(
                f"{indent}  {arm['arm']:<8} {arm['version']:<10} tick {_counts(arm['tick'])}  "
                f"total {_counts(arm['total'])}"
            )
    return lines


def _counts(counts: dict[str, Any]) -> str:
    rate = counts.get("rate")
    shown = "-" if rate is None else f"{rate:.2%}"
    return f"{counts['events']}/{counts['requests']} ({shown})"
