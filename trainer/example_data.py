"""Example data for ``configs/smoke_sql.yaml``: Spider dev questions as RL tasks, and SFT
demonstrations whose tool observations come from the real SQL tools run in-process.

``python -m trainer.example_data [--out data/generated] [--tasks 40] [--demos 64]``
(the text-to-SQL environment of a later issue supersedes this).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from rlyard.services import ROOT
from tool_servers.registry import ToolContext, build_tools
from tool_servers.result import TextContent
from tool_servers.session import Session
from tool_servers.settings import ToolServerSettings
from trainer.model.corpus import tool_schemas

SYSTEM = ("Answer the question with one SQLite query. Use the tools to look at the database, then give the "
          "final query in <answer>…</answer>. Database: {db_id}.")


def spider_items() -> list[dict[str, Any]]:
    """Spider dev items (db_id, question, query)."""
    data: list[dict[str, Any]] = json.loads((ROOT / "data" / "spider" / "dev.json").read_text())
    return data


def task_line(i: int, item: dict[str, Any]) -> dict[str, Any]:
    """One RL task: the question, its database as tool context, the gold SQL as ground truth."""
    return {"task_id": f"spider-{i}", "question": item["question"],
            "system": SYSTEM.format(db_id=item["db_id"]), "context": {"db_id": item["db_id"]},
            "ground_truth": {"db_id": item["db_id"], "query": item["query"]}}


async def demo_line(tools: dict[str, Any], item: dict[str, Any]) -> dict[str, Any]:
    """One SFT demonstration: the gold query run through sql_query, then the answer."""
    session = Session("demo", {"db_id": item["db_id"]}, 60.0)
    tool = tools["sql_query"]
    result = await tool.call(tool.Args.model_validate({"query": item["query"]}), session)
    observation = "\n".join(c.text for c in result.content if isinstance(c, TextContent))
    return {"tools": tool_schemas(), "messages": [
        {"role": "system", "content": SYSTEM.format(db_id=item["db_id"])},
        {"role": "user", "content": item["question"]},
        {"role": "assistant", "content": "<think>I will run the query.</think>",
         "tool_calls": [{"type": "function", "function": {"name": "sql_query",
                                                           "arguments": {"query": item["query"]}}}]},
        {"role": "tool", "name": "sql_query", "content": observation},
        {"role": "assistant", "content": f"<think>That answers it.</think>\n<answer>{item['query']}</answer>"},
    ]}


async def demos(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Demonstrations for ``items``, with real tool observations."""
    pool = ThreadPoolExecutor(1)
    settings = ToolServerSettings(db_dir=ROOT / "data" / "spider" / "database", display_rows=5,
                                  display_max_chars=600, sql_timeout_s=30.0)
    tools = build_tools(["sql_query"], ToolContext(settings, pool))
    try:
        return [await demo_line(tools, it) for it in items]
    finally:
        pool.shutdown()


def write(out: Path, n_tasks: int, n_demos: int) -> tuple[Path, Path]:
    """Write the task and demo files; demos and tasks use disjoint questions."""
    items = spider_items()
    out.mkdir(parents=True, exist_ok=True)
    tasks_path, demos_path = out / "sql_tasks.jsonl", out / "sql_demos.jsonl"
    tasks_path.write_text("".join(json.dumps(task_line(i, it)) + "\n" for i, it in enumerate(items[:n_tasks])))
    lines = asyncio.run(demos(items[n_tasks:n_tasks + n_demos]))
    demos_path.write_text("".join(json.dumps(d) + "\n" for d in lines))
    return tasks_path, demos_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "data" / "generated")
    parser.add_argument("--tasks", type=int, default=40)
    parser.add_argument("--demos", type=int, default=64)
    ns = parser.parse_args(argv)
    for path in write(ns.out, ns.tasks, ns.demos):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
