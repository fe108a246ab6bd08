"""Migrations: an empty database reaches head, a pre-migration one is stamped and kept, the models match."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, inspect, text
from sqlmodel import SQLModel

import controlplane.app  # noqa: F401 - every table's model registers itself in SQLModel.metadata
from controlplane.migrations import head_revision, migrate
from registry.store import Database

BASELINE_TABLES = (
    "registry_models", "registry_versions", "registry_history", "rollouts", "rollout_decisions",
    "alert_deliveries", "traffic_endpoints", "traffic_settings",
)


def _differences(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    differences = compare_metadata(context, SQLModel.metadata)
    return [diff for diff in differences if "alembic_version" not in str(diff)]


async def _scalar(database: Database, query: str) -> Any:
    async with database.engine.connect() as connection:
        return (await connection.execute(text(query))).scalar_one()


async def test_an_empty_database_is_migrated_to_the_models_and_twice_is_nothing(database_url: str) -> None:
    database = Database(database_url)
    try:
        await migrate(database)
        await migrate(database)
        assert await _scalar(database, "SELECT version_num FROM alembic_version") == head_revision()
        assert await _scalar(database, "SELECT epoch FROM leases WHERE name = 'leader'") == 0
        async with database.engine.connect() as connection:
            assert await connection.run_sync(_differences) == []
    finally:
        await database.dispose()


async def test_a_database_made_by_create_all_is_stamped_not_made_again(database_url: str) -> None:
    database = Database(database_url)
    try:
        # What `aegis serve` did before migrations: create_all of the tables of the time.
        tables = [SQLModel.metadata.tables[name] for name in BASELINE_TABLES]
        async with database.engine.begin() as connection:
            await connection.run_sync(lambda sync: SQLModel.metadata.create_all(sync, tables=tables))
            await connection.execute(
                text("INSERT INTO registry_models (name, created_at) VALUES ('kept', :at)"),
                {"at": datetime.now(UTC)},
            )
        await migrate(database)
        assert await _scalar(database, "SELECT version_num FROM alembic_version") == head_revision()
        assert await _scalar(database, "SELECT name FROM registry_models") == "kept"
        async with database.engine.connect() as connection:
            names = await connection.run_sync(lambda sync: set(inspect(sync).get_table_names()))
            assert {"leases", "replicas", "leader_commands"} <= names
            assert await connection.run_sync(_differences) == []
    finally:
        await database.dispose()
