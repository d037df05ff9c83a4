"""Untrusted SQL against SQLite files, following SQLite's "Defense Against the
Dark Arts" (https://sqlite.org/security.html):

- the file is opened read-only (``mode=ro`` URI) and extension loading stays off;
- an authorizer allows only reading: SELECT, reads of columns, functions other
  than ``load_extension``, recursive CTEs and a list of introspection PRAGMAs;
  every write, DDL, ATTACH/DETACH, transaction and state-changing PRAGMA is denied;
- ``setlimit`` lowers the limits on lengths, columns, expression depth,
  compound selects, attached databases and so on;
- ``printf``/``format`` refuse a width or ``%c`` precision past the length limit
  (SQLite repeats ``%c`` in a loop that neither that limit nor the progress handler stops);
- a progress handler interrupts a statement that runs past its time limit;
- the rows and bytes (as JSON) fetched are capped; the remaining rows are counted
  (up to a limit, within the time limit) for the "… N more rows" marker;
- sqlite3 itself refuses more than one statement per call.

Databases are resolved by ``db_id`` from a directory (Spider layout
``<dir>/<db_id>/<db_id>.sqlite`` or flat ``<dir>/<db_id>.sqlite``) and
pooled through SQLAlchemy.
"""

from __future__ import annotations

import functools
import json
import math
import re
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import Any

import sqlalchemy
from sqlalchemy.engine import Engine
from sqlalchemy.pool import QueuePool

from rlyard.errors import InvalidArgument, NotFound
from tool_servers.sql.printf import GuardedPrintf

# Matched whole (fullmatch): with ``$``, "concert_singer\n" passed, since ``$`` matches before a final newline.
DB_ID_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_\-]{0,127}")

# PRAGMAs that only read the schema; every other PRAGMA is denied.
READ_PRAGMAS = frozenset(
    {"table_info", "table_xinfo", "foreign_key_list", "index_list", "index_info",
     "index_xinfo", "table_list", "collation_list", "function_list"}
)
# PRAGMAs whose value may be read (no argument) but never set.
READ_VALUE_PRAGMAS = frozenset(
    {"read_uncommitted", "foreign_keys", "encoding", "user_version", "schema_version",
     "page_size", "page_count", "application_id", "query_only"}
)
DENIED_FUNCTIONS = frozenset({"load_extension", "readfile", "writefile", "edit", "fts3_tokenizer"})

_ACTION_NAMES = {
    sqlite3.SQLITE_INSERT: "INSERT", sqlite3.SQLITE_UPDATE: "UPDATE", sqlite3.SQLITE_DELETE: "DELETE",
    sqlite3.SQLITE_CREATE_TABLE: "CREATE TABLE", sqlite3.SQLITE_CREATE_INDEX: "CREATE INDEX",
    sqlite3.SQLITE_CREATE_VIEW: "CREATE VIEW", sqlite3.SQLITE_CREATE_TRIGGER: "CREATE TRIGGER",
    sqlite3.SQLITE_CREATE_TEMP_TABLE: "CREATE TEMP TABLE",
    sqlite3.SQLITE_CREATE_TEMP_VIEW: "CREATE TEMP VIEW",
    sqlite3.SQLITE_CREATE_TEMP_INDEX: "CREATE TEMP INDEX",
    sqlite3.SQLITE_CREATE_TEMP_TRIGGER: "CREATE TEMP TRIGGER",
    sqlite3.SQLITE_DROP_TABLE: "DROP TABLE", sqlite3.SQLITE_DROP_INDEX: "DROP INDEX",
    sqlite3.SQLITE_DROP_VIEW: "DROP VIEW", sqlite3.SQLITE_DROP_TRIGGER: "DROP TRIGGER",
    sqlite3.SQLITE_DROP_TEMP_TABLE: "DROP TEMP TABLE",
    sqlite3.SQLITE_ALTER_TABLE: "ALTER TABLE", sqlite3.SQLITE_ATTACH: "ATTACH",
    sqlite3.SQLITE_DETACH: "DETACH", sqlite3.SQLITE_TRANSACTION: "a transaction statement",
    sqlite3.SQLITE_SAVEPOINT: "SAVEPOINT", sqlite3.SQLITE_REINDEX: "REINDEX",
    sqlite3.SQLITE_ANALYZE: "ANALYZE", sqlite3.SQLITE_CREATE_VTABLE: "CREATE VIRTUAL TABLE",
    sqlite3.SQLITE_DROP_VTABLE: "DROP VIRTUAL TABLE", sqlite3.SQLITE_PRAGMA: "PRAGMA",
    sqlite3.SQLITE_FUNCTION: "function",
}

