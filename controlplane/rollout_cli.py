"""`aegis rollout status|pause|resume|promote|abort`: rollouts from the command line."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from controlplane.client import AegisClient, ApiError, report


def add_commands(commands: Any) -> None:
    rollout = commands.add_parser("rollout", help="watch and steer canary rollouts")
    actions = rollout.add_subparsers(title="rollout commands")
    status = actions.add_parser("status", help="one model's rollout, or all of them")
    status.add_argument("model", nargs="?")
    status.add_argument("--watch", action="store_true", help="redraw every second until Ctrl-C")
    status.add_argument("--json", action="store_true", help="the API's JSON")
    status.set_defaults(run=_status)
    for name, help_text in (
        ("pause", "hold the rollout where it is"),
        ("resume", "continue a paused rollout (past a manual pause step)"),
        ("promote", "skip the current step; --full goes straight to prod"),
        ("abort", "roll the canary back now"),
    ):
        command = actions.add_parser(name, help=help_text)
        command.add_argument("model")
        command.add_argument("--reason", help="recorded with the decision")
        command.add_argument("--json", action="store_true")
        if name == "promote":
            command.add_argument("--full", action="store_true")
        command.set_defaults(run=_command, command=name)


def _status(args: argparse.Namespace) -> int:
    client = AegisClient()
    try:
        while True:
            text = _render_status(client, args.model, as_json=args.json)
            if args.watch and sys.stdout.isatty():
                sys.stdout.write("\033[H\033[2J")
            print(text, flush=True)
            if not args.watch:
                return 0
            time.sleep(1)
    except ApiError as exc:
        return report(exc)
    except KeyboardInterrupt:
        return 0


def _render_status(client: AegisClient, model: str | None, *, as_json: bool) -> str:
    if model:
        document = client.call("GET", f"/v1/rollouts/{model}")
        return json.dumps(document, indent=2) if as_json else describe(document)
    listing = client.call("GET", "/v1/rollouts")
    if as_json:
        return json.dumps(listing, indent=2)
    rows: list[tuple[str, ...]] = [("MODEL", "PHASE", "STEP", "CANARY", "WEIGHT", "ACKED", "MESSAGE")]
    for r in listing["rollouts"]:
        step = f"{r['step']}/{r['steps']}" if r["steps"] else str(r["step"])
        rows.append(
            (
                r["model_name"],
                r["phase"],
                step,
                r["canary_version"],
                str(r["canary_weight"]),
                "yes" if r["acknowledged"] else "no",
                r["message"][:60],
            )
        )
    return table(rows) if len(rows) > 1 else "no rollouts yet"


def describe(document: dict[str, Any]) -> str:
    lines = [
        f"{document['model_name']}: {document['phase']}  (policy {document['policy']})",
        f"  stable {document['stable_version']} -> canary {document['canary_version']}  "
        f"step {document['step']}/{document['steps']}  canary weight {document['canary_weight']}%  "
        f"{'acknowledged by Envoy' if document['acknowledged'] else 'waiting for Envoy'}",
        f"  failures {document['failures']}  no-data streak {document['inconclusive_streak']}  "
        f"error streak {document['error_streak']}",
        f"  {document['message']}",
        "  decisions (newest first):",
    ]
    for decision in document.get("decisions", [])[:10]:
        lines.append(f"    {decision['at'][11:19]}  w={decision['canary_weight']:<3} {decision['reason']}")
    return "\n".join(lines)


def table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    )


def _command(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {}
    if args.reason:
        body["reason"] = args.reason
    if getattr(args, "full", False):
        body["full"] = True
    try:
        document = AegisClient().call("POST", f"/v1/rollouts/{args.model}/{args.command}", body)
    except ApiError as exc:
        return report(exc)
    print(json.dumps(document, indent=2) if args.json else describe(document))
    return 0
