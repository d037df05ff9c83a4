"""Schema introspection for the SQL tools, through SQLAlchemy's inspector (cached:
the databases are opened read-only, so their schema does not change)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import sqlalchemy

from tool_servers.registry import ToolContext
from tool_servers.sql._common import databases
from tool_servers.sql.db import SqliteDatabases


@dataclass(frozen=True)
class ColumnInfo:
    """One column of a table."""

    name: str
    type: str
    primary_key: bool
    nullable: bool


@dataclass(frozen=True)
class ForeignKey:
    """Columns of a table that reference another table."""

    columns: tuple[str, ...]
    ref_table: str
    ref_columns: tuple[str, ...]


@dataclass(frozen=True)
class TableInfo:
    """The schema of one table and its row count."""

    name: str
    columns: tuple[ColumnInfo, ...]
    foreign_keys: tuple[ForeignKey, ...]
    row_count: int


@dataclass
class SchemaCache:
    """Table schemas per database, read once."""

    dbs: SqliteDatabases
    _tables: dict[str, dict[str, TableInfo]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def tables(self, db_id: str) -> dict[str, TableInfo]:
        """Every table of ``db_id`` by name (blocking; call off the event loop)."""
        with self._lock:
            if db_id not in self._tables:
                self._tables[db_id] = self._read(db_id)
            return self._tables[db_id]

    def _read(self, db_id: str) -> dict[str, TableInfo]:
        engine = self.dbs.engine(db_id)
        inspector = sqlalchemy.inspect(engine)
        out: dict[str, TableInfo] = {}
        with engine.connect() as conn:
            for name in inspector.get_table_names():
                pk = set(inspector.get_pk_constraint(name).get("constrained_columns") or [])
                columns = tuple(
                    ColumnInfo(c["name"], str(c["type"]), c["name"] in pk, bool(c.get("nullable", True)))
                    for c in inspector.get_columns(name)
                )
                fks = tuple(
                    ForeignKey(
                        tuple(fk["constrained_columns"]),
                        fk["referred_table"],
                        tuple(fk["referred_columns"]),
                    )
                    for fk in inspector.get_foreign_keys(name)
                )
                quoted = '"' + name.replace('"', '""') + '"'
                count = conn.exec_driver_sql(f"SELECT count(*) FROM {quoted}").scalar_one()
                out[name] = TableInfo(name, columns, fks, int(count))
        return out

    def find(self, db_id: str, table: str) -> TableInfo | None:
        """A table by name, case-insensitively as SQLite resolves names."""
        tables = self.tables(db_id)
        if table in tables:
            return tables[table]
        lowered = {k.lower(): v for k, v in tables.items()}
        return lowered.get(table.lower())


def schema_cache(ctx: ToolContext) -> SchemaCache:
    """The server's schema cache (shared by its SQL tools)."""
    cache = ctx.shared.get("sqlite_schemas")
    if cache is None:
        cache = ctx.shared["sqlite_schemas"] = SchemaCache(databases(ctx))
    assert isinstance(cache, SchemaCache)
    return cache
