"""The text-to-SQL environment: tasks, prompt, tools, reward spec and SFT demonstrations.

An episode (MTIR-SQL style, multi-turn): the agent reads the question (with BIRD's evidence
and, by default, the database schema), may call ``sql_query`` / ``list_tables`` /
``describe_table`` up to ``max_tool_calls`` times — reading rows or SQL errors and refining —
and ends with its final SQL in ``<answer>…</answer>``. The reward is execution match against the
gold query plus a small format term (``REWARD_SPEC``); both run in the reward service.

Data:

- Spider (``dev.json``): a JSON list (or JSONL) of ``{"db_id", "question", "query"}``;
  databases under ``<db_dir>/<db_id>/<db_id>.sqlite``.
- BIRD (``dev.json``): ``{"db_id", "question", "evidence", "SQL"}``; same database layout
  (``dev_databases/``). Score BIRD with ``BIRD_REWARD_SPEC`` (BIRD's set semantics).

The schema in the prompt is read through the real SQL tools, run in-process (the text is what
``list_tables`` / ``describe_table`` report, rendered as compact ``CREATE TABLE`` lines).

    items = load_spider(ROOT / "data/spider/dev.json", db_dir)
    write_task_jsonl(items[:100], Path("data/generated/t2s_tasks.jsonl"), db_dir=db_dir)
    # an rl stage: tasks: {path: data/generated/t2s_tasks.jsonl}, reward: {sql_execution: 1.0, format: 0.1}

``python -m envs.text_to_sql [--out DIR] [--tasks N] [--demos N]`` writes a task file and a
demonstration file from the Spider dev questions shipped with the project (disjoint questions).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlyard.domain import Task
from rlyard.errors import ConfigError
from rlyard.paths import ROOT

SPIDER_DEV = ROOT / "data" / "spider" / "dev.json"
SPIDER_DB_DIR = ROOT / "data" / "spider" / "database"
SQL_TOOLS = ("sql_query", "list_tables", "describe_table")
MTIR_MAX_TOOL_CALLS = 6
REWARD_SPEC: dict[str, Any] = {"sql_execution": 1.0, "format": 0.1}
BIRD_REWARD_SPEC: dict[str, Any] = {"sql_execution": {"weight": 1.0, "semantics": "bird"}, "format": 0.1}

SYSTEM_PROMPT = """\
You are a careful SQLite expert. Answer the user's question with one SQLite query over the \
database `{db_id}`.

Tools:
- sql_query(query): run one read-only SQL statement; you see the rows or the error.
- list_tables(): the tables with their row counts and columns.
- describe_table(table): columns, types, keys, foreign keys and sample rows of one table.