MAX_VALUE_BYTES = 1_000_000   # SQLITE_LIMIT_LENGTH: the longest string or blob a query may build

# (limit, value): lowered from SQLite's defaults for untrusted SQL.
_LIMITS = (
    (sqlite3.SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES),
    (sqlite3.SQLITE_LIMIT_SQL_LENGTH, 100_000),
    (sqlite3.SQLITE_LIMIT_COLUMN, 200),
    (sqlite3.SQLITE_LIMIT_EXPR_DEPTH, 100),
    (sqlite3.SQLITE_LIMIT_COMPOUND_SELECT, 32),
    (sqlite3.SQLITE_LIMIT_VDBE_OP, 25_000),
    (sqlite3.SQLITE_LIMIT_FUNCTION_ARG, 16),
    (sqlite3.SQLITE_LIMIT_ATTACHED, 0),
    (sqlite3.SQLITE_LIMIT_LIKE_PATTERN_LENGTH, 100),
    (sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 32),
    (sqlite3.SQLITE_LIMIT_TRIGGER_DEPTH, 10),
)
_SCHEMA_TABLES = frozenset({"sqlite_master", "sqlite_schema", "sqlite_temp_master"})
_DML = frozenset({sqlite3.SQLITE_INSERT, sqlite3.SQLITE_UPDATE, sqlite3.SQLITE_DELETE})
_PROGRESS_STEPS = 1_000   # VM instructions between deadline checks


class _Guard:
    """Per-connection authorizer and deadline; remembers why it denied."""

    def __init__(self) -> None:
        self.denied: str | None = None
        self.failed_call: str | None = None   # why a guarded function (printf) failed
        self.deadline: float = float("inf")
        self.interrupted = False

    def authorize(self, action: int, arg1: str | None, arg2: str | None, db: str | None,
                  source: str | None) -> int:
        if action in (sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_RECURSIVE):
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_FUNCTION:
            if (arg2 or "").lower() in DENIED_FUNCTIONS:
                self.denied = f"the function {arg2}() is not allowed"
                return sqlite3.SQLITE_DENY
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_PRAGMA:
            pragma = (arg1 or "").lower()
            if pragma in READ_PRAGMAS or (pragma in READ_VALUE_PRAGMAS and arg2 is None):
                return sqlite3.SQLITE_OK
        what = _ACTION_NAMES.get(action, f"action {action}")
        if action == sqlite3.SQLITE_PRAGMA:
            what = f"PRAGMA {arg1}"
        if (arg1 or "").lower() in _SCHEMA_TABLES and action in _DML:
            # DDL is first checked as an edit of sqlite_master; the caller names the statement
            what = "{statement}"
        self.denied = f"{what} is not allowed: the database is read-only and only SELECT queries run"
        return sqlite3.SQLITE_DENY

    def fail_call(self, reason: str) -> None:
        """Remember why a guarded function failed (``_explain`` reports it to the model)."""
        self.failed_call = reason

    def progress(self) -> int:
        if time.monotonic() > self.deadline:
            self.interrupted = True
            return 1
        return 0


