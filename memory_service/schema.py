"""The memory's tables, in three layers (arXiv 2511.07800): trajectories (the query layer), the
state machine (states, transitions with counts, decision paths) and meta-cognitions; plus one row
of bookkeeping (``memory_state``: the update round, the ΔR baseline and a generation number that
every write of meta-cognitions bumps, so readers notice a change with one cheap query).

The schema is created and changed only by the Alembic revisions in ``migrations/versions``;
these definitions are what the code reads and writes through (a test checks they agree)."""

from __future__ import annotations

from sqlalchemy import (
    Column,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

trajectories = Table(
    "trajectories", metadata,
    Column("id", String(256), primary_key=True),           # the trajectory's own id
    Column("task_id", String(256), nullable=False, default=""),
    Column("task_type", String(128), nullable=False, default="", index=True),
    Column("task_text", Text, nullable=False, default=""),
    Column("turns_json", Text, nullable=False),               # the whole trajectory, rlyard.domain.jsonform
    Column("final_answer", Text, nullable=False, default=""),
    Column("status", String(32), nullable=False),
    Column("reward", Float, nullable=False),
    Column("created_at", Float, nullable=False),
)

states = Table(
    "states", metadata,
    Column("name", String(160), primary_key=True),
    Column("visits", Integer, nullable=False, default=0),
)

transitions = Table(
    "transitions", metadata,
    Column("task_type", String(128), primary_key=True),
    Column("src", String(160), primary_key=True),
    Column("dst", String(160), primary_key=True),
    Column("count", Integer, nullable=False, default=0),
    Column("successes", Integer, nullable=False, default=0),
)

decision_paths = Table(
    "decision_paths", metadata,
    Column("id", String(64), primary_key=True),
    Column("trajectory_id", String(256), ForeignKey("trajectories.id"), nullable=False, unique=True),
    Column("task_type", String(128), nullable=False, default="", index=True),
    Column("states_json", Text, nullable=False),
    Column("reward", Float, nullable=False),
    Column("created_at", Float, nullable=False),
)

meta_cognitions = Table(
    "meta_cognitions", metadata,
    Column("id", String(64), primary_key=True),
    Column("task_type", String(128), nullable=False, default=""),
    Column("rule_key", String(512), nullable=False),          # what it says, for de-duplication
    Column("text", Text, nullable=False),
    Column("source_path_ids", Text, nullable=False),          # JSON list of decision path ids
    Column("utility", Float, nullable=False),                 # as of round last_round
    Column("uses", Integer, nullable=False, default=0),
    Column("last_round", Integer, nullable=False, default=0),
    Column("generation", Integer, nullable=False, index=True),  # memory_state.generation of its last write
    Column("embedding", LargeBinary, nullable=False),         # float32 MiniLM vector of its text
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    UniqueConstraint("task_type", "rule_key", name="uq_meta_cognitions_rule"),
)

memory_state = Table(
    "memory_state", metadata,
    Column("id", Integer, primary_key=True),                  # always 1
    Column("generation", Integer, nullable=False, default=0),
    Column("round", Integer, nullable=False, default=0),
    Column("baseline", Float, nullable=False, default=0.0),
)
