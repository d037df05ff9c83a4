"""The three layers of the memory and its bookkeeping row.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "trajectories",
        sa.Column("id", sa.String(256), primary_key=True),
        sa.Column("task_id", sa.String(256), nullable=False),
        sa.Column("task_type", sa.String(128), nullable=False),
        sa.Column("task_text", sa.Text, nullable=False),
        sa.Column("turns_json", sa.Text, nullable=False),
        sa.Column("final_answer", sa.Text, nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("reward", sa.Float, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_index("ix_trajectories_task_type", "trajectories", ["task_type"])
    op.create_table(
        "states",
        sa.Column("name", sa.String(160), primary_key=True),
        sa.Column("visits", sa.Integer, nullable=False),
    )
    op.create_table(
        "transitions",
        sa.Column("task_type", sa.String(128), primary_key=True),
        sa.Column("src", sa.String(160), primary_key=True),
        sa.Column("dst", sa.String(160), primary_key=True),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("successes", sa.Integer, nullable=False),
    )
    op.create_table(
        "decision_paths",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("trajectory_id", sa.String(256), sa.ForeignKey("trajectories.id"), nullable=False, unique=True),
        sa.Column("task_type", sa.String(128), nullable=False),
        sa.Column("states_json", sa.Text, nullable=False),
        sa.Column("reward", sa.Float, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_index("ix_decision_paths_task_type", "decision_paths", ["task_type"])
    op.create_table(
        "meta_cognitions",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("task_type", sa.String(128), nullable=False),
        sa.Column("rule_key", sa.String(512), nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("source_path_ids", sa.Text, nullable=False),
        sa.Column("utility", sa.Float, nullable=False),
        sa.Column("uses", sa.Integer, nullable=False),
        sa.Column("last_round", sa.Integer, nullable=False),
        sa.Column("generation", sa.Integer, nullable=False),
        sa.Column("embedding", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.UniqueConstraint("task_type", "rule_key", name="uq_meta_cognitions_rule"),
    )
    op.create_index("ix_meta_cognitions_generation", "meta_cognitions", ["generation"])
    state = op.create_table(
        "memory_state",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("generation", sa.Integer, nullable=False),
        sa.Column("round", sa.Integer, nullable=False),
        sa.Column("baseline", sa.Float, nullable=False),
    )
    op.bulk_insert(state, [{"id": 1, "generation": 0, "round": 0, "baseline": 0.0}])


def downgrade() -> None:
    for table in ("memory_state", "meta_cognitions", "decision_paths", "transitions", "states", "trajectories"):
        op.drop_table(table)
