"""`aegis policy replay`: load a policy, ask Prometheus at past instants, print the decisions."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from datetime import datetime

DEFAULT_PROMETHEUS = "http://127.0.0.1:9090"


def instant(text: str) -> float:
    """Unix seconds, or an RFC 3339 time with its offset (Z for UTC)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time: give Unix seconds or RFC 3339 such as 2026-12-01T10:00:00Z"
        ) from None
    if parsed.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no offset: add Z for UTC or +01:00")
    return parsed.timestamp()


def run(args: argparse.Namespace) -> int:
    # Here, not at the top: `instant` is in every command's parser, Prometheus's client is not.
    from controlplane.metrics.prometheus import PrometheusSource
    from controlplane.rollout.policy import first_matching
    from controlplane.rollout.policy_files import load_policy_paths
    from controlplane.rollout.replay import render_json, render_text, replay, tick_times

    policy_set = load_policy_paths(args.policy_file)
    for error in policy_set.errors:
        print(error, file=sys.stderr)
    if not policy_set.ok:
        return 1
    policy = first_matching(policy_set.policies, args.model)
    if policy is None:
        print(f"aegis: no policy in {args.policy_file} matches {args.model!r}", file=sys.stderr)
        return 1
    if args.end < args.start:
        print("aegis: --to is before --from", file=sys.stderr)
        return 2
    step = args.step or policy.analysis.interval_seconds
    if step <= 0:
        print("aegis: --step must be positive", file=sys.stderr)
        return 2
    url = args.prometheus or os.environ.get("AEGIS_PROMETHEUS_URL") or DEFAULT_PROMETHEUS
    source = PrometheusSource(url)
    try:
        ticks = asyncio.run(replay(
            policy, model=args.model, stable_version=args.stable, canary_version=args.canary,
            source=source, times=tick_times(args.start, args.end, step),
        ))
    finally:
        source.close()
    print(render_json(ticks) if args.json else render_text(ticks, policy=policy, model=args.model))
    return 0
