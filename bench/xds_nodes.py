"""xds_nodes: memory of a real `aegis serve` after polls from many distinct made-up node ids.

Issue 9, finding 3: every node id that ever polled was kept forever, so 10,000
polls with 16 KiB ids grew the server by ~164 MB that was never released.
Measured in one run, against two real `aegis serve` processes started the same
way: the baseline is this repository at `--baseline-ref` (default: the commit
before the fix), exported with `git archive` into a temporary folder; the
candidate is the working tree. Each server gets `--nodes` first polls
(`version_info` empty, LDS) from distinct node ids, `--concurrency` at a time,
and its RSS (VmRSS) is read before and after (after a 1 s pause).

Two workloads per server:
- `16kib`: node ids of 16 KiB (the issue's case). The fix refuses ids longer
  than NODE_ID_MAX_CHARS with a 400, so nothing is kept;
- `512`: node ids of 512 characters, the longest accepted: the fix keeps at most
  AEGIS_XDS_MAX_NODES (default 4,096) of them and forgets each after the node timeout.

value = the candidate's RSS growth for 16 KiB ids (MB), baseline_value = the
baseline's, ratio = value / baseline_value; target: growth at most 16 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ADMIN_TOKEN, free_port, report, rss_bytes
from controlplane.demo.processes import clean_environment, stop, wait_for_http

ROOT = Path(__file__).resolve().parent.parent
BASELINE_REF = "cb9d9cf"
MB = 1_000_000
WORKLOADS = {"16kib": 16 * 1024, "512": 512}


def export_ref(ref: str, into: Path) -> Path:
    """The repository's tree at `ref`, as plain files (no worktree, no change to the repository)."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


@contextmanager
def serve(code: Path, data_dir: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`aegis serve` running the code in `code` (its own cwd and PYTHONPATH), stopped by PID."""
    port = free_port()
    data_dir.mkdir(parents=True)
    env = {
        **clean_environment(),
        "PYTHONPATH": str(code),
        "AEGIS_LISTEN": f"127.0.0.1:{port}",
        "AEGIS_DATA_DIR": str(data_dir),
        "AEGIS_API_TOKENS": f"admin:{ADMIN_TOKEN}",
        "AEGIS_MODEL_SIGN_KEY": "bench-sign-key",
        "AEGIS_LOG_LEVEL": "WARNING",
        "AEGIS_XDS_VALIDATE": "false",
    }
    with (data_dir / "aegis.log").open("ab") as log:
        # cwd=code: `python -m` puts the working directory first on sys.path.
        process = subprocess.Popen(
            [sys.executable, "-m", "controlplane.cli", "serve"], cwd=code, env=env, stdout=log, stderr=log
        )
        try:
            url = f"http://127.0.0.1:{port}"
            wait_for_http(f"{url}/healthz", process=process)
            yield url, process
        finally:
            stop(process)


async def flood(url: str, *, nodes: int, id_chars: int, concurrency: int, tag: str) -> Counter[int]:
    """One first LDS poll from each of `nodes` distinct node ids of `id_chars` characters."""
    statuses: Counter[int] = Counter()
    pending = iter(range(nodes))
    pad = "x" * id_chars

    async def worker(session: aiohttp.ClientSession) -> None:
        for index in pending:
            node_id = f"{tag}-{index:06d}-{pad}"[:id_chars]
            body = json.dumps({"node": {"id": node_id, "cluster": "model-gateway"}, "version_info": ""})
            async with session.post(f"{url}/v3/discovery:listeners", data=body) as response:
                await response.read()
                statuses[response.status] += 1

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return statuses


def tracked_nodes(url: str) -> int:
    """Nodes in the server's table: its gauge where it has one, else counted from the node list."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=30) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("aegis_xds_tracked_nodes "):
                return int(float(line.split()[1]))
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    listing = urllib.request.Request(f"{url}/v1/xds/nodes", headers=auth)
    with urllib.request.urlopen(listing, timeout=60) as answer:
        return len(json.loads(answer.read())["nodes"])


def measure(code: Path, workdir: Path, *, nodes: int, id_chars: int, concurrency: int) -> dict[str, Any]:
    with serve(code, workdir) as (url, process):
        time.sleep(1.0)
        before = rss_bytes(process.pid)
        started = time.monotonic()
        statuses = asyncio.run(
            flood(url, nodes=nodes, id_chars=id_chars, concurrency=concurrency, tag=workdir.name)
        )
        seconds = time.monotonic() - started
        time.sleep(1.0)
        after = rss_bytes(process.pid)
        return {
            "rss_before_mb": round(before / MB, 1),
            "rss_after_mb": round(after / MB, 1),
            "growth_mb": round((after - before) / MB, 1),
            "statuses": {str(code): count for code, count in sorted(statuses.items())},
            "nodes_tracked": tracked_nodes(url),
            "seconds": round(seconds, 1),
        }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=10_000, help="distinct node ids per workload")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--baseline-ref", default=BASELINE_REF, help="git ref measured as the baseline")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="aegis-bench-xds-nodes-"))
    try:
        baseline_code = export_ref(args.baseline_ref, scratch / "baseline-code")
        results: dict[str, dict[str, Any]] = {}
        for name, id_chars in WORKLOADS.items():
            for label, code in (("baseline", baseline_code), ("candidate", ROOT)):
                results[f"{label}_{name}"] = measure(
                    code, scratch / f"{label}-{name}", nodes=args.nodes, id_chars=id_chars,
                    concurrency=args.concurrency,
                )
                print(json.dumps({f"{label}_{name}": results[f"{label}_{name}"]}), file=sys.stderr)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    report(
        "xds_nodes",
        value=results["candidate_16kib"]["growth_mb"],
        unit="MB",
        baseline=f"aegis serve at {args.baseline_ref}",
        baseline_value=results["baseline_16kib"]["growth_mb"],
        target=16.0,
        higher_is_better=False,
        details={"nodes": args.nodes, "concurrency": args.concurrency, **results},
    )


if __name__ == "__main__":
    main()
