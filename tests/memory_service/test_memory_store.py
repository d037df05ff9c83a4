"""The store on its own, on SQLite and PostgreSQL: the Alembic schema is the one the code reads and
writes, reopening migrates nothing twice, transitions are counted, an unreachable store is UNAVAILABLE."""

from __future__ import annotations

import pytest
from conftest import DESCRIBE_FIRST, sql_trajectory
from sqlalchemy import create_engine, inspect, text

from memory_service import fsm, schema
from memory_service.store import MemoryStore
from rlyard.errors import Unavailable


def test_the_migrated_schema_is_the_one_the_code_uses_and_reopening_changes_nothing(db_url: str) -> None:
    store = MemoryStore(db_url)
    again = MemoryStore(db_url)          # a second process opening the same store: already at head
    try:
        found = inspect(store.reader)
        for table in schema.metadata.sorted_tables:
            columns = {c["name"] for c in found.get_columns(table.name)}
            assert columns == {c.name for c in table.columns}, table.name
        with store.reader.connect() as conn:
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == "0001"
            assert conn.execute(text("SELECT count(*) FROM memory_state")).scalar_one() == 1
        assert again.state() == (0, 0, 0.0)
    finally:
        store.close()
        again.close()


def test_transitions_and_states_are_counted_per_task_type(db_url: str) -> None:
    store = MemoryStore(db_url)
    try:
        for i, good in enumerate([True, True, False]):
            t = sql_trajectory(f"t{i}", good)
            store.record(t, 1.0 if good else 0.0, "sql", "q", fsm.abstract(t), good)
        store.record(sql_trajectory("t0", True), 1.0, "sql", "q", DESCRIBE_FIRST, True)   # again: not counted
        counts = store.transition_counts("sql")
        assert counts[("START", "THINK")] == (3, 2)
        assert counts[("TOOL_CALL:describe_table", "TOOL_OK")] == (2, 2)
        assert counts[("TOOL_CALL:sql_query", "TOOL_ERROR")] == (1, 0)
        assert sum(n for n, _ in counts.values()) == 2 * (len(DESCRIBE_FIRST) - 1) + 5
        assert store.transition_counts("vision") == {}
        with store.reader.connect() as conn:
            visits = dict(conn.execute(text("SELECT name, visits FROM states")).all())
        assert visits["START"] == 3 and visits["TOOL_OK"] == 4 and visits["TOOL_ERROR"] == 1
        assert [p.task_text for p in store.paths("sql")] == ["q", "q", "q"]
    finally:
        store.close()


def test_a_store_that_cannot_be_reached_is_unavailable(postgres: str) -> None:
    dead = postgres.rsplit("@", 1)[0] + "@127.0.0.1:1/memory"
    with pytest.raises(Unavailable, match="the memory store postgresql"):
        MemoryStore(dead)


def test_a_store_that_goes_away_while_serving_is_unavailable(postgres: str) -> None:
    admin = create_engine(postgres, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text('CREATE DATABASE "memory_gone"'))
    store = MemoryStore(postgres.rsplit("/", 1)[0] + "/memory_gone")
    try:
        assert store.counts().trajectories == 0
        with admin.connect() as conn:
            conn.execute(text('DROP DATABASE "memory_gone" WITH (FORCE)'))
        with pytest.raises(Unavailable, match="is unavailable"):
            store.counts()
    finally:
        store.close()
        admin.dispose()
