"""The `aegis` command line: serve, sign, verify and import (more subcommands join later)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

from controlplane import ops_cli, rollout_cli
from controlplane.app import create_app
from controlplane.cluster.identity import SecondReplica
from controlplane.observability import configure_logging
from controlplane.rollout.policy_files import load_policy_paths
from controlplane.settings import Settings, SettingsError, kept_secret, load_settings
from modelserver import main as model_server_main
from modelserver import sidecar
from registry.auth import TokenTable
from registry.folders import FolderError, VersionFolder, sign_folder, verify_folder
from registry.importer import ImportOutcome, import_tree
from registry.signing import SigningConfigError, keyring_from_env

log = logging.getLogger("aegis")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        return int(args.run(args))
    except (SettingsError, SigningConfigError, FolderError, SecondReplica) as exc:
        print(f"aegis: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


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
    model_server_main.add_arguments(model_server)
    model_server.set_defaults(run=_model_server)

    announce = commands.add_parser(
        "announce", help="keep any HTTP model server's endpoint in Aegis while its health URL answers 2xx"
    )
    sidecar.add_arguments(announce)
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
    return parser


def _serve(args: argparse.Namespace) -> int:
    configure_logging(os.environ.get("AEGIS_LOG_LEVEL", "INFO"))
    settings = load_settings(config_file=args.config)
    settings = _with_bootstrap_token(settings)
    app = create_app(settings)
    app.on_startup.append(_tune_garbage_collection)
    web.run_app(
        app, host=settings.server.host, port=settings.server.port,
        access_log=None, print=lambda message: log.info(message),
        # Held xDS long-polls end within the hold time; do not wait a minute for them.
        shutdown_timeout=2.0,
        # A fleet of Envoys reconnecting at once must not be refused at the listen queue.
        backlog=4096,
    )
    return 0


# Objects allocated (net) between young-generation collections; CPython's default is 700.
# Thousands of ADS streams keep a large live heap, and every fan-out leaves objects
# that outlive a young collection (each stream's pending read and wait): at 700, a
# full collection ran about once per weight change at 5,000 streams and held the
# event loop 0.4-0.7 s of a ~1 s fan-out. At 10,000 it runs every dozen changes or
# so; a young collection stays a few milliseconds, and garbage in cycles waits a
# little longer (at most this many objects).
YOUNG_COLLECTION_THRESHOLD = 100_000


async def _tune_garbage_collection(_app: web.Application) -> None:
    # Everything built at start-up lives as long as the process: moved out of the
    # collector's reach, full collections stop scanning it on every xDS poll's garbage.
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, middle, old)


def _with_bootstrap_token(settings: Settings) -> Settings:
    """With no tokens configured, make an admin token in the data directory, never in the log."""
    if settings.security.tokens.entries:
        return settings
    path = settings.server.data_dir / "admin.token"
    tokens = TokenTable.parse(f"admin:{kept_secret(path)}")
    log.warning(
        "AEGIS_API_TOKENS is not set: an admin token is in %s (use it as AEGIS_TOKEN)", path
    )
    return dataclasses.replace(
        settings, security=dataclasses.replace(settings.security, tokens=tokens)
    )


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
    configure_logging(os.environ.get("AEGIS_LOG_LEVEL", "INFO"))
    return model_server_main.run(args)


def _announce(args: argparse.Namespace) -> int:
    configure_logging(os.environ.get("AEGIS_LOG_LEVEL", "INFO"))
    return sidecar.run(args)


def _import(args: argparse.Namespace) -> int:
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
