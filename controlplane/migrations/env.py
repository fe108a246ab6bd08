"""Alembic's environment: migrations run on the connection `controlplane.migrations` hands in.

There is no alembic.ini and no URL here: `aegis serve` migrates its own database at
start-up (under a lock, see `migrate`), with the engine it already built.
"""

from __future__ import annotations

from alembic import context

connection = context.config.attributes["connection"]
# Batch mode lets SQLite (which cannot ALTER most things) take the same revisions:
# Alembic copies the table, changes the copy and swaps it in.
context.configure(connection=connection, render_as_batch=True, transaction_per_migration=True)
with context.begin_transaction():
    context.run_migrations()
