"""The operator's daily commands: models, versions, register, promote, rollback, validate, traffic, nodes.

Each talks to the HTTP API (`AEGIS_URL`, `AEGIS_TOKEN`), prints tables by default and
the API's JSON with `--json`. Exit codes scripts can trust: 0 done, 1 the server
refused (the message says why), 2 bad usage, 3 Aegis could not be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from controlplane.client import EXIT_REFUSED, EXIT_USAGE, AegisClient, ApiError, report
from controlplane.rollout_cli import table
from registry.errors import error_message


def add_commands(commands: Any) -> None:
    def command(name: str, help_text: str, run: Callable[[argparse.Namespace, AegisClient], Any]) -> Any:
        parser = commands.add_parser(name, help=help_text)
        parser.add_argument("--json", action="store_true", help="print the API's JSON")
        parser.set_defaults(run=lambda args: _run(args, run))
        return parser

    command("models", "registered models with their prod and canary versions", _models)
    command("versions", "a model's versions, stages and signatures", _versions).add_argument("model")
    register = command("register", "upload and register an artifact (signed by the server)", _register)
    register.add_argument("model")
    register.add_argument("version")
    register.add_argument("file", type=Path)
    register.add_argument("--metadata", help="JSON object stored with the version")
    promote = command("promote", "move a version to canary (starts a rollout) or prod", _promote)
    promote.add_argument("model")
    promote.add_argument("version")
    promote.add_argument("--to", required=True, choices=["canary", "prod"])
    promote.add_argument("--reason")
    rollback = command("rollback", "canary back to staging, or prod to the previous prod", _rollback)
    rollback.add_argument("model")
    rollback.add_argument("--reason")
    for parser in (promote, rollback):
        parser.add_argument(
            "--force", action="store_true",
            help="go ahead even if the new prod version has no live endpoint (its requests get 503)",
        )
    validate = command("validate", "re-hash the stored bytes and check the signature", _validate)
    validate.add_argument("model")
    validate.add_argument("version")
    traffic = command("traffic", "show or set a model's weights", _traffic)
    traffic.add_argument("model")
    traffic.add_argument("--set", dest="weights", help="e.g. 1=90,2=10 (versions must be prod or canary)")
    command("nodes", "Envoy nodes and what they run", _nodes)


def _run(args: argparse.Namespace, run: Callable[[argparse.Namespace, AegisClient], Any]) -> int:
    client = AegisClient()
    try:
        document, text = run(args, client)
    except ApiError as exc:
        return report(exc)
    except UsageError as exc:
        print(f"aegis: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps(document, indent=2) if args.json else text)
    if isinstance(document, dict) and document.get("valid") is False:
        return EXIT_REFUSED
    return 0


class UsageError(Exception):
    pass


def _models(args: argparse.Namespace, client: AegisClient) -> tuple[Any, str]:
    document = client.call("GET", "/v1/registry/models")
    rows: list[tuple[str, ...]] = [("MODEL", "PROD", "CANARY", "VERSIONS")]
    for model in document["models"]:
        stages = model["stages"]
        rows.append(
            (model["model_name"], stages["prod"] or "-", stages["canary"] or "-", str(model["versions"]))
        )
    return document, table(rows) if len(rows) > 1 else "no models registered yet"


def _versions(args: argparse.Namespace, client: AegisClient) -> tuple[Any, str]:
    document = client.call("GET", f"/v1/registry/{args.model}")
    rows: list[tuple[str, ...]] = [("VERSION", "STAGE", "SIZE", "SHA256", "KEY", "REGISTERED")]
    for version in document["versions"]:
        rows.append(
            (
                version["version"],
                version["stage"],
                _size(version["size_bytes"]),
                version["checksum"][:12],
                version["key_id"],
                version["created_at"][:19],
            )
        )
    return document, table(rows)


def _size(count: int) -> str:
    if count < 1024:
        return f"{count} B"
    exponent = min(3, (count.bit_length() - 1) // 10)
    return f"{count / 1024**exponent:.1f} {('KiB', 'MiB', 'GiB')[exponent - 1]}"


def _promote(args: argparse.Namespace, client: AegisClient) -> tuple[Any, str]:
    body: dict[str, Any] = {"stage": args.to, **({"reason": args.reason} if args.reason else {})}
    if args.force:
        body["force"] = True
    document = client.call("POST", f"/v1/registry/{args.model}/{args.version}/promote", body)
    text = f"{args.model} {args.version} is now {document['stage']}"
    rollout = document.get("rollout")
    if rollout is not None and rollout["started"]:
        text += f"; rollout started with policy {rollout['policy']!r}: aegis rollout status {args.model}"
    elif rollout is not None:
        text += f"\nno rollout started: {rollout['reason']}"
    return document, text


def _rollback(args: argparse.Namespace, client: AegisClient) -> tuple[Any, str]:
    body: dict[str, Any] = {"reason": args.reason} if args.reason else {}
    if args.force:
        body["force"] = True
    document = client.call("POST", f"/v1/registry/{args.model}/rollback", body)
    moves = ", ".join(f"{c['version']}: {c['from_stage']} -> {c['to_stage']}" for c in document["changes"])
    return document, f"{args.model}: {moves}"


def _validate(args: argparse.Namespace, client: AegisClient) -> tuple[Any, str]:
    document = client.call("GET", f"/v1/registry/{args.model}/{args.version}/validate")
    if document["valid"]:
        return (
            document,
            f"valid: sha256 {document['checksum']} and signature (key {document['key_id']}) check out",
        )
    return document, "INVALID: " + "; ".join(document["problems"])


def _traffic(args: argparse.Namespace, client: AegisClient) -> tuple[Any, str]:
    if args.weights:
        document = client.call("PUT", f"/v1/traffic/{args.model}", {"weights": _parse_weights(args.weights)})
    else:
        document = client.call("GET", f"/v1/traffic/{args.model}")
    rows: list[tuple[str, ...]] = [("VERSION", "ROLE", "WEIGHT", "LIVE", "ENDPOINTS")]
    counts = document.get("endpoint_counts", {})
    stranded = []
    for version, weight in document["weights"].items():
        role = "prod" if version == document["prod"] else "canary"
        count = counts.get(version, len(document["endpoints"].get(version, [])))
        addresses = ", ".join(document["endpoints"].get(version, [])) or "none"
        rows.append((version, role, str(weight), str(count), addresses))
        if weight > 0 and count == 0:
            stranded.append(f"{role} {version}")
    acked = f"acknowledged by {document['nodes_acked']}/{document['nodes_total']} Envoy nodes"
    owner = f"; driven by a {document['owner']}" if document.get("owner") == "rollout" else ""
    text = f"{table(rows)}\n{acked if document['acked'] else 'not yet ' + acked}{owner}"
    for arm in stranded:
        text += (
            f"\nwarning: {arm} has weight but no live endpoint: "
            "Envoy moves its share to the other version, or answers 503 if none has one"
        )
    return document, text


def _parse_weights(text: str) -> dict[str, int]:
    weights: dict[str, int] = {}
    for item in text.split(","):
        version, sep, weight = item.partition("=")
        if not sep or not version.strip() or not weight.strip().isdigit():
            raise UsageError(f"--set takes version=weight pairs like 1=90,2=10, not {item!r}")
        weights[version.strip()] = int(weight)
    return weights


def _nodes(args: argparse.Namespace, client: AegisClient) -> tuple[Any, str]:
    document = client.call("GET", "/v1/xds/nodes")
    rows: list[tuple[str, ...]] = [
        ("NODE", "LIVE", "VIA", "TOKEN", "LISTENERS", "CLUSTERS", "ROUTES", "WEIGHTS", "REJECTED")
    ]
    messages: list[str] = []
    for node in document["nodes"]:
        types = node["types"]
        transport = node.get("transport", "rest")
        # An Envoy on ADS runs the ADS flavour of the listener (its routes come over ADS).
        current = document.get("current_ads", {}) if transport != "rest" else document["current"]

        def state(kind: str, types: dict[str, Any] = types, current: dict[str, str] = current) -> str:
            acked = types.get(kind, {}).get("acked_version", "")
            return "current" if acked and acked == current.get(kind) else (acked[:8] or "none")

        messages += [
            f"{node['node_id']} rejected {kind}: {t['rejection_message']}"
            for kind, t in types.items() if t.get("rejection_message")
        ]

        rejected = sum(len(t["rejected_versions"]) for t in types.values())
        rows.append(
            (
                node["node_id"],
                "yes" if node["live"] else "no",
                transport,
                "yes" if node.get("authenticated") else "no",
                state("listener"),
                state("cluster"),
                state("route"),
                state("runtime"),
                str(rejected),
            )
        )
    text = table(rows) if len(rows) > 1 else "no Envoy node has polled yet"
    if messages:
        text += "\n" + "\n".join(messages)
    if document.get("last_publish_error"):
        text += f"\nlast publish error: {document['last_publish_error']}"
    return document, text


def _register(args: argparse.Namespace, client: AegisClient) -> tuple[Any, str]:
    if not args.file.is_file():
        raise UsageError(f"{args.file} is not a file")
    metadata: dict[str, Any] = {"model_name": args.model, "version": args.version}
    if args.metadata:
        try:
            metadata["metadata"] = json.loads(args.metadata)
        except json.JSONDecodeError as exc:
            raise UsageError(f"--metadata is not JSON: {exc}") from None
    size = args.file.stat().st_size
    document = asyncio.run(_upload(client, args.file, size, metadata, show_progress=not args.json))
    return document, (
        f"registered {document['model_name']} {document['version']}: sha256 {document['checksum']}, "
        f"signed with key {document['key_id']}, stage {document['stage']}"
    )


class _ProgressReader(io.BufferedReader):
    """A file that draws a progress bar on stderr as it is read."""

    def __init__(self, raw: io.FileIO, total: int, *, show: bool) -> None:
        super().__init__(raw)
        self.total, self.sent, self.show, self.started = (
            total,
            0,
            show and sys.stderr.isatty(),
            time.monotonic(),
        )

    def read(self, size: int | None = -1) -> bytes:
        chunk = super().read(size)
        self.sent += len(chunk)
        if self.show and self.total:
            done = self.sent / self.total
            rate = self.sent / max(time.monotonic() - self.started, 1e-6) / 2**20
            bar = "#" * int(done * 30)
            sys.stderr.write(f"\r[{bar:<30}] {done:6.1%} {rate:7.1f} MiB/s")
            if self.sent >= self.total:
                sys.stderr.write("\n")
            sys.stderr.flush()
        return chunk


async def _upload(
    client: AegisClient, path: Path, size: int, metadata: dict[str, Any], *, show_progress: bool
) -> Any:
    import aiohttp  # streams the upload; the other commands make one urllib request and skip importing it

    headers = {"Authorization": f"Bearer {client.token}"} if client.token else {}
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
    with _ProgressReader(io.FileIO(path, "rb"), size, show=show_progress) as artifact:
        form = aiohttp.FormData()
        form.add_field("metadata", json.dumps(metadata), content_type="application/json")
        form.add_field("artifact", artifact, filename=path.name, content_type="application/octet-stream")
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.post(
                    f"{client.base_url}/v1/registry/register", data=form, headers=headers
                ) as response,
            ):
                raw = await response.read()
        except aiohttp.ClientConnectionError as exc:
            raise ApiError(0, f"cannot reach Aegis at {client.base_url}: {exc}") from None
    if response.status >= 400:
        raise ApiError(response.status, error_message(raw, response.status))
    return json.loads(raw)
