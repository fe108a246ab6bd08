"""`aegis rollout status|history|pause|resume|promote|abort`: rollouts from the command line."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from typing import Any

from controlplane.client import EXIT_USAGE, AegisClient, ApiError, report
from controlplane.rollout.explained import check_lines

# `rollout status --wait` exit codes, as Argo's `status --timeout`: CI tells them apart.
WAIT_SUCCEEDED, WAIT_ROLLED_BACK, WAIT_STOPPED = 0, 1, 2
WAIT_POLL_SECONDS = 1.0


def add_commands(commands: Any) -> None:
    rollout = commands.add_parser("rollout", help="watch and steer canary rollouts")
    actions = rollout.add_subparsers(title="rollout commands")
    status = actions.add_parser(
        "status",
        help="one model's rollout, or all of them",
        description="With --wait: exit 0 when the rollout succeeds, 1 when it is rolled back, "
        "2 when it pauses (an operator is needed) or the timeout passes.",
    )
    status.add_argument("model", nargs="?")
    status.add_argument("--watch", action="store_true", help="redraw every second until Ctrl-C")
    status.add_argument("--wait", action="store_true", help="wait until the rollout ends or pauses (CI)")
    status.add_argument(
        "--timeout", type=duration, help="with --wait: give up after this long (30, 90s, 5m)"
    )
    status.add_argument("--json", action="store_true", help="the API's JSON")
    status.set_defaults(run=_status)
    history = actions.add_parser("history", help="every rollout of a model, newest first")
    history.add_argument("model")
    history.add_argument("rollout", nargs="?", type=int, help="one rollout's id: show its decisions")
    history.add_argument("--limit", type=int, default=50, help="how many rollouts or decisions")
    history.add_argument("--json", action="store_true", help="the API's JSON")
    history.set_defaults(run=_history)
    for name, help_text in (
        ("pause", "hold the rollout where it is (a timed pause keeps the time it has left)"),
        ("resume", "continue a paused rollout (past a manual pause step)"),
        ("promote", "complete the current step and move to the next; --full goes straight to prod"),
        ("abort", "roll the canary back now"),
    ):
        command = actions.add_parser(name, help=help_text)
        command.add_argument("model")
        command.add_argument("--reason", help="recorded with the decision, beside your name")
        command.add_argument("--json", action="store_true")
        if name == "promote":
            command.add_argument("--full", action="store_true")
        command.set_defaults(run=_command, command=name)


def duration(text: str) -> float:
    found = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)?", text.strip())
    if found is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration: give seconds (30) or 90s, 5m, 1h")
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[found.group(2) or "s"]
    return float(found.group(1)) * scale


def _status(args: argparse.Namespace) -> int:
    client = AegisClient()
    if args.wait:
        if not args.model:
            print("aegis: --wait needs a model: aegis rollout status MODEL --wait", file=sys.stderr)
            return EXIT_USAGE
        return _wait(client, args.model, timeout=args.timeout, as_json=args.json)
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


def _wait(client: AegisClient, model: str, *, timeout: float | None, as_json: bool) -> int:
    """Poll until the rollout ends or pauses: 0 succeeded, 1 rolled back, 2 paused or timed out."""
    deadline = None if timeout is None else time.monotonic() + timeout
    last_message = ""
    while True:
        try:
            document = client.call("GET", f"/v1/rollouts/{model}")
        except ApiError as exc:
            return report(exc)
        if not as_json and document["message"] != last_message:
            last_message = document["message"]
            print(
                f"{document['phase']}: step {_step(document)}, canary weight "
                f"{document['canary_weight']}%: {last_message}",
                flush=True,
            )
        phase = document["phase"]
        if phase in ("succeeded", "rolled_back", "paused"):
            if as_json:
                print(json.dumps(document, indent=2))
            if phase == "paused":
                print(
                    f"aegis: the rollout of {model} is paused: {document['message']}; "
                    f"resume or promote it with `aegis rollout resume|promote {model}`",
                    file=sys.stderr,
                )
            return {"succeeded": WAIT_SUCCEEDED, "rolled_back": WAIT_ROLLED_BACK}.get(phase, WAIT_STOPPED)
        if deadline is not None and time.monotonic() >= deadline:
            if as_json:
                print(json.dumps(document, indent=2))
            print(f"aegis: the rollout of {model} is still {phase} after {timeout:g}s", file=sys.stderr)
            return WAIT_STOPPED
        time.sleep(
            WAIT_POLL_SECONDS
            if deadline is None
            else max(0.0, min(WAIT_POLL_SECONDS, deadline - time.monotonic()))
        )


def _render_status(client: AegisClient, model: str | None, *, as_json: bool) -> str:
    if model:
        document = client.call("GET", f"/v1/rollouts/{model}")
        return json.dumps(document, indent=2) if as_json else describe(document)
    listing = client.call("GET", "/v1/rollouts")
    if as_json:
        return json.dumps(listing, indent=2)
    rows: list[tuple[str, ...]] = [("MODEL", "PHASE", "STEP", "CANARY", "WEIGHT", "ACKED", "MESSAGE")]
    for r in listing["rollouts"]:
        rows.append(
            (
                r["model_name"],
                r["phase"],
                _step(r),
                r["canary_version"],
                str(r["canary_weight"]),
                "-" if r.get("finished") else "yes" if r["acknowledged"] else "no",
                r["message"][:60],
            )
        )
    return table(rows) if len(rows) > 1 else "no rollouts yet"


def _step(document: dict[str, Any]) -> str:
    return f"{document['step']}/{document['steps']}" if document["steps"] else str(document["step"])


def _served(document: dict[str, Any]) -> str:
    """What Envoy serves beside what the rollout set (Argo's setWeight / actualWeight)."""
    shares = document.get("served_canary_weights")
    if shares is None:
        return ""
    if not shares:
        return "no Envoy node has polled"
    if document.get("actual_canary_weight") is not None:
        return f"Envoy serves {document['actual_canary_weight']}%"
    known = ", ".join(
        f"{'?' if s['canary_weight'] is None else str(s['canary_weight']) + '%'} on {s['nodes']}"
        for s in shares
    )
    return f"Envoy nodes serve {known}"


def describe(document: dict[str, Any]) -> str:
    served = _served(document)
    if document.get("finished"):
        state = f"finished ({document['phase']}) at step {_step(document)}"
        weights = f"canary weight {document['canary_weight']}%" + (f" ({served})" if served else "")
    else:
        state = f"step {_step(document)}"
        ack = "acknowledged by Envoy" if document["acknowledged"] else "waiting for Envoy"
        weights = (
            f"canary weight {document['canary_weight']}%" + (f" ({served})" if served else "") + f"  {ack}"
        )
    lines = [
        f"{document['model_name']}: {document['phase']}  (policy {document['policy']})",
        f"  stable {document['stable_version']} -> canary {document['canary_version']}  {state}  {weights}",
        f"  failures {document['failures']}  no-data streak {document['inconclusive_streak']}  "
        f"error streak {document['error_streak']}",
        f"  {document['message']}",
        "  decisions (newest first):",
    ]
    lines.extend(_decision_lines(document.get("decisions", [])[:10]))
    return "\n".join(lines)


def _decision_lines(decisions: list[dict[str, Any]]) -> list[str]:
    lines = []
    for decision in decisions:
        by = f" (by {decision['actor']})" if decision.get("actor") else ""
        lines.append(
            f"    {decision['at'][:10]} {decision['at'][11:19]}  w={decision['canary_weight']:<3} "
            f"{decision['reason']}{by}"
        )
        lines.extend(check_lines(decision.get("checks") or []))
    return lines


def _history(args: argparse.Namespace) -> int:
    client = AegisClient()
    limit = f"?limit={max(1, min(args.limit, 500))}"
    try:
        if args.rollout is not None:
            document = client.call("GET", f"/v1/rollouts/{args.model}/history/{args.rollout}{limit}")
        else:
            document = client.call("GET", f"/v1/rollouts/{args.model}/history{limit}")
    except ApiError as exc:
        return report(exc)
    if args.json:
        print(json.dumps(document, indent=2))
    elif args.rollout is not None:
        print(describe({**document, "decisions": []}).rsplit("\n", 1)[0])
        print("  decisions (newest first):")
        print("\n".join(_decision_lines(document["decisions"])))
    else:
        rows: list[tuple[str, ...]] = [
            ("ID", "STARTED", "BY", "STABLE", "CANARY", "PHASE", "STEP", "DECISIONS", "MESSAGE")
        ]
        for r in document["rollouts"]:
            rows.append(
                (
                    str(r["id"]),
                    r["started_at"][:19],
                    r["started_by"],
                    r["stable_version"],
                    r["canary_version"],
                    r["phase"],
                    _step(r),
                    str(r["decision_count"]),
                    r["message"][:50],
                )
            )
        print(table(rows) if len(rows) > 1 else f"{args.model} has had no rollout")
    return 0


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