Format of every turn: first think in <think>…</think>, then either call tools with \
<tool_call>{{"name": "sql_query", "arguments": {{"query": "SELECT …"}}}}</tool_call>, or give the \
final query in <answer>…</answer> (the SQL only, no explanation).
You may make at most {max_tool_calls} tool calls. Use them to check your query: read errors or \
rows and refine it. Then answer."""


@dataclass(frozen=True)
class SqlItem:
    """One question: the database, the question, the gold SQL and (BIRD) the evidence."""

    db_id: str
    question: str
    query: str
    evidence: str = ""


# ---------------------------------------------------------------------------- loading
def _read_records(path: Path) -> list[dict[str, Any]]:
    """A JSON list, or JSONL (one object per line)."""
    if not path.is_file():
        raise ConfigError(f"{path} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        return [data]
    records = []
    for no, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path}:{no}: not JSON: {exc}") from None
    return records


def _items(path: Path, records: list[dict[str, Any]], query_key: str) -> list[SqlItem]:
    items = []
    for no, rec in enumerate(records, 1):
        missing = [k for k in ("db_id", "question", query_key) if k not in rec]
        if missing:
            raise ConfigError(f"{path}: item {no} lacks {', '.join(missing)}")
        items.append(SqlItem(str(rec["db_id"]), str(rec["question"]), str(rec[query_key]),
                             str(rec.get("evidence") or "")))
    if not items:
        raise ConfigError(f"{path} holds no items")
    return items


def _check_databases(items: Sequence[SqlItem], db_dir: Path) -> None:
    missing = sorted({it.db_id for it in items if not (db_dir / it.db_id / f"{it.db_id}.sqlite").is_file()})
    if missing:
        raise ConfigError(f"no database under {db_dir} for db_id(s) {', '.join(missing[:5])}"
                          f"{' …' if len(missing) > 5 else ''} (expected <db_dir>/<db_id>/<db_id>.sqlite)")


def load_spider(path: Path | str = SPIDER_DEV, db_dir: Path | str | None = SPIDER_DB_DIR) -> list[SqlItem]:
    """Spider items (``db_id``, ``question``, ``query``); with ``db_dir``, every database must exist."""
    path = Path(path)
    items = _items(path, _read_records(path), "query")
    if db_dir is not None:
        _check_databases(items, Path(db_dir))
    return items


def load_bird(path: Path | str, db_dir: Path | str | None = None) -> list[SqlItem]:
    """BIRD items (``db_id``, ``question``, ``evidence``, ``SQL``); ``query`` holds the gold SQL."""
    path = Path(path)
    records = _read_records(path)
    key = "SQL" if records and "SQL" in records[0] else "query"
    items = _items(path, records, key)
    if db_dir is not None:
        _check_databases(items, Path(db_dir))
    return items


# ---------------------------------------------------------------------------- the SQL tools, in-process
class SqlToolbox:
    """The real SQL tools run in-process through the tool server's executor (no gRPC), as a
    rollout would see them; a context manager. ``await call(db_id, name, arguments)`` →
    ``(text, is_error, structured)``. A generous statement time limit: gold queries must finish,
    whatever the load."""

    def __init__(self, db_dir: Path | str = SPIDER_DB_DIR, *, display_rows: int = 5,
                 display_max_chars: int = 800) -> None:
        from tool_servers.local import LocalTools
        from tool_servers.sql.settings import SqlSettings

        family = SqlSettings(db_dir=Path(db_dir), timeout_s=30.0, display_rows=display_rows,
                             display_max_chars=display_max_chars)
        self.tools = LocalTools(SQL_TOOLS, [family])

    def __enter__(self) -> SqlToolbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def call(self, db_id: str, name: str, arguments: dict[str, Any]) -> tuple[str, bool, Any]:
        """Run one tool on ``db_id``."""
        result = await self.tools.call(name, arguments, {"db_id": db_id})
        return result.text, result.is_error, result.structured

    def close(self) -> None:
        """Stop the worker thread."""
        self.tools.close()


async def schema_text_async(toolbox: SqlToolbox, db_id: str) -> str:
    """The schema of ``db_id`` as compact ``CREATE TABLE`` lines, from list_tables + describe_table."""
    _, err, listing = await toolbox.call(db_id, "list_tables", {})
    if err or not isinstance(listing, dict):
        raise ConfigError(f"list_tables failed on database {db_id!r}")
    lines = [f"-- database: {db_id}"]
    for table in listing["tables"]:
        _, err, info = await toolbox.call(db_id, "describe_table", {"table": table["name"]})
        if err or not isinstance(info, dict):
            raise ConfigError(f"describe_table failed on {db_id}.{table['name']}")
        keys = [c["name"] for c in info["columns"] if c["primary_key"]]
        parts = []
        for col in info["columns"]:
            flags = " PRIMARY KEY" if col["primary_key"] and len(keys) == 1 else ""
            parts.append(f"{_ident(col['name'])} {col['type'] or 'ANY'}{flags}")
        if len(keys) > 1:
            parts.append(f"PRIMARY KEY ({', '.join(map(_ident, keys))})")
        for fk in info["foreign_keys"]:
            parts.append(f"FOREIGN KEY ({', '.join(map(_ident, fk['columns']))}) REFERENCES "
                         f"{_ident(fk['ref_table'])}({', '.join(map(_ident, fk['ref_columns']))})")
        lines.append(f"CREATE TABLE {_ident(info['table'])} ({', '.join(parts)});  -- {info['row_count']} rows")
    return "\n".join(lines)


def _ident(name: str) -> str:
    """An identifier, quoted only when it needs to be."""
    return name if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) else '"' + name.replace('"', '""') + '"'


@functools.lru_cache(maxsize=512)
def _schema_cached(db_dir: str, db_id: str) -> str:
    async def go() -> str:
        with SqlToolbox(db_dir) as toolbox:
            return await schema_text_async(toolbox, db_id)

    return _run_sync(go())


def schema_text(db_dir: Path | str, db_id: str) -> str:
    """The schema of ``db_id`` (cached per process); callable from sync code or inside a loop."""
    return _schema_cached(str(Path(db_dir).resolve()), db_id)


def _run_sync(coro: Any) -> Any:
    """``asyncio.run`` that also works when the calling thread already runs a loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


