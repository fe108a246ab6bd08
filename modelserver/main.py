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

from modelserver.errors import ModelServerError
from modelserver.faults import checked_faults
from modelserver.settings import (
    ADMIN_TOKEN_ENV,
    DEFAULT_REGISTRY_URL,
    ModelServerSettings,
    announced_address,
)
from registry.signing import Keyring, keyring_from_env


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
    # The server (aiohttp and all) is imported by the command that runs it, not by every
    # `aegis` command whose parser lists this one's flags.
    from modelserver.server import serve

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await serve(settings, keyring=keyring, stop=stop)
