"""Hostile input against ``sql_query``: writes, DDL, ATTACH, state-changing PRAGMAs,
extensions, runaway queries, several statements, bad text and huge text.

Every call runs against a COPY of a Spider database in tmp; each test checks that the
file is byte-identical afterwards, that no -wal/-journal/-shm file appeared, that the
call answered within the time limit (plus 1 s), and that the server still answers
correctly after it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from rlyard.client import ToolClient
from rlyard.common.v1 import common_pb2

TIMEOUT_S = 1.0
ENDLESS = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c)"
TEN_THOUSAND = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 10000)"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class Guarded:
    """A server over a copy of concert_singer, with what the copy looked like before."""

    client: ToolClient
    session_id: str
    db_path: Path
    digest: str

    async def call(self, arguments: dict[str, Any] | str, tool: str = "sql_query") -> common_pb2.ToolResult:
        """One call; fails if it took longer than the time limit plus 1 s."""
        started = time.monotonic()
        result = await self.client.call_tool(tool, arguments, session_id=self.session_id)
        elapsed = time.monotonic() - started
        assert elapsed < TIMEOUT_S + 1.0, f"{arguments!r:.80} took {elapsed:.2f}s"
        return result

    async def assert_untouched(self) -> None:
        """The file is unchanged, has no companions, and the server still answers."""
        assert sha256(self.db_path) == self.digest, "the database file changed"
        siblings = sorted(p.name for p in self.db_path.parent.iterdir())
        assert siblings == [self.db_path.name], f"unexpected files beside the database: {siblings}"
        check = await self.call({"query": "SELECT count(*), sum(Age) FROM singer"})
        assert check.structured["rows"] == [[6, 222]]
        tables = await self.call({"query": "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"})
        assert tables.structured["rows"] == [
            ["concert"], ["singer"], ["singer_in_concert"], ["stadium"]
        ]


@pytest.fixture
async def guarded(spider_copy: Any, start_tools: Any, make_client: Any) -> Guarded:
    db_path = spider_copy("concert_singer")
    digest = sha256(db_path)
    running = await start_tools(sql={"db_dir": db_path.parent.parent, "timeout_s": TIMEOUT_S})
    client = make_client(running)
    session_id = await client.open_session({"db_id": "concert_singer"})
    return Guarded(client, session_id, db_path, digest)


def text(result: common_pb2.ToolResult) -> str:
    return result.content[0].text


# ---------------------------------------------------------------- writes and DDL are refused


@pytest.mark.parametrize(
    ("query", "names"),
    [
        ("DROP TABLE singer", "DROP"),
        ("DROP TABLE IF EXISTS stadium", "DROP"),
        ("INSERT INTO singer (Singer_ID, Name) VALUES (99, 'x')", "INSERT"),
        ("INSERT INTO singer SELECT * FROM singer", "INSERT"),
        ("REPLACE INTO singer (Singer_ID) VALUES (1)", "INSERT"),
        ("WITH x AS (SELECT 99) INSERT INTO singer (Singer_ID) SELECT * FROM x", "INSERT"),
        ("UPDATE singer SET Age = Age + 1", "UPDATE"),
        ("DELETE FROM singer", "DELETE"),
        ("CREATE TABLE t (x)", "CREATE"),
        ("CREATE TABLE t AS SELECT * FROM singer", "CREATE"),
        ("CREATE INDEX i ON singer (Name)", "CREATE"),
        ("CREATE VIEW v AS SELECT 1", "CREATE"),
        ("CREATE TRIGGER tr AFTER INSERT ON singer BEGIN DELETE FROM singer; END", "CREATE TRIGGER"),
        ("CREATE TEMP TABLE t (x)", "CREATE"),
        ("CREATE TEMP VIEW v AS SELECT 1", "CREATE"),
        ("CREATE VIRTUAL TABLE f USING fts5(x)", "CREATE"),
        ("ALTER TABLE singer ADD COLUMN y", "ALTER TABLE"),
        ("ALTER TABLE singer RENAME TO s2", "ALTER TABLE"),
        ("INSERT INTO sqlite_master VALUES ('table', 'x', 'x', 0, 'CREATE TABLE x (y)')", "INSERT"),
        ("PRAGMA writable_schema = 1", "PRAGMA writable_schema"),
        ("PRAGMA journal_mode = WAL", "PRAGMA journal_mode"),
        ("PRAGMA main.journal_mode", "PRAGMA journal_mode"),
        ("PRAGMA user_version = 7", "PRAGMA user_version"),
        ("PRAGMA query_only = 0", "PRAGMA query_only"),
        ("VACUUM", "is not allowed"),
        ("REINDEX", "REINDEX"),
        ("ANALYZE", "ANALYZE"),
        ("BEGIN IMMEDIATE", "transaction"),
        ("SAVEPOINT s", "SAVEPOINT"),
        ("DETACH main", "DETACH"),
    ],
)
async def test_writes_ddl_and_state_changes_are_refused(guarded: Guarded, query: str, names: str) -> None:
    result = await guarded.call({"query": query})
    assert result.is_error and result.structured is None
    message = text(result)
    assert message.startswith("refused: ") and "read-only" in message
    assert names in message, f"{message!r} does not name {names!r}"
    await guarded.assert_untouched()


async def test_a_refused_temp_table_does_not_exist_afterwards(guarded: Guarded) -> None:
    # TEMP objects live in memory and would be writable even on a read-only file.
    assert (await guarded.call({"query": "CREATE TEMP TABLE t AS SELECT 1 AS x"})).is_error
    follow = await guarded.call({"query": "SELECT x FROM temp.t"})
    assert follow.is_error and text(follow) == "SQL error: no such table: temp.t"
    await guarded.assert_untouched()


# ---------------------------------------------------------------- other files


async def test_attach_of_another_file_is_refused(guarded: Guarded, tmp_path: Path) -> None:
    other = tmp_path / "other.sqlite"
    conn = sqlite3.connect(other)
    with conn:
        conn.execute("CREATE TABLE secret (x TEXT)")
        conn.execute("INSERT INTO secret VALUES ('hidden')")
    conn.close()
    other_digest = sha256(other)

    result = await guarded.call({"query": f"ATTACH DATABASE '{other}' AS o"})
    assert result.is_error and text(result).startswith("refused: ATTACH is not allowed")
    follow = await guarded.call({"query": "SELECT x FROM o.secret"})
    assert follow.is_error and "no such table: o.secret" in text(follow)
    assert sha256(other) == other_digest
    await guarded.assert_untouched()


@pytest.mark.parametrize(
    "template",
    ["ATTACH 'file:{path}?mode=rwc' AS n", "VACUUM INTO '{path}'"],
)
async def test_no_new_file_can_be_written(guarded: Guarded, tmp_path: Path, template: str) -> None:
    target = tmp_path / "written.sqlite"
    result = await guarded.call({"query": template.format(path=target)})
    assert result.is_error and text(result).startswith("refused: ")
    assert not target.exists()
    await guarded.assert_untouched()


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("SELECT load_extension('/nonexistent/evil.so')", "refused: the function load_extension() is not allowed"),
        ("SELECT load_extension('libc.so.6', 'system')", "refused: the function load_extension() is not allowed"),
        ("SELECT fts3_tokenizer('simple')", "refused: the function fts3_tokenizer() is not allowed"),
        ("SELECT writefile('/tmp/x', 'y')", "SQL error: no such function: writefile"),
    ],
)
async def test_dangerous_functions_are_refused(guarded: Guarded, query: str, expected: str) -> None:
    result = await guarded.call({"query": query})
    assert result.is_error and text(result) == expected
    await guarded.assert_untouched()


# ---------------------------------------------------------------- runaway queries


async def test_endless_recursive_count_hits_the_time_limit(guarded: Guarded) -> None:
    result = await guarded.call({"query": f"{ENDLESS} SELECT count(*) FROM c"})
    assert result.is_error
    assert text(result).startswith("the query ran longer than the 1s time limit and was stopped")
    await guarded.assert_untouched()


async def test_endless_recursive_rows_come_back_truncated(guarded: Guarded) -> None:
    result = await guarded.call({"query": f"{ENDLESS} SELECT x FROM c"})
    assert not result.is_error and result.truncated
    data = result.structured
    assert data["row_count"] == 10_000 and data["more_rows_exact"] is False
    assert text(result).splitlines()[-1].startswith("… more than ")
    await guarded.assert_untouched()


async def test_a_cross_join_of_a_billion_rows_hits_the_time_limit(guarded: Guarded) -> None:
    # 10^4 x 10^4 x 10 rows: minutes of counting without the limit
    query = f"{TEN_THOUSAND} SELECT count(*) FROM c AS a, c AS b, (SELECT x FROM c LIMIT 10) AS d"
    result = await guarded.call({"query": query})
    assert result.is_error and "time limit" in text(result)
    await guarded.assert_untouched()


async def test_huge_rows_are_capped_by_bytes(guarded: Guarded) -> None:
    result = await guarded.call({"query": f"SELECT printf('%.*c', 500000, 'x') FROM ({ENDLESS} SELECT x FROM c)"})
    assert not result.is_error and result.truncated
    data = result.structured
    assert data["row_count"] == 16  # 8 MiB / 500,000 characters
    assert all(len(row[0]) == 500_000 for row in data["rows"])
    assert len(text(result)) < 4_100  # what the model reads stays small
    await guarded.assert_untouched()


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("SELECT randomblob(2000000000)", "SQL error: string or blob too big"),
        ("SELECT zeroblob(2000000)", "SQL error: string or blob too big"),
        ("SELECT replace(hex(zeroblob(400000)), '0', '00')", "SQL error: string or blob too big"),
        (f"SELECT group_concat(hex(zeroblob(100000))) FROM ({TEN_THOUSAND} SELECT x FROM c)",
         "SQL error: string or blob too big"),
        ("SELECT hex(zeroblob(400000)) || hex(zeroblob(400000))", "SQL error: string or blob too big"),
        ("SELECT quote(zeroblob(600000))", "SQL error: string or blob too big"),
        ("SELECT " + "(" * 500 + "1" + ")" * 500, "SQL error: parser stack overflow"),
        ("SELECT " + " + ".join(["1"] * 200), "SQL error: Expression tree is too large (maximum depth 100)"),
        (" UNION ALL ".join(["SELECT 1"] * 100), "SQL error: too many terms in compound SELECT"),
    ],
)
async def test_resource_limits_give_clear_errors(guarded: Guarded, query: str, expected: str) -> None:
    result = await guarded.call({"query": query})
    assert result.is_error and text(result) == expected
    await guarded.assert_untouched()


@pytest.mark.parametrize(
    ("query", "needed"),
    [
        ("SELECT printf('%.*c', 1000000000, 'x')", 1_000_000_000),
        ("SELECT format('%.*c', 1000000000, 'x')", 1_000_000_000),
        ("SELECT printf('%.2147483647c', 'é')", 2_147_483_647),
        ("SELECT printf('%.*c', '2000000000', 'x')", 2_000_000_000),       # text, read as SQLite reads it
        ("SELECT printf('%.999999c%.999999c', 'x', 'y')", 1_999_998),      # each under the limit, not both
        ("SELECT printf('%2000000d', 1)", 2_000_000),
        ("SELECT printf('%.*c', x, 'x') FROM (SELECT 10 AS x UNION ALL SELECT 1500000000)", 1_500_000_000),
    ],
)
async def test_printf_past_the_length_limit_fails_fast(guarded: Guarded, query: str, needed: int) -> None:
    # SQLite repeats %c `precision` times whatever the length limit, with no progress callback
    # inside: printf('%.*c', 1000000000, 'x') ran ~5-8 s against a 2 s limit, then gave NULL.
    started = time.monotonic()
    result = await guarded.call({"query": query})
    assert time.monotonic() - started < TIMEOUT_S
    assert result.is_error
    name = "format" if "format(" in query else "printf"
    assert text(result) == (
        f"SQL error: string or blob too big: {name}() would build at least {needed} bytes, over the limit "
        "of 1000000 bytes on one value; use a smaller width or precision"
    )
    await guarded.assert_untouched()


@pytest.mark.parametrize(
    ("query", "value"),
    [
        ("SELECT printf('%.3c|%5.2f|%-4d|%s', 'x', 3.14159, 7, 'end')", "xxx| 3.14|7   |end"),
        ("SELECT printf('%.*c', 4294967299, 'x')", "xxx"),               # C's (int) of the argument: 3
        ("SELECT length(printf('%.*c', 999999, 'x'))", 999_999),
        ("SELECT printf('%y%.2000000c', 'x')", None),                    # an unknown conversion ends printf
        ("SELECT printf('%s%s', hex(zeroblob(300000)), hex(zeroblob(300000)))", None),  # SQLite's NULL
    ],
)
async def test_printf_within_the_limit_answers_as_sqlite_does(guarded: Guarded, query: str, value: Any) -> None:
    result = await guarded.call({"query": query})
    assert not result.is_error, text(result)
    assert result.structured["rows"] == [[value]]


async def test_other_calls_answer_while_a_hostile_query_runs(guarded: Guarded) -> None:
    async def timed(query: str, delay: float = 0.0) -> tuple[common_pb2.ToolResult, float]:
        await asyncio.sleep(delay)
        result = await guarded.call({"query": query})
        return result, time.monotonic()

    started = time.monotonic()
    (slow, slow_done), (fast, fast_done), (tables, tables_done) = await asyncio.gather(
        timed(f"{ENDLESS} SELECT count(*) FROM c"),
        timed("SELECT Name FROM singer WHERE Age > 40 ORDER BY Age", delay=0.1),
        timed("SELECT count(*) FROM stadium", delay=0.2),
    )
    assert slow.is_error and "time limit" in text(slow)
    assert fast.structured["rows"] == [["Rose White"], ["John Nizinik"], ["Joe Sharp"]]
    assert tables.structured["rows"] == [[9]]
    assert max(fast_done, tables_done) - started < 0.8
    assert slow_done - max(fast_done, tables_done) > 0.2  # answered well before the slow one
    await guarded.assert_untouched()


# ---------------------------------------------------------------- several statements, bad text


@pytest.mark.parametrize(
    "query",
    ["SELECT 1; SELECT 2", "SELECT 1; DROP TABLE singer", "SELECT * FROM singer;\nDELETE FROM singer;"],
)
async def test_several_statements_are_refused(guarded: Guarded, query: str) -> None:
    result = await guarded.call({"query": query})
    assert result.is_error
    assert text(result) == "only one SQL statement per call is allowed; send the statements one by one"
    await guarded.assert_untouched()


async def test_a_trailing_semicolon_and_comment_are_fine(guarded: Guarded) -> None:
    result = await guarded.call({"query": "SELECT count(*) FROM concert; -- all of them"})
    assert not result.is_error and result.structured["rows"] == [[6]]


async def test_invalid_utf8_text_is_an_error(guarded: Guarded) -> None:
    # json.dumps escapes the lone surrogate as \udcff: the server decodes a string that
    # cannot be encoded as UTF-8.
    arguments = json.dumps({"query": "SELECT 'caf\udcff'"})
    assert "\\udcff" in arguments
    result = await guarded.call(arguments)
    assert result.is_error
    assert "field 'query'" in text(result) and "unicode" in text(result)
    described = await guarded.call(json.dumps({"table": "sing\udcffer"}), tool="describe_table")
    assert described.is_error and "field 'table'" in text(described)
    await guarded.assert_untouched()


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", "invalid arguments for sql_query: field 'query': String should have at least 1 character"),
        ("   \n\t ", "the query is empty; send one SQL statement"),
        (" ; ;\n", "the query is empty; send one SQL statement"),
    ],
)
async def test_empty_queries(guarded: Guarded, query: str, expected: str) -> None:
    result = await guarded.call({"query": query})
    assert result.is_error and text(result) == expected
    await guarded.assert_untouched()


@pytest.mark.parametrize(
    "query",
    ["-- just a comment", "/* x */", "  /* one */\n-- two\n\t", "/* never closed", "-- a\n;", "--"],
)
async def test_a_query_of_only_comments_is_an_error(guarded: Guarded, query: str) -> None:
    result = await guarded.call({"query": query})
    assert result.is_error
    assert text(result) == "the query is only a comment: it has no SQL to run; send one SQL statement, e.g. a SELECT"
    await guarded.assert_untouched()


@pytest.mark.parametrize(
    ("query", "rows"),
    [("-- the count\nSELECT count(*) FROM singer", [[6]]), ("/* a */ SELECT '--' || '/*'", [["--/*"]])],
)
async def test_comments_before_a_statement_are_fine(guarded: Guarded, query: str, rows: list[list[Any]]) -> None:
    result = await guarded.call({"query": query})
    assert not result.is_error and result.structured["rows"] == rows


async def test_a_one_megabyte_string_is_refused(guarded: Guarded) -> None:
    query = "SELECT '" + "x" * 1_000_000 + "'"
    result = await guarded.call({"query": query})
    assert result.is_error
    assert text(result) == (
        f"the arguments of sql_query are {len(json.dumps({'query': query}))} characters; the limit is 1000000"
    )
    await guarded.assert_untouched()


async def test_a_query_over_the_length_limit_is_refused(guarded: Guarded) -> None:
    query = "SELECT '" + "x" * 100_000 + "'"
    result = await guarded.call({"query": query})
    assert result.is_error
    assert text(result) == "the query is 100009 characters long; the limit is 20000. Send a shorter query."
    await guarded.assert_untouched()
