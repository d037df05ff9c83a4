"""``sql_query``: run one read-only SQL statement on the session's database."""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel, Field

from rlyard.domain import ToolResult
from tool_servers.registry import ToolContext, register
from tool_servers.session import Session
from tool_servers.sql import _common as sql


class SqlQueryArgs(BaseModel):
    """Arguments of ``sql_query``."""

    query: str = Field(description="one read-only SQL statement (SQLite dialect)", min_length=1)


@register
class SqlQuery:
    """Runs the model's SQL under read-only guards and returns a compact table."""

    name = "sql_query"
    description = (
        "Run one read-only SQL query (SQLite) against the task's database and see the rows. "
        "Errors come back as messages you can fix."
    )
    Args = SqlQueryArgs

    def __init__(self, ctx: ToolContext) -> None:
        self.ctx = ctx
        self.dbs = sql.databases(ctx)

    def validate_context(self, context: Mapping[str, str]) -> None:
        """The session must name a database."""
        sql.validate_db_context(self.ctx, context)

    async def call(self, args: SqlQueryArgs, session: Session) -> ToolResult:
        """Run the query off the event loop and render the rows."""
        s = sql.settings(self.ctx)
        if len(args.query) > s.max_query_chars:
            return ToolResult.error(
                f"the query is {len(args.query)} characters long; the limit is "
                f"{s.max_query_chars}. Send a shorter query."
            )
        if not args.query.replace(";", " ").strip():
            return ToolResult.error("the query is empty; send one SQL statement")
        if sql.only_comments(args.query):
            return ToolResult.error(
                "the query is only a comment: it has no SQL to run; send one SQL statement, e.g. a SELECT"
            )
        result = await self.ctx.run_blocking(
            self.dbs.query, sql.db_id_of(session), args.query, sql.limits(self.ctx, session)
        )
        if result.error is not None:
            return ToolResult.error(result.error)
        text, hidden = sql.render_table(
            result.columns,
            result.rows,
            more_rows=result.more_rows,
            more_exact=result.more_rows_exact,
            max_rows=s.display_rows,
            cell_chars=s.display_cell_chars,
            max_chars=s.display_max_chars,
        )
        truncated = result.truncated or hidden > 0
        return ToolResult.of_text(text, structured=sql.structured_rows(result), truncated=truncated)