class GuardedConnection(sqlite3.Connection):
    """A read-only sqlite3 connection that carries its guard."""

    guard: _Guard
    printf: GuardedPrintf

    def close(self) -> None:
        """Close the connection and printf's private one."""
        printf = getattr(self, "printf", None)
        if printf is not None:
            printf.close()
        super().close()


def connect_readonly(path: Path) -> GuardedConnection:
    """Open ``path`` read-only with the authorizer, limits, progress handler and printf guard set."""
    uri = f"file:{urllib.parse.quote(str(path.resolve()))}?mode=ro"
    conn = sqlite3.connect(
        uri, uri=True, check_same_thread=False, isolation_level=None, factory=GuardedConnection
    )
    assert isinstance(conn, GuardedConnection)
    conn.guard = _Guard()
    conn.set_authorizer(conn.guard.authorize)
    conn.set_progress_handler(conn.guard.progress, _PROGRESS_STEPS)
    for limit, value in _LIMITS:
        conn.setlimit(limit, value)
    conn.printf = GuardedPrintf(MAX_VALUE_BYTES, conn.guard.fail_call)
    for name in ("printf", "format"):   # format() is SQLite's other name of printf()
        conn.create_function(name, -1, functools.partial(conn.printf, name), deterministic=True)
    return conn


@dataclass
class QueryResult:
    """Rows of a query, or the error the model should read."""

    columns: list[str] = field(default_factory=list)
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    more_rows: int = 0            # rows past the caps that were counted
    more_rows_exact: bool = True  # False when counting stopped at a limit
    error: str | None = None
    elapsed_ms: float = 0.0

    @property
    def truncated(self) -> bool:
        """Whether rows were left out."""
        return self.more_rows > 0 or not self.more_rows_exact


@dataclass(frozen=True)
class SqlLimits:
    """Caps applied to one query."""

    timeout_s: float = 2.0
    max_rows: int = 10_000
    max_bytes: int = 8 * 1024 * 1024
    count_limit: int = 100_000


_BLOB_JSON_BYTES = len('{"$blob_hex": ""}')


def row_json_bytes(row: Sequence[Any]) -> int:
    """The bytes ``row`` takes in the structured JSON as the servicer sends it (``json.dumps``,
    ASCII-escaped, blobs as ``to_jsonable`` tags them), with the ``", "`` that follows it."""
    total = 2 * len(row) + 2   # "[", "]", and ", " after every value but the last, then after the row
    for value in row:
        if isinstance(value, str):
            total += len(encode_basestring_ascii(value))
        elif isinstance(value, bytes):
            total += _BLOB_JSON_BYTES + 2 * len(value)
        elif isinstance(value, int) or (isinstance(value, float) and math.isfinite(value)):
            total += len(repr(value))
        else:   # None, inf
            total += len(json.dumps(value))
    return total


