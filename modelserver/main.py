"""`aegis model-server`: its flags, settings from flags and environment, signals and the exit code.

Exit codes: 0 after a clean SIGTERM/SIGINT, 1 when the server refuses to start
(the artifact does not verify or cannot be fetched), 2 for bad flags.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path

from modelserver.app import ADMIN_TOKEN_ENV
from modelserver.arguments import port_from, positive_int
from modelserver.errors import ModelServerError
from modelserver.faults import checked_faults
from modelserver.server import serve
from modelserver.settings import DEFAULT_REGISTRY_URL, ModelServerSettings, announced_address
from registry.signing import Keyring, keyring_from_env


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model name in the registry")
    parser.add_argument("--version", required=True, help="the version to download, verify and serve")
    parser.add_argument(
        "--port", required=True, type=port_from(0), help="port to serve on (0: any free port)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--advertise-address",
                        help="IP announced to Aegis for Envoy to reach (default: --host; required "
                        "when --host is 0.0.0.0)")
    parser.add_argument(
        "--registry-url", help=f"Aegis base URL (default: $AEGIS_URL or {DEFAULT_REGISTRY_URL}); "
        "the operator token comes from $AEGIS_TOKEN",
    )
    parser.add_argument("--ttl-seconds", type=positive_int, default=10,
                        help="endpoint registration TTL; renewed every ttl/3 (default 10)")
    parser.add_argument("--error-rate", type=float, default=0.0,
                        help="fraction 0..1 of requests answered 500")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="milliseconds added to every answer")
    parser.add_argument("--quality", type=float, default=0.95, help="the top_k_recall quality gauge (0..1)")
    parser.add_argument("--data-dir", type=Path,
                        help="where to keep the artifact (default: a temporary folder)")
    parser.add_argument(
        "--admin-token", help=f"token for /admin/faults (default: ${ADMIN_TOKEN_ENV}; prefer the "
        "environment: a flag is visible to other users in the process list)",
    )


def settings_from_args(args: argparse.Namespace, env: Mapping[str, str]) -> ModelServerSettings:
    """Flags win over the environment; raises FaultValueError for out-of-range fault flags."""
    return ModelServerSettings(
        model_name=args.model,
        version=args.version,
        port=args.port,
        host=args.host,
        advertise_address=args.advertise_address,
        registry_url=args.registry_url or env.get("AEGIS_URL") or DEFAULT_REGISTRY_URL,
        token=env.get("AEGIS_TOKEN", ""),
        ttl_seconds=args.ttl_seconds,
        faults=checked_faults(args.error_rate, args.latency_ms, args.quality),
        data_dir=args.data_dir,
        admin_token=args.admin_token or env.get(ADMIN_TOKEN_ENV) or None,
    )


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM/SIGINT; print why and return 1 if the server refuses to start."""
    try:
        settings = settings_from_args(args, os.environ)
        announced_address(settings)
    except ValueError as exc:  # out-of-range faults, an address Envoy cannot reach
        print(f"aegis model-server: {exc}", file=sys.stderr)
        return 2
    keyring = keyring_from_env(os.environ)
    try:
        asyncio.run(_serve_until_signalled(settings, keyring=keyring))
    except ModelServerError as exc:
        print(f"aegis model-server: refusing to start {settings.model_name} {settings.version}: {exc}",
              file=sys.stderr)
        return 1
    return 0


async def _serve_until_signalled(settings: ModelServerSettings, *, keyring: Keyring) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await serve(settings, keyring=keyring, stop=stop)