# ---------------------------------------------------------------------------- tasks
def default_tools() -> list[dict[str, Any]]:
    """OpenAI schemas of the three SQL tools, as ``ListTools`` publishes them."""
    from tool_servers.local import tool_schemas

    return tool_schemas(SQL_TOOLS)


def system_prompt(db_id: str, max_tool_calls: int = MTIR_MAX_TOOL_CALLS) -> str:
    """The system message: tools, turn format and the tool-call budget."""
    return SYSTEM_PROMPT.format(db_id=db_id, max_tool_calls=max_tool_calls)


def user_prompt(item: SqlItem, schema: str = "") -> str:
    """The user message: the question, BIRD's evidence, the schema."""
    parts = [f"Question: {item.question}"]
    if item.evidence:
        parts.append(f"Evidence: {item.evidence}")
    if schema:
        parts.append(f"Database schema:\n{schema}")
    return "\n\n".join(parts)


def make_task(
    item: SqlItem,
    tools: list[dict[str, Any]] | None = None,
    *,
    task_id: str = "",
    include_schema: bool = True,
    max_tool_calls: int = MTIR_MAX_TOOL_CALLS,
    db_dir: Path | str = SPIDER_DB_DIR,
    schema: str | None = None,
) -> Task:
    """An RL task for ``item``: system + user messages, tool context ``{"db_id"}``, ground truth
    ``{"db_id", "query"}`` (what ``sql_execution`` reads). ``tools`` default to the SQL tools'
    schemas; ``schema`` (else read from ``db_dir``) is embedded when ``include_schema``.

    The budget is told to the model; the rollout enforces it through ``max_turns``
    (``max_tool_calls + 1``, see ``trainer.evaluate``), one call per turn as the prompt shows."""
    if max_tool_calls < 0:
        raise ValueError(f"max_tool_calls={max_tool_calls}: must be >= 0")
    if include_schema and schema is None:
        schema = schema_text(db_dir, item.db_id)
    messages = [
        {"role": "system", "content": system_prompt(item.db_id, max_tool_calls)},
        {"role": "user", "content": user_prompt(item, schema if include_schema and schema else "")},
    ]
    digest = hashlib.sha1(f"{item.db_id}\n{item.question}".encode()).hexdigest()[:10]
    return Task(task_id or f"{item.db_id}-{digest}", messages,
                list(tools) if tools is not None else default_tools(),
                {"db_id": item.db_id}, {"db_id": item.db_id, "query": item.query})


def make_tasks(items: Iterable[SqlItem], tools: list[dict[str, Any]] | None = None, *, prefix: str = "spider",
               **kwargs: Any) -> list[Task]:
    """``make_task`` for each item, with ids ``<prefix>-<index>``."""
    return [make_task(it, tools, task_id=f"{prefix}-{i}", **kwargs) for i, it in enumerate(items)]


def task_line(task: Task) -> dict[str, Any]:
    """A task as one line of a task JSONL (``trainer.tasks.load_tasks`` form, messages embedded)."""
    return {"task_id": task.task_id, "messages": task.messages,
            "tools": [t["function"]["name"] for t in task.tools],
            "context": task.context, "ground_truth": task.ground_truth}