class SqliteDatabases:
    """SQLite files by ``db_id`` under one directory, each with a pooled engine."""

    def __init__(self, db_dir: Path, pool_size: int = 4) -> None:
        self.db_dir = db_dir
        self.pool_size = pool_size
        self._engines: dict[str, Engine] = {}
        self._lock = threading.Lock()

    def db_ids(self) -> list[str]:
        """Every database available, sorted."""
        if not self.db_dir.is_dir():
            return []
        ids = {p.parent.name for p in self.db_dir.glob("*/*.sqlite") if p.stem == p.parent.name}
        ids |= {p.stem for p in self.db_dir.glob("*.sqlite")}
        return sorted(ids)

    def resolve(self, db_id: str) -> Path:
        """The file of ``db_id``; NOT_FOUND if there is none."""
        if not DB_ID_RE.fullmatch(db_id):
            raise InvalidArgument(f"db_id {db_id!r} is not a valid database name")
        for candidate in (self.db_dir / db_id / f"{db_id}.sqlite", self.db_dir / f"{db_id}.sqlite"):
            if candidate.is_file():
                return candidate
        raise NotFound(f"no database {db_id!r} under {self.db_dir}")

    def engine(self, db_id: str) -> Engine:
        """The pooled SQLAlchemy engine of ``db_id`` (read-only, guarded connections)."""
        with self._lock:
            engine = self._engines.get(db_id)
            if engine is None:
                path = self.resolve(db_id)
                engine = sqlalchemy.create_engine(
                    "sqlite://",
                    creator=lambda: connect_readonly(path),
                    poolclass=QueuePool,
                    pool_size=self.pool_size,
                    max_overflow=self.pool_size,
                )
                self._engines[db_id] = engine
            return engine

    def dispose(self) -> None:
        """Close every pooled connection."""
        with self._lock:
            for engine in self._engines.values():
                engine.dispose()
            self._engines.clear()

    def query(self, db_id: str, sql: str, limits: SqlLimits) -> QueryResult:
        """Run one untrusted statement under the guards and caps (blocking)."""
        start = time.perf_counter()
        with self.engine(db_id).connect() as conn:
            raw = conn.connection.dbapi_connection
            assert isinstance(raw, GuardedConnection)
            guard = raw.guard
            guard.denied = None
            guard.failed_call = None
            guard.interrupted = False
            guard.deadline = time.monotonic() + limits.timeout_s
            try:
                result = self._run(raw, sql, limits, guard)
            finally:
                guard.deadline = float("inf")
        result.elapsed_ms = (time.perf_counter() - start) * 1000
        return result

    def _run(self, raw: sqlite3.Connection, sql: str, limits: SqlLimits, guard: _Guard) -> QueryResult:
        result = QueryResult()
        cursor = raw.cursor()
        try:
            try:
                cursor.execute(sql)
            except sqlite3.Error as exc:
                result.error = _explain(exc, guard, limits, sql)
                return result
            except UnicodeEncodeError:
                result.error = "the query is not valid UTF-8 text"
                return result
            result.columns = [d[0] for d in cursor.description or ()]
            size = 0
            counting = False
            while True:
                try:
                    batch = cursor.fetchmany(256)
                except sqlite3.Error as exc:
                    if counting and guard.interrupted:
                        result.more_rows_exact = False  # the time limit stopped the count
                        break
                    result.rows = []
                    result.error = _explain(exc, guard, limits, sql)
                    return result
                if not batch:
                    break
                for row in batch:
                    if not counting:
                        row_size = row_json_bytes(row)
                        if len(result.rows) < limits.max_rows and size + row_size <= limits.max_bytes:
                            result.rows.append(tuple(row))
                            size += row_size
                            continue
                        counting = True
                    result.more_rows += 1
                if counting and result.more_rows >= limits.count_limit:
                    result.more_rows_exact = False
                    break
        finally:
            cursor.close()
        return result


def _explain(exc: sqlite3.Error, guard: _Guard, limits: SqlLimits, sql: str) -> str:
    """A message the model can act on."""
    text = str(exc)
    if guard.denied:
        words = sql.split()[:2]
        statement = " ".join(w.upper() for w in words) if words else "this statement"
        return f"refused: {guard.denied.replace('{statement}', statement)}"
    if guard.failed_call:
        return f"SQL error: {guard.failed_call}"
    if guard.interrupted or text == "interrupted":
        return (f"the query ran longer than the {limits.timeout_s:g}s time limit and was stopped; "
                "add conditions or a LIMIT, or avoid unbounded recursion")
    if "one statement at a time" in text:
        return "only one SQL statement per call is allowed; send the statements one by one"
    if "readonly" in text or "read-only" in text:
        return "refused: the database is read-only and only SELECT queries run"
    return f"SQL error: {text}"


def to_jsonable(value: Any) -> Any:
    """A JSON-safe form of an SQLite value (blobs become a tagged hex string)."""
    if isinstance(value, bytes):
        return {"$blob_hex": value.hex()}
    return value
