"""Envoy nodes shared between replicas: each replica's nodes, written in batches.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "xds_node_states",
        sa.Column("replica", sa.String(255), nullable=False),
        sa.Column("node_id", sa.String(512), nullable=False),
        sa.Column("cluster", sa.String(256), nullable=False),
        sa.Column("transport", sa.String(16), nullable=False),
        sa.Column("authenticated", sa.Boolean(), nullable=False),
        sa.Column("streams", sa.Integer(), nullable=False),
        # Seconds before `updated_at` that the node was first and last seen: the database's
        # clock, so replicas never compare their own.
        sa.Column("first_seen_ago", sa.Float(), nullable=False),
        sa.Column("last_seen_ago", sa.Float(), nullable=False),
        sa.Column("types", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("replica", "node_id"),
    )
    op.create_index("ix_xds_node_states_updated_at", "xds_node_states", ["updated_at"])


def downgrade() -> None:
    op.drop_index("ix_xds_node_states_updated_at", "xds_node_states")
    op.drop_table("xds_node_states")
