"""Several replicas: the leader lease, the replicas' heartbeats, commands for the leader.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    leases = op.create_table(
        "leases",
        sa.Column("name", sa.String(64), nullable=False),
        # `<replica id>#<process instance>`: a replica id (up to 255) and 9 more.
        sa.Column("holder", sa.String(320), nullable=False),
        # The fencing token: raised by one at every change of holder.
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    # The row exists from the start, so that taking the lease is always one conditional UPDATE.
    op.bulk_insert(
        leases, [{"name": "leader", "holder": "", "epoch": 0, "expires_at": datetime(1970, 1, 1, tzinfo=UTC)}]
    )
    op.create_table(
        "replicas",
        sa.Column("replica_id", sa.String(255), nullable=False),
        sa.Column("address", sa.String(255), nullable=False),
        sa.Column("hostname", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("replica_id"),
    )
    op.create_table(
        "leader_commands",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("model_name", sa.String(128), nullable=True),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("submitted_by", sa.String(255), nullable=False),
        sa.Column("submitted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("taken_epoch", sa.BigInteger(), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_leader_commands_state", "leader_commands", ["state"])


def downgrade() -> None:
    op.drop_index("ix_leader_commands_state", "leader_commands")
    for table in ("leader_commands", "replicas", "leases"):
        op.drop_table(table)
