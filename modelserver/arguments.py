"""The flags of `aegis model-server` and `aegis announce`, and the argument types they share.

Apart from the servers they run: every `aegis` command builds the whole parser, and none
should pay for importing a web server to print its help.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from modelserver.settings import ADMIN_TOKEN_ENV, DEFAULT_REGISTRY_URL


def port_from(lowest: int) -> Callable[[str], int]:
    """A port argument from `lowest` (0 where "any free port" makes sense) to 65535."""

    def port(text: str) -> int:
        value = int(text)
        if not lowest <= value <= 65535:
            raise argparse.ArgumentTypeError(f"{value} is not a port ({lowest}..65535)")
        return value

    return port


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def add_model_server_arguments(parser: argparse.ArgumentParser) -> None:
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


def add_announce_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model name in the registry")
    parser.add_argument("--version", required=True, help="the registered version the server serves")
    parser.add_argument("--address", required=True, help="IP address Envoy reaches the server at")
    parser.add_argument("--port", required=True, type=port_from(1), help="port Envoy reaches the server at")
    parser.add_argument("--health", required=True,
                        help="http(s) URL that answers 2xx while the server can serve")
    parser.add_argument("--ttl-seconds", type=positive_int, default=10,
                        help="endpoint TTL in Aegis: without a renewal it leaves after this (default 10)")
    parser.add_argument("--interval-seconds", type=float,
                        help="seconds between health checks (default and at most: ttl/3)")
    parser.add_argument("--health-timeout-seconds", type=float,
                        help="a health answer slower than this is a failure "
                        "(default 2, at most the interval)")
    parser.add_argument("--registry-url",
                        help=f"Aegis base URL (default: $AEGIS_URL or {DEFAULT_REGISTRY_URL}); "
                        "the operator token comes from $AEGIS_TOKEN")