def write_task_jsonl(items: Iterable[SqlItem], path: Path | str, *, prefix: str = "spider", **kwargs: Any) -> Path:
    """Write tasks for ``items`` (``make_task`` keywords pass through); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tasks = make_tasks(items, **({"tools": default_tools()} | kwargs), prefix=prefix)
    path.write_text("".join(json.dumps(task_line(t)) + "\n" for t in tasks), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------- SFT demonstrations
def _broken(query: str) -> str | None:
    """The query with its first ``FROM`` table misnamed (a "no such table" error), or None."""
    m = re.search(r"\bFROM\s+([A-Za-z_][A-Za-z0-9_]*)", query, flags=re.IGNORECASE)
    if m is None:
        return None
    return query[: m.start(1)] + m.group(1) + "_tbl" + query[m.end(1):]


def _call(name: str, arguments: dict[str, Any], think: str) -> dict[str, Any]:
    return {"role": "assistant", "content": f"<think>{think}</think>",
            "tool_calls": [{"type": "function", "function": {"name": name, "arguments": arguments}}]}


async def demonstration(toolbox: SqlToolbox, item: SqlItem, *, with_error: bool = False,
                        include_schema: bool = True, max_tool_calls: int = MTIR_MAX_TOOL_CALLS,
                        tools: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """One SFT conversation with real observations: (a failing query, its error,) the gold
    query, its rows, the answer. ``with_error`` is ignored when no failing variant exists."""
    schema = await schema_text_async(toolbox, item.db_id) if include_schema else ""
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": system_prompt(item.db_id, max_tool_calls)},
        {"role": "user", "content": user_prompt(item, schema)},
    ]
    broken = _broken(item.query) if with_error and max_tool_calls >= 2 else None
    if broken is not None:
        text, is_error, _ = await toolbox.call(item.db_id, "sql_query", {"query": broken})
        if is_error:
            messages += [_call("sql_query", {"query": broken}, "I will write the query and check it."),
                         {"role": "tool", "name": "sql_query", "content": text},
                         _call("sql_query", {"query": item.query}, "The table name was wrong; I fix it.")]
        else:
            broken = None
    if broken is None:
        messages.append(_call("sql_query", {"query": item.query}, "I will run the query and check its rows."))
    text, is_error, _ = await toolbox.call(item.db_id, "sql_query", {"query": item.query})
    if is_error:
        raise ConfigError(f"the gold query of a {item.db_id} item fails: {text}")
    messages += [{"role": "tool", "name": "sql_query", "content": text},
                 {"role": "assistant", "content": f"<think>The rows answer the question.</think>\n"
                                                  f"<answer>{item.query}</answer>"}]
    return {"messages": messages, "tools": tools if tools is not None else default_tools()}


def demonstrations(items: Iterable[SqlItem], db_dir: Path | str = SPIDER_DB_DIR, *, error_every: int = 3,
                   include_schema: bool = True, max_tool_calls: int = MTIR_MAX_TOOL_CALLS) -> list[dict[str, Any]]:
    """SFT lines (``{"messages", "tools"}``, ``trainer.sft`` message form) for ``items``; every
    ``error_every``-th one (0 = none) first runs a misnamed-table query and fixes it, as MTIR-SQL."""
    tools = default_tools()

    async def go() -> list[dict[str, Any]]:
        with SqlToolbox(db_dir) as toolbox:
            return [await demonstration(toolbox, it, with_error=bool(error_every) and i % error_every == 0,
                                        include_schema=include_schema, max_tool_calls=max_tool_calls, tools=tools)
                    for i, it in enumerate(items)]

    result: list[dict[str, Any]] = _run_sync(go())
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "data" / "generated")
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--demos", type=int, default=200)
    parser.add_argument("--max-tool-calls", type=int, default=MTIR_MAX_TOOL_CALLS)
    parser.add_argument("--no-schema", dest="schema", action="store_false", help="leave the schema out of prompts")
    ns = parser.parse_args(argv)
    items = load_spider()
    tasks = write_task_jsonl(items[: ns.tasks], ns.out / "text_to_sql_tasks.jsonl",
                             include_schema=ns.schema, max_tool_calls=ns.max_tool_calls)
    demos = demonstrations(items[ns.tasks: ns.tasks + ns.demos], include_schema=ns.schema,
                           max_tool_calls=ns.max_tool_calls)
    demos_path = ns.out / "text_to_sql_demos.jsonl"
    demos_path.write_text("".join(json.dumps(d) + "\n" for d in demos), encoding="utf-8")
    print(tasks)
    print(demos_path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
