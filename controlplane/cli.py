"""The `aegis` command line: serve, sign, verify and import (more subcommands join later)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

# Only what every command needs to build the parser: a command's own modules are imported
# by its handler below.
from controlplane import ops_cli, replay_cli, rollout_cli
from modelserver.arguments import add_announce_arguments, add_model_server_arguments
from registry.folders import FolderError, VersionFolder, sign_folder, verify_folder
from registry.signing import SigningConfigError, keyring_from_env


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        return int(args.run(args))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if not isinstance(exc, _input_errors()):
            raise
        print(f"aegis: {exc}", file=sys.stderr)
        return 2


def _input_errors() -> tuple[type[Exception], ...]:
    """Errors that say what to fix in the settings, keys or folders: exit 2 with the message.
    Imported only once one was raised, since settings bring in most of the server."""
    from controlplane.cluster.identity import SecondReplica
    from controlplane.settings import SettingsError

    return SettingsError, SigningConfigError, FolderError, SecondReplica


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aegis", description="Model registry and canary rollouts")
    commands = parser.add_subparsers(title="commands")

    serve = commands.add_parser("serve", help="run the registry, control plane and /metrics")
    serve.add_argument("--config", type=Path, help="YAML file of AEGIS_* settings (env wins)")
    serve.set_defaults(run=_serve)

    sign = commands.add_parser("sign", help="hash and sign a version folder, writing metadata.json")
    sign.add_argument("folders", nargs="+", type=Path, help="model_registry/<model>/<version>/")
    sign.set_defaults(run=_sign)

    verify = commands.add_parser("verify", help="check a version folder against its metadata.json")
    verify.add_argument("folders", nargs="+", type=Path)
    verify.set_defaults(run=_verify)

    registry = commands.add_parser("registry", help="registry tree commands")
    registry_commands = registry.add_subparsers(title="registry commands")
    importer = registry_commands.add_parser("import", help="register signed folders of a tree")
    importer.add_argument("root", type=Path, help="the model_registry/ folder")
    importer.add_argument("--watch", action="store_true", help="keep registering new folders")
    importer.add_argument("--json", action="store_true", help="one JSON line per folder")
    importer.set_defaults(run=_import)

    model_server = commands.add_parser(
        "model-server", help="download, verify and serve one model version (the reference model server)"
    )
    add_model_server_arguments(model_server)
    model_server.set_defaults(run=_model_server)

    announce = commands.add_parser(
        "announce", help="keep any HTTP model server's endpoint in Aegis while its health URL answers 2xx"
    )
    add_announce_arguments(announce)
    announce.set_defaults(run=_announce)

    rollout_cli.add_commands(commands)
    demo = commands.add_parser("demo", help="a real rollout on this machine: one succeeds, one rolls back")
    demo.add_argument("--alert", action="store_true", help="roll back from an Alertmanager alert instead")
    demo.add_argument("--workdir", type=Path, help="keep every process's config and log here")
    demo.set_defaults(run=_demo)
    ops_cli.add_commands(commands)

    policy = commands.add_parser("policy", help="rollout policy commands")
    policy_commands = policy.add_subparsers(title="policy commands")
    validate = policy_commands.add_parser("validate", help="check policy files: file:line: field: message")
    validate.add_argument("files", nargs="+", type=Path, metavar="FILE", help="a policy file or folder")
    validate.set_defaults(run=_policy_validate)
    replay = policy_commands.add_parser(
        "replay", help="the decisions a policy would have taken over Prometheus history, tick by tick",
        description="Reads the counters at every tick from --from to --to (instant queries at those "
        "times) and runs the rollout's analysis and state machine on them; nothing is changed anywhere.",
    )
    replay.add_argument("policy_file", type=Path, metavar="POLICY", help="a policy file or folder")
    replay.add_argument("--model", required=True, help="the model; the first policy matching it applies")
    replay.add_argument("--stable", required=True, help="the baseline (prod) version")
    replay.add_argument("--canary", required=True, help="the canary version")
    replay.add_argument("--from", dest="start", required=True, type=replay_cli.instant,
                        help="Unix seconds or RFC 3339 (2026-12-01T10:00:00Z)")
    replay.add_argument("--to", dest="end", required=True, type=replay_cli.instant)
    replay.add_argument("--step", type=rollout_cli.duration, help="seconds between ticks (default: "
                        "the policy's analysis interval)")
    replay.add_argument("--prometheus", help="Prometheus's URL (default: AEGIS_PROMETHEUS_URL)")
    replay.add_argument("--json", action="store_true", help="the ticks as JSON")
    replay.set_defaults(run=replay_cli.run)
    return parser


def _serve(args: argparse.Namespace) -> int:
    # The whole server is imported by the command that runs it: every other command (and
    # `--help`) starts in a fraction of the time.
    from controlplane.serve_command import serve

    return serve(config_file=args.config)


def _demo(args: argparse.Namespace) -> int:
    from controlplane.demo.scenario import run_demo

    return run_demo(alert=args.alert, workdir=args.workdir)


def _sign(args: argparse.Namespace) -> int:
    keyring = keyring_from_env(os.environ)
    for path in args.folders:
        document = sign_folder(VersionFolder.open(path), keyring)
        print(
            f"signed {document['model_name']} {document['version']}: sha256 {document['checksum']}"
            f" key {document['key_id']} -> {path / 'metadata.json'}"
        )
    return 0


def _verify(args: argparse.Namespace) -> int:
    keyring = keyring_from_env(os.environ)
    has_keys = bool(keyring.key_ids)
    if not has_keys:
        print("aegis: no key configured: checking checksums only", file=sys.stderr)
    failed = False
    for path in args.folders:
        folder = VersionFolder.open(path)
        problems = verify_folder(folder, keyring if has_keys else None)
        if problems:
            failed = True
            print(f"FAIL {path}: " + "; ".join(problems))
        else:
            print(f"ok   {path}")
    return 1 if failed else 0


def _model_server(args: argparse.Namespace) -> int:
    from controlplane.observability import configure_logging
    from modelserver import main as model_server_main

    configure_logging(os.environ.get("AEGIS_LOG_LEVEL", "INFO"))
    return model_server_main.run(args)


def _announce(args: argparse.Namespace) -> int:
    from controlplane.observability import configure_logging
    from modelserver import sidecar

    configure_logging(os.environ.get("AEGIS_LOG_LEVEL", "INFO"))
    return sidecar.run(args)


def _import(args: argparse.Namespace) -> int:
    from registry.importer import ImportOutcome, import_tree

    base_url = os.environ.get("AEGIS_URL", "http://127.0.0.1:8080")
    token = os.environ.get("AEGIS_TOKEN", "")
    if not args.root.is_dir():
        print(f"aegis: {args.root} is not a folder", file=sys.stderr)
        return 2

    def report(outcome: ImportOutcome) -> None:
        if args.json:
            print(json.dumps({"folder": str(outcome.folder), "status": outcome.status,
                              "detail": outcome.detail}), flush=True)
        else:
            print(f"{outcome.status:<19} {outcome.folder}: {outcome.detail}", flush=True)

    outcomes = asyncio.run(
        import_tree(args.root, base_url=base_url, token=token, report=report, watch=args.watch)
    )
    return 1 if any(o.failed for o in outcomes) else 0


def _policy_validate(args: argparse.Namespace) -> int:
    from controlplane.rollout.policy_files import load_policy_paths

    failed = False
    for path in args.files:
        policy_set = load_policy_paths(path)
        for error in policy_set.errors:
            print(error, file=sys.stderr)
        if policy_set.ok:
            names = ", ".join(policy.name for policy in policy_set.policies)
            print(f"ok {path}: {len(policy_set.policies)} policies ({names})")
        failed = failed or not policy_set.ok
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
