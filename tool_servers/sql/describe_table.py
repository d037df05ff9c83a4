"""``describe_table``: columns, types, keys, foreign keys and sample rows of a table."""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel, Field

from rlyard.domain import ToolResult
from tool_servers.registry import ToolContext, register
from tool_servers.session import Session
from tool_servers.sql import _common as sql
from tool_servers.sql._schema import schema_cache
from tool_servers.sql.db import SqlLimits


class DescribeTableArgs(BaseModel):
    """Arguments of ``describe_table``."""

    table: str = Field(description="the name of a table (see list_tables)", min_length=1, max_length=256)


@register
class DescribeTable:
    """Shows one table's schema and a few rows."""

    name = "describe_table"
    description = (
        "Describe one table of the task's database: columns with types, primary key, "
        "foreign keys and a few sample rows."
    )
    Args = DescribeTableArgs

    def __init__(self, ctx: ToolContext) -> None:
        self.ctx = ctx
        self.dbs = sql.databases(ctx)
        self.schemas = schema_cache(ctx)

    def validate_context(self, context: Mapping[str, str]) -> None:
        """The session must name a database."""
        sql.validate_db_context(self.ctx, context)

    async def call(self, args: DescribeTableArgs, session: Session) -> ToolResult:
        """Look the table up in the cached schema and fetch sample rows."""
        db_id = sql.db_id_of(session)
        info = await self.ctx.run_blocking(self.schemas.find, db_id, args.table)
        if info is None:
            tables = await self.ctx.run_blocking(self.schemas.tables, db_id)
            return ToolResult.error(
                f"no table named {args.table!r}; the tables are: {', '.join(tables)}"
            )
        s = sql.settings(self.ctx)
        quoted = '"' + info.name.replace('"', '""') + '"'
        sample = await self.ctx.run_blocking(
            self.dbs.query,
            db_id,
            f"SELECT * FROM {quoted} LIMIT {s.describe_sample_rows}",
            SqlLimits(s.timeout_s, s.describe_sample_rows, s.max_bytes, 0),
        )
        lines = [f"table {info.name} ({info.row_count} rows)", "columns:"]
        for c in info.columns:
            flags = " PRIMARY KEY" if c.primary_key else ""
            flags += "" if c.nullable or c.primary_key else " NOT NULL"
            lines.append(f"  {c.name} {c.type or 'ANY'}{flags}")
        if info.foreign_keys:
            lines.append("foreign keys:")
            for fk in info.foreign_keys:
                lines.append(
                    f"  ({', '.join(fk.columns)}) -> {fk.ref_table}({', '.join(fk.ref_columns)})"
                )
        lines.append("sample rows:")
        sample_text, _ = sql.render_table(
            sample.columns, sample.rows, more_rows=0, more_exact=True,
            max_rows=s.describe_sample_rows, cell_chars=s.display_cell_chars,
            max_chars=s.display_max_chars,
        )
        lines.append(sample_text)
        structured = {
            "table": info.name,
            "row_count": info.row_count,
            "columns": [
                {"name": c.name, "type": c.type, "primary_key": c.primary_key, "nullable": c.nullable}
                for c in info.columns
            ],
            "foreign_keys": [
                {"columns": list(fk.columns), "ref_table": fk.ref_table, "ref_columns": list(fk.ref_columns)}
                for fk in info.foreign_keys
            ],
            "sample": sql.structured_rows(sample),
        }
        return ToolResult.of_text("\n".join(lines), structured=structured)
