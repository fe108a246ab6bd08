"""Who this replica is, and the rule that a SQLite database serves exactly one replica.

The replica id is AEGIS_REPLICA_ID, or one made at the first start from the hostname
and the data directory and kept in `<data dir>/replica-id`, so that a restarted
replica comes back under the same id. The lease holder adds a random instance to it:
two processes started by mistake with one id never both lead.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import IO

REPLICA_ID_FILE = "replica-id"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class SecondReplica(RuntimeError):
    """Another `aegis serve` already uses this SQLite database."""


def replica_id(configured: str, data_dir: Path) -> str:
    """AEGIS_REPLICA_ID, or the id kept in the data directory (made on first use)."""
    if configured:
        return configured
    path = data_dir / REPLICA_ID_FILE
    try:
        kept = path.read_text().strip()
    except FileNotFoundError:
        kept = ""
    if kept:
        return kept
    host = _UNSAFE.sub("-", socket.gethostname())[:200] or "aegis"  # leaves room for the suffix
    made = f"{host}-{hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:8]}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(made + "\n")
    return made


def lease_holder(replica: str) -> str:
    """The lease's holder name for this process: the replica id and a per-process instance."""
    return f"{replica}#{secrets.token_hex(4)}"


@dataclass
class SqliteLock:
    path: Path
    handle: IO[str]
    holders: int = 1

    def release(self) -> None:
        self.holders -= 1
        if self.holders == 0:
            _HELD.pop(self.path, None)
            self.handle.close()


# Locks this process holds, by lock file: apps in one process (tests) share theirs.
_HELD: dict[Path, SqliteLock] = {}


def hold_sqlite_database(database_path: Path) -> SqliteLock:
    """An exclusive lock beside the SQLite file, held until released (or the process ends).

    SQLite has no lease or notification to share work between processes: a second
    replica would run every rollout a second time. The lock is `flock` on
    `<database>.lock`, which the kernel drops when the process dies (even by kill -9),
    so a crashed replica never blocks its successor.
    """
    lock_path = (database_path.parent.resolve() / (database_path.name + ".lock"))
    held = _HELD.get(lock_path)
    if held is not None:
        held.holders += 1
        return held
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    handle = lock_path.open("a+")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise SecondReplica(
            f"the SQLite database {database_path} is in use by another aegis serve ({holder}); SQLite "
            "serves one replica: stop that one first, or run several replicas on PostgreSQL "
            "(AEGIS_DATABASE_URL=postgresql://...)"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    handle.flush()
    held = _HELD[lock_path] = SqliteLock(lock_path, handle)
    return held


def sqlite_path(database_url: str) -> Path | None:
    """The file of a sqlite URL (None for PostgreSQL or an in-memory database)."""
    prefix = "sqlite+aiosqlite:///"
    if not database_url.startswith(prefix) or database_url == prefix + ":memory:":
        return None
    return Path(database_url[len(prefix):])
