"""Schema migrations (Alembic), run by every `aegis serve` at start-up under one lock.

Replicas started together on an empty PostgreSQL database would otherwise create the
same tables at once and one would crash (`UniqueViolationError` on `pg_type`). Every
process takes a session advisory lock on a key of its own first: the first migrates,
the others wait, then find the database at head and do nothing. SQLite serves one
replica (see `controlplane.cluster.single_replica`) and takes the same revisions in
batch mode.

A database made before migrations (tables made by `create_all`, no `alembic_version`)
is recognised by its tables and stamped at the baseline revision, never created again.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect, text

from registry.store import Database

# pg_advisory_lock's key for schema changes: "AEGIS" + "M" in ASCII, far from any lock
# a tool sharing the database would pick by accident.
MIGRATION_LOCK_KEY = 0x4145474953_4D
# The revision equal to what `create_all` made before migrations existed.
BASELINE = "0001"
# A table every pre-migration database has.
_BASELINE_TABLE = "registry_models"


def upgrade_schema(connection: Connection) -> None:
    """Bring the database to the newest revision; safe to call from many processes at once."""
    postgres = connection.dialect.name == "postgresql"
    if postgres:
        connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        connection.commit()
    try:
        config = _config(connection)
        tables = set(inspect(connection).get_table_names())
        if "alembic_version" not in tables and _BASELINE_TABLE in tables:
            command.stamp(config, BASELINE)
        command.upgrade(config, "head")
        # The inspection began a transaction, so Alembic left committing to its caller.
        connection.commit()
    finally:
        if postgres:
            connection.rollback()
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})
            connection.commit()


async def migrate(database: Database) -> None:
    async with database.engine.connect() as connection:
        await connection.run_sync(upgrade_schema)


def _config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest revision: what every migrated database's alembic_version holds."""
    head = ScriptDirectory(str(Path(__file__).parent)).get_current_head()
    assert head is not None, "no migration revisions"
    return head
