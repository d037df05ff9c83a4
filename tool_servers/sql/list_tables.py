"""``list_tables``: the tables of the session's database with their columns."""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict

from rlyard.domain import ToolResult
from tool_servers.registry import ToolContext, register
from tool_servers.session import Session
from tool_servers.sql import _common as sql
from tool_servers.sql._schema import schema_cache


class ListTablesArgs(BaseModel):
    """``list_tables`` takes no arguments."""

    model_config = ConfigDict(extra="forbid")


@register
class ListTables:
    """Lists tables, row counts and column names."""

    name = "list_tables"
    description = "List the tables of the task's database with their row counts and column names."
    Args = ListTablesArgs

    def __init__(self, ctx: ToolContext) -> None:
        self.ctx = ctx
        self.schemas = schema_cache(ctx)

    def validate_context(self, context: Mapping[str, str]) -> None:
        """The session must name a database."""
        sql.validate_db_context(self.ctx, context)

    async def call(self, args: ListTablesArgs, session: Session) -> ToolResult:
        """Read the (cached) schema and list it."""
        tables = await self.ctx.run_blocking(self.schemas.tables, sql.db_id_of(session))
        if not tables:
            return ToolResult.of_text("(the database has no tables)", structured={"tables": []})
        lines = [
            f"{t.name} ({t.row_count} rows): {', '.join(c.name for c in t.columns)}"
            for t in tables.values()
        ]
        structured = {
            "tables": [
                {"name": t.name, "row_count": t.row_count, "columns": [c.name for c in t.columns]}
                for t in tables.values()
            ]
        }
        return ToolResult.of_text("\n".join(lines), structured=structured)
