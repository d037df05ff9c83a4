"""Builds the tokenizer's training corpus deterministically from data in the repo.

What goes in (see data/corpus/README.md):

- the OpenAI function-calling schemas of ``sql_query``, ``list_tables`` and ``describe_table``,
  as the tool server publishes them;
- for each Spider dev database (``data/spider/tables.json``): ``CREATE TABLE`` text;
- every Spider dev question with its gold SQL (``data/spider/dev.json``);
- for every other dev item, a whole tool-use transcript rendered with the policy's chat
  template: reasoning in ``<think>``, Hermes ``<tool_call>`` blocks, the *real* output of
  the SQL tools (run in-process on the Spider SQLite files) in ``<tool_response>``, and a
  final ``<answer>``; one in ``_TOOLS_EVERY`` carries the full tool block in its system turn;
- the Natural Questions sample (``data/nq/test.jsonl``) as short search-style chats.

``python -m envs.tokenizer_corpus`` rewrites ``data/corpus/corpus.txt``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import warnings
from pathlib import Path
from typing import Any

from tool_servers.local import LocalTools, tool_schemas
from tool_servers.sql.settings import SqlSettings
from trainer.model.corpus import DEFAULT_CORPUS_FILE, REPO_ROOT, render_chat

logger = logging.getLogger(__name__)

SQL_TOOLS = ("sql_query", "list_tables", "describe_table")

_TOOLS_EVERY = 8        # one transcript in 8 renders the full tool block (it is ~1.3 kB)
_DOC_SEPARATOR = "\n<|endoftext|>\n"
_THINK_OPENERS = (
    "I should look at the tables first.",
    "I need the columns of the main table.",
    "I can write the query directly.",
    "The question is simple; I will run one query.",
)


def _create_tables(db: dict[str, Any]) -> str:
    """``CREATE TABLE`` text for one Spider schema entry of tables.json."""
    columns: list[list[tuple[str, str]]] = [[] for _ in db["table_names_original"]]
    for (table_idx, name), col_type in zip(db["column_names_original"], db["column_types"], strict=True):
        if table_idx >= 0:
            columns[table_idx].append((name, col_type))
    names = [c[1] for c in db["column_names_original"]]
    owner = [c[0] for c in db["column_names_original"]]
    pks = {p for p in db["primary_keys"] if isinstance(p, int)}
    parts = []
    for t, table in enumerate(db["table_names_original"]):
        lines = [f"  {name} {col_type}" for name, col_type in columns[t]]
        keys = [names[i] for i in sorted(pks) if owner[i] == t]
        if keys:
            lines.append(f"  PRIMARY KEY ({', '.join(keys)})")
        for src, ref in db["foreign_keys"]:
            if owner[src] == t:
                ref_table = db["table_names_original"][owner[ref]]
                lines.append(f"  FOREIGN KEY ({names[src]}) REFERENCES {ref_table}({names[ref]})")
        parts.append(f"CREATE TABLE {table} (\n" + ",\n".join(lines) + "\n);")
    return f"-- database: {db['db_id']}\n" + "\n".join(parts)


class _ToolRunner:
    """Runs the real SQL tools in-process, so that observations read as in a rollout."""

    def __init__(self, db_dir: Path) -> None:
        # A generous time limit: the gold queries all finish; the text must not depend on timing.
        family = SqlSettings(db_dir=db_dir, timeout_s=30.0, display_rows=5, display_max_chars=800)
        self.tools = LocalTools(SQL_TOOLS, [family])

    async def call(self, db_id: str, name: str, arguments: dict[str, Any]) -> str:
        result = await self.tools.call(name, arguments, {"db_id": db_id})
        return f"error: {result.text}" if result.is_error else result.text

    def close(self) -> None:
        self.tools.close()


def _first_table(sql: str) -> str | None:
    match = re.search(r"\bFROM\s+([A-Za-z_][A-Za-z0-9_]*)", sql, flags=re.IGNORECASE)
    return match.group(1) if match else None


async def _transcript(runner: _ToolRunner, i: int, item: dict[str, Any], tools: list[dict[str, Any]]) -> str:
    """One rollout-shaped chat for a Spider item; the shape cycles with ``i``."""
    db_id, question, gold = item["db_id"], item["question"], item["query"]
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": f"Answer the question with one SQLite query. Database: {db_id}."},
        {"role": "user", "content": question},
    ]
    steps: list[tuple[str, dict[str, Any]]] = []
    shape = (i // 2) % 4
    table = _first_table(gold)
    if shape == 0:
        steps.append(("list_tables", {}))
    elif shape == 1 and table:
        steps.append(("describe_table", {"table": table}))
    elif shape == 2 and table:
        steps.append(("sql_query", {"query": re.sub(rf"\b{re.escape(table)}\b", table + "s", gold, count=1)}))
    steps.append(("sql_query", {"query": gold}))
    for k, (name, arguments) in enumerate(steps):
        thought = _THINK_OPENERS[shape] if k == 0 else "The result looks right; let me run the query."
        if k > 0 and steps[k - 1][0] == "sql_query":
            thought = "The query failed; I will fix the table name."
        messages.append(
            {
                "role": "assistant",
                "content": f"<think>{thought}</think>",
                "tool_calls": [{"type": "function", "function": {"name": name, "arguments": arguments}}],
            }
        )
        messages.append({"role": "tool", "name": name, "content": await runner.call(db_id, name, arguments)})
    final = f"<think>This answers the question.</think>\n<answer>{gold}</answer>"
    messages.append({"role": "assistant", "content": final})
    return render_chat(messages, tools=tools if i % (2 * _TOOLS_EVERY) == 1 else None)


def _nq_chats(nq_path: Path) -> list[str]:
    chats = []
    for line in nq_path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        answer = row["golden_answers"][0]
        messages = [
            {"role": "user", "content": f"Question: {row['question']}?"},
            {"role": "assistant", "content": f"<think>I recall the answer.</think>\n<answer>{answer}</answer>"},
        ]
        chats.append(render_chat(messages))
    return chats


async def _build(repo_root: Path) -> str:
    spider = repo_root / "data" / "spider"
    dev = json.loads((spider / "dev.json").read_text(encoding="utf-8"))
    schemas = json.loads((spider / "tables.json").read_text(encoding="utf-8"))
    tools = tool_schemas(SQL_TOOLS)
    docs: list[str] = [json.dumps(tool, indent=2) for tool in tools]
    docs.append(json.dumps(tools, ensure_ascii=False))
    docs.extend(_create_tables(db) for db in sorted(schemas, key=lambda d: d["db_id"]))
    runner = _ToolRunner(spider / "database")
    try:
        with warnings.catch_warnings():
            # SQLAlchemy warns about a Spider foreign key it cannot locate; harmless here.
            warnings.simplefilter("ignore")
            for i, item in enumerate(dev):
                if i % 2 == 0:
                    docs.append(f"Database: {item['db_id']}\nQuestion: {item['question']}\nSQL: {item['query']}")
                else:
                    docs.append(await _transcript(runner, i, item, tools))
    finally:
        runner.close()
    nq = repo_root / "data" / "nq" / "test.jsonl"
    if nq.exists():
        docs.extend(_nq_chats(nq))
    return _DOC_SEPARATOR.join(docs) + "\n"


def build_corpus(repo_root: Path = REPO_ROOT) -> str:
    """The corpus text (deterministic for the same repo data; ~1 MB, a few seconds)."""
    return asyncio.run(_build(repo_root))


def write_corpus(out: Path = DEFAULT_CORPUS_FILE, repo_root: Path = REPO_ROOT) -> Path:
    """Build the corpus and write it to ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(build_corpus(repo_root), encoding="utf-8")
    return out


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    written = write_corpus()
    logger.info("wrote %s (%d bytes)", written, written.stat().st_size)
