"""The SQL tool family: ``sql_query``, ``list_tables`` and ``describe_table`` over read-only
SQLite databases (extra: ``sql``; settings: ``RLYARD_TOOLS_SQL_*``)."""
