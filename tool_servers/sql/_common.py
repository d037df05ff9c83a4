"""What the SQL tools share: the databases of a server and the table rendering."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rlyard.errors import InvalidArgument
from tool_servers.registry import ToolContext
from tool_servers.session import Session
from tool_servers.sql.db import QueryResult, SqliteDatabases, SqlLimits, to_jsonable
from tool_servers.sql.settings import SqlSettings


def settings(ctx: ToolContext) -> SqlSettings:
    """The SQL family's settings on this server."""
    return ctx.family(SqlSettings)


def databases(ctx: ToolContext) -> SqliteDatabases:
    """The server's ``SqliteDatabases`` (one per server, shared by its SQL tools)."""
    dbs = ctx.shared.get("sqlite_databases")
    if dbs is None:
        dbs = ctx.shared["sqlite_databases"] = SqliteDatabases(settings(ctx).db_dir, ctx.settings.worker_threads)
    assert isinstance(dbs, SqliteDatabases)
    return dbs


# A reward's one-off call sets context {"purpose": "verification"} to compare full results
# (reward_service/rewards/sql_execution.py); SessionStore.open refuses the key on sessions.
PURPOSE_KEY = "purpose"
VERIFICATION = "verification"


def limits(ctx: ToolContext, session: Session | None = None) -> SqlLimits:
    """The per-query caps: the model's, or the verification caps for a one-off call with
    ``purpose=verification`` (larger, still bounded: ``SQL_VERIFY_MAX_ROWS``/``_BYTES``)."""
    s = settings(ctx)
    if session is not None and session.ephemeral and session.context.get(PURPOSE_KEY) == VERIFICATION:
        return SqlLimits(s.timeout_s, s.verify_max_rows, s.verify_max_bytes, s.count_limit)
    return SqlLimits(s.timeout_s, s.max_rows, s.max_bytes, s.count_limit)


def validate_db_context(ctx: ToolContext, context: Mapping[str, str]) -> None:
    """A context of the SQL tools names an existing database, and no purpose but verification."""
    if "db_id" not in context:
        raise InvalidArgument("the SQL tools need a session context with a db_id")
    purpose = context.get(PURPOSE_KEY)
    if purpose is not None and purpose != VERIFICATION:
        raise InvalidArgument(
            f"unknown purpose {purpose!r} in the context; the SQL tools know only {PURPOSE_KEY}={VERIFICATION}"
        )
    databases(ctx).resolve(context["db_id"])


def db_id_of(session: Session) -> str:
    """The database of a session (validated when the session opened)."""
    return session.context["db_id"]


_SQL_SPACE = " \t\n\f\r"   # what SQLite's tokenizer skips as whitespace


def only_comments(query: str) -> bool:
    """Whether ``query`` holds SQL comments (``-- …``, ``/* … */``), whitespace and ``;``
    but no statement: SQLite runs nothing then, and the model should hear why."""
    pos, end, seen = 0, len(query), False
    while pos < end:
        if query[pos] in _SQL_SPACE or query[pos] == ";":
            pos += 1
        elif query.startswith("--", pos):
            newline = query.find("\n", pos)
            pos, seen = (end if newline < 0 else newline + 1), True
        elif query.startswith("/*", pos):
            close = query.find("*/", pos + 2)   # an unclosed comment runs to the end
            pos, seen = (end if close < 0 else close + 2), True
        else:
            return False
    return seen


def _cell(value: Any, width: int) -> str:
    if value is None:
        text = "NULL"
    elif isinstance(value, bytes):
        text = f"<blob {len(value)} bytes>"
    elif isinstance(value, float):
        text = repr(value)
    else:
        text = str(value)
    text = text.replace("\n", " ").replace("|", "/")
    return text if len(text) <= width else text[: width - 1] + "…"


def render_table(
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    more_rows: int,
    more_exact: bool,
    max_rows: int,
    cell_chars: int,
    max_chars: int,
) -> tuple[str, int]:
    """A compact table for the model: a header, rows, and an explicit marker for
    what was left out ("… N more rows"). Returns the text and how many rows it hides."""
    if not columns:
        return "(statement returned no columns)", 0
    lines = [" | ".join(columns)]
    shown = 0
    used = len(lines[0])
    for row in rows[:max_rows]:
        line = " | ".join(_cell(v, cell_chars) for v in row)
        if used + len(line) + 1 > max_chars and shown > 0:
            break
        lines.append(line)
        used += len(line) + 1
        shown += 1
    hidden = len(rows) - shown + more_rows
    if not rows:
        lines.append("(no rows)")
    elif hidden > 0 or not more_exact:
        prefix = "more than " if not more_exact else ""
        lines.append(f"… {prefix}{hidden} more row{'s' if hidden != 1 else ''} "
                     f"({shown} of {'over ' if not more_exact else ''}{len(rows) + more_rows} shown)")
    return "\n".join(lines), hidden


def structured_rows(result: QueryResult) -> dict[str, Any]:
    """The rows as rewards read them."""
    return {
        "columns": result.columns,
        "rows": [[to_jsonable(v) for v in row] for row in result.rows],
        "row_count": len(result.rows),
        "more_rows": result.more_rows,
        "more_rows_exact": result.more_rows_exact,
        "truncated": result.truncated,
    }
